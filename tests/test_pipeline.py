"""The imagenet18 flow with the local backend, on Prefect's test harness (a real Prefect API)."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pytest
from PIL import Image
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ParameterTypeError
from prefect.settings import PREFECT_API_URL

from deployments import cli
from flows.cleanup import cleanup
from flows.imagenet18 import imagenet18
from flows.replicate import replicate
from tasks import stages
from tasks.backends.base import InputError
from tasks.backends.local import LocalBackend
from tests.leftovers import local_leftovers
from tests.prefect_server import all_flow_run_logs, flow_run_logs
from tests.support import wait_for
from trainer.demo_data import make_demo_dataset
from trainer.prepare import resized_root

STAGES = {"validate-and-plan", "authorize-launch", "prepare-dataset", "replicate-dataset", "prepare-cluster",
          "provision-cluster", "train", "evaluate", "teardown"}


def _assert_nothing_left(home):
    assert local_leftovers(home) == {}, "no process, replica, record or claim of any run is left"


def _task_runs(flow_run_id, ready) -> dict:
    """The flow run's task runs by stage name, once `ready(runs)` holds (task-run records reach the API
    asynchronously) or 30 s have passed."""
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = {run.name.rsplit("-", 1)[0]: run for run in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
            if ready(runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def _artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in artifacts}


@pytest.mark.slow
def test_two_machine_local_run_completes_and_leaves_nothing(prefect_api, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the machines' temporary folder, which nothing may be left in
    state = imagenet18(machines=2, dataset=str(tiny_data), schedule="cpu-tiny", epochs=3, target=1.0,
                       return_state=True)  # 1% top-1 (cpu-tiny's metric) of 10 classes: reached at once
    assert state.is_completed(), state.message
    result = state.result()
    assert result["machines"] == 2 and result["epochs"] == 3
    assert 0 <= result["top1"] <= 100 and result["top5"] >= result["top1"]
    assert os.path.isfile(os.path.join(result["storage"], "summary.json")), "the run's logs are kept"
    with open(os.path.join(result["storage"], "summary.json")) as file:
        summary = json.load(file)
    assert result["target_epoch"] is not None
    assert (result["target_epoch"], result["target_hours"]) == (summary["target_epoch"], summary["target_hours"]), \
        "the time to target is the trainer's, to the last digit"
    assert STAGES <= _task_runs(state.state_details.flow_run_id, lambda runs: STAGES <= runs.keys()).keys()
    _assert_nothing_left(prefect_api)
    assert not list(tmp_path.glob("torchelastic_*")), "torchrun's folders are kept with the run's, not in /tmp"
    _assert_machine_logs_arrived_while_training(state.state_details.flow_run_id, result["storage"])
    _assert_artifacts_show_the_run(state.state_details.flow_run_id, result)


def _assert_machine_logs_arrived_while_training(flow_run_id, storage: str) -> None:
    logs = flow_run_logs(flow_run_id, until="machine 0 | ~~2")
    relayed = {log.message.split(" | ", 1)[1]: log.timestamp for log in logs if log.message.startswith("machine 0 | ")}
    assert "~~epoch\thours\ttop1\ttop5" in relayed and any(line.startswith("Epoch: [0][") for line in relayed)
    epoch_ends = {r["epoch"]: r["time"] for r in map(json.loads, open(os.path.join(storage, "metrics.jsonl")))
                  if r["type"] == "epoch"}
    first_epoch_line = next(at for line, at in relayed.items() if line.startswith("~~0\t"))
    assert first_epoch_line.timestamp() < epoch_ends[2], "machine 0's lines reach the flow's log as it trains"
    # torchrun's exit barrier may meet node 0's store closed as its agent leaves: one warning, the run unharmed
    others = [log.message for log in logs if log.message.startswith("machine 1 | ")
              and "exit barrier's store closed" not in log.message]
    assert not others, "only errors of the other machines"


def _assert_artifacts_show_the_run(flow_run_id, result: dict) -> None:
    artifacts = _artifacts(flow_run_id)
    assert {"imagenet18-plan", "imagenet18-progress", "imagenet18-epochs", "imagenet18-summary"} <= set(artifacts)
    assert re.search(r"torchrun node process on this machine \(.+\) \| 2 \|", artifacts["imagenet18-plan"].data)
    assert artifacts["imagenet18-progress"].data == 100.0
    rows = json.loads(artifacts["imagenet18-epochs"].data)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert {"hours", "image size", "global batch", "lr", "train loss", "top-1", "top-5"} <= set(rows[0])
    assert rows[-1]["top-1"] == pytest.approx(result["top1"], abs=1e-3)
    summary = artifacts["imagenet18-summary"].data
    assert result["run_name"] in summary
    best = max(rows, key=lambda row: (row["top-1"], -row["epoch"]))
    assert result["best"]["epoch"] == best["epoch"] and result["best"]["weights"].endswith("/checkpoints/best.pt")
    assert "after 3 epochs (the last epoch) |" in summary
    assert f"| best epoch by top1 | {best['epoch']}: {result['best']['top1']:.3f}% /" in summary
    assert f"imagenet18 tensorboard --run {os.path.basename(result['storage'])}`" in summary
    assert "](data:image/png;base64," in summary
    with Image.open(os.path.join(result["storage"], "curves.png")) as curves:
        assert curves.format == "PNG" and curves.size[0] >= 800


@pytest.mark.slow
def test_a_trainer_failure_is_its_own_error_line_and_everything_is_torn_down(prefect_api, data_copy, capsys):
    """Valid for the planner, fatal for the trainer: every validation image of the resized copy is unreadable (it
    carries its source's modification time, so the prepare stage keeps it). The CLI's last line and the flow run's
    message are the trainer's own error line, not torchrun's ChildFailedError; the tracebacks reach the flow's
    log."""
    copies = data_copy.parent / "demo-sz/160"
    for image in (copies / "validation").glob("*/*"):
        image.write_bytes(b"not a JPEG")
        source = (data_copy / image.relative_to(copies)).stat()
        os.utime(image, ns=(source.st_atime_ns, source.st_mtime_ns))
    code = cli.main(["run", "--dataset", str(data_copy), "--schedule", "cpu-tiny", "--epochs", "1"])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert re.fullmatch(r"error: no image in \S+/demo-sz/160/validation can be decoded \(machine [01]; its whole "
                        r"log: \S+/logs/train-[01]\.log\)", last_line), last_line
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(limit=1, sort=FlowRunSort.START_TIME_DESC)
    assert flow_run.state.is_failed() and last_line.removeprefix("error: ") in flow_run.state.message
    assert "ChildFailedError" not in flow_run.state.message
    _assert_nothing_left(prefect_api)

    def errors_with_both_tracebacks() -> list[str] | None:  # log records reach the API in batches
        errors = [log.message for log in all_flow_run_logs(flow_run.id) if log.level >= logging.ERROR]
        both = all(any(m.startswith(f"machine {i} | ") and "Traceback" in m for m in errors) for i in (0, 1))
        return errors if both else None

    errors = wait_for(errors_with_both_tracebacks, 60, "both machines' tracebacks in the flow's log")
    for machine in (0, 1):  # and each machine's error line
        assert any(m.startswith(f"machine {machine} | ") and "Error" in m and "Traceback" not in m for m in errors)


@pytest.mark.slow
def test_a_full_size_dataset_gets_its_resized_copies_in_their_own_stage_once(prefect_api, tmp_path):
    """A dataset as downloaded (full-size JPEGs, no -sz folders): the prepare-dataset stage makes the copy the
    schedule reads, with a progress artifact; a second run of the same folder, named through a link to it, makes
    none (the copies are the folder's own, beside it, where its replicas look)."""
    root = make_demo_dataset(tmp_path / "downloaded", classes=4, train_per_class=24, val_per_class=6)
    assert not resized_root(root, 160).exists()
    first = imagenet18(machines=2, dataset=str(root), schedule="cpu-tiny", epochs=1, return_state=True)
    assert first.is_completed(), first.message
    runs = _task_runs(first.state_details.flow_run_id, lambda runs: "prepare-dataset" in runs)
    assert runs["prepare-dataset"].state.is_completed()
    copies = {path: path.stat().st_mtime_ns for path in resized_root(root, 160).rglob("*.JPEG")}
    assert len(copies) == 4 * (24 + 6)
    assert _artifacts(first.state_details.flow_run_id)["imagenet18-dataset"].data == 100.0
    logs = [log.message for log in flow_run_logs(first.state_details.flow_run_id, until="already there")]
    made = next(re.fullmatch(rf"dataset {root}: (\d+) resized, (\d+) copied, 0 already there, 0 removed \(source "
                             r"gone\), 0 unreadable", line) for line in logs if line.startswith(f"dataset {root}:"))
    assert int(made[1]) + int(made[2]) == 120

    (tmp_path / "link").symlink_to(root)
    second = imagenet18(machines=2, dataset=str(tmp_path / "link"), schedule="cpu-tiny", epochs=1, return_state=True)
    assert second.is_completed(), second.message
    logs = [log.message for log in flow_run_logs(second.state_details.flow_run_id, until="already there")]
    assert f"dataset {root}: 0 resized, 0 copied, 120 already there, 0 removed (source gone), 0 unreadable" in logs
    assert {path: path.stat().st_mtime_ns for path in resized_root(root, 160).rglob("*.JPEG")} == copies
    assert "imagenet18-dataset" not in _artifacts(second.state_details.flow_run_id), "nothing made, no progress"
    _assert_nothing_left(prefect_api)


@pytest.mark.slow
def test_teardown_after_a_failed_replicate_waits_for_the_cluster_being_prepared(prefect_api, tiny_data, monkeypatch):
    """replicate-dataset and prepare-cluster run side by side: when one fails, teardown waits for the other, or
    it would miss what that one was still making. Preparing outlasts the failure: it goes on only once the replica
    has failed and then teardown has begun, or 5 s later."""
    prepare, teardown = LocalBackend.prepare, LocalBackend.teardown
    replica_failed, teardown_began = threading.Event(), threading.Event()

    def prepare_until_teardown(self, spec):
        assert replica_failed.wait(timeout=120), "the replica never failed"
        teardown_began.wait(timeout=5)
        return prepare(self, spec)

    def failing_replica(*args):
        replica_failed.set()
        raise RuntimeError("injected: no replica")

    def watched_teardown(self, run_id):
        teardown_began.set()
        return teardown(self, run_id)

    monkeypatch.setattr(LocalBackend, "prepare", prepare_until_teardown)
    monkeypatch.setattr(LocalBackend, "teardown", watched_teardown)
    monkeypatch.setattr(LocalBackend, "_replica", failing_replica)
    monkeypatch.setattr(stages, "replicate_dataset", stages.replicate_dataset.with_options(retries=0))
    state = imagenet18(machines=2, dataset=str(tiny_data), schedule="cpu-tiny", epochs=1, return_state=True)
    assert state.is_failed() and "injected: no replica" in str(state.message)
    runs = _task_runs(state.state_details.flow_run_id, lambda runs: "teardown" in runs and runs["teardown"].end_time)
    assert runs["prepare-cluster"].state.is_completed() and "provision-cluster" not in runs
    assert runs["prepare-cluster"].end_time <= runs["teardown"].start_time, "teardown began while preparing"
    _assert_nothing_left(prefect_api)


def test_dry_run_creates_nothing(prefect_api, tiny_data):
    runs_before = set((prefect_api / "runs").glob("*"))
    result = imagenet18(machines=16, dataset=str(tiny_data), dry_run=True)
    assert result["dry_run"] and result["total_usd"] == 0
    _assert_nothing_left(prefect_api)
    assert set((prefect_api / "runs").glob("*")) == runs_before


def test_three_machines_is_refused_with_the_allowed_values():
    with pytest.raises(ParameterTypeError, match=r"1, 2, 4, 8|Input should be 1, 2, 4, 8 or 16"):
        imagenet18.validate_parameters({"machines": 3})


@pytest.mark.parametrize("parameters,error,message", [
    ({"dataset": "/nonexistent/imagenet"}, InputError, "dataset /nonexistent/imagenet does not exist"),
    ({"schedule": "seed-3"}, InputError, "unknown schedule 'seed-3'"),
    ({"instance_type": "p3.16xlarge"}, InputError, "runs on instance type 'local'"),
    ({"spot": True}, InputError, "no spot market"),
])
def test_bad_input_fails_before_anything_is_created(prefect_api, tiny_data, parameters, error, message):
    state = imagenet18(**{"machines": 2, "dataset": str(tiny_data), **parameters}, return_state=True)
    assert state.is_failed()
    with pytest.raises(error, match=message):
        state.result()
    _assert_nothing_left(prefect_api)


def _one_class_in_train_only(root):
    shutil.rmtree(next((root / "validation").iterdir()))


def _an_empty_class_folder(root):
    (root / "train" / "zebra").mkdir()
    (root / "validation" / "zebra").mkdir()


def _no_validation_classes(root):
    shutil.rmtree(root / "validation")
    (root / "validation").mkdir()


def _one_class(root):
    for split in ("train", "validation"):
        for extra in sorted((root / split).iterdir())[1:]:
            shutil.rmtree(extra)


def _every_image_of_a_class_unreadable(root):
    shutil.rmtree(Path(f"{root}-sz"))
    for image in next((root / "validation").iterdir()).iterdir():
        image.write_bytes(b"not a JPEG")


@pytest.mark.parametrize("damage,message,stage", [
    (_one_class_in_train_only, r"class folders of \S+/validation differ from \S+/train: extra \[\], missing \['\w+'\]",
     "validate-and-plan"),
    (_an_empty_class_folder, r"class folder \S+/train/zebra has no images", "validate-and-plan"),
    (_no_validation_classes, r"data folder \S+/validation has no class folders", "validate-and-plan"),
    (_one_class, r"\S+/train has one class folder \(\w+\): a classifier needs at least 2", "validate-and-plan"),
    (_every_image_of_a_class_unreadable, r"class folder \S+-sz/160/validation/\w+ has no images .*: its images in the "
     r"full-size dataset cannot be read", "prepare-dataset"),
], ids=["class-in-one-split", "empty-class", "no-classes", "one-class", "class-unreadable"])
def test_a_dataset_that_cannot_train_is_refused_before_any_replica(prefect_api, data_copy, damage, message, stage):
    damage(data_copy)
    state = imagenet18(machines=2, dataset=str(data_copy), schedule="cpu-tiny", epochs=1, return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=message):
        state.result()
    runs = _task_runs(state.state_details.flow_run_id, lambda runs: stage in runs and runs[stage].state.is_final())
    assert runs[stage].state.is_failed() and "replicate-dataset" not in runs and "train" not in runs
    assert runs[stage].run_count == 1, "bad input is not retried"
    _assert_nothing_left(prefect_api)


def test_a_class_without_a_readable_image_is_refused_where_the_schedule_reads_only_full_size(prefect_api, data_copy,
                                                                                          tmp_path):
    """No resized copy to make, so none to find the class empty: the prepare-dataset stage decodes each class
    until one image does, rather than the trainer filling the class's places with the next class's images. With
    the trainer's decoder: TIFFs named .JPEG, which Pillow reads and it does not, are unreadable."""
    shutil.rmtree(Path(f"{data_copy}-sz"))
    for image in next((data_copy / "validation").iterdir()).iterdir():
        with Image.open(image) as decoded:
            decoded.load()
        decoded.save(image, "TIFF")
    full_size = tmp_path / "full-size.toml"
    full_size.write_text('arch = "resnet10"\n[[data]]\nep = 0\nsz = 32\nbs = 32\n[[lr]]\nep = [0, 1]\nlr = 0.05\n')
    state = imagenet18(machines=1, dataset=str(data_copy), schedule=str(full_size), return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=r"class folder \S+/validation/\w+ has no image that can be read: the "
                                         r"trainer would fill its places"):
        state.result()
    runs = _task_runs(state.state_details.flow_run_id,
                      lambda runs: "prepare-dataset" in runs and runs["prepare-dataset"].state.is_final())
    assert runs["prepare-dataset"].state.is_failed() and "replicate-dataset" not in runs
    _assert_nothing_left(prefect_api)


def test_a_copy_that_cannot_be_made_is_refused_before_anything_is_created(prefect_api, tmp_path):
    """The dataset on a read-only file system, without the -sz/160 copy the schedule reads."""
    source = make_demo_dataset(tmp_path / "source" / "data", classes=2, train_per_class=4, val_per_class=2)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(source.parent), str(read_only)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"no read-only bind mount here: {mounted.stderr.decode().strip()}")
    try:
        state = imagenet18(machines=1, dataset=str(read_only / "data"), schedule="cpu-tiny", return_state=True)
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=rf"the schedule reads {read_only}/data-sz/160, which does not exist and "
                                         rf"cannot be made: {read_only} is not writable"):
        state.result()
    _assert_nothing_left(prefect_api)


@pytest.mark.slow
def test_replicas_made_ahead_serve_a_run_and_have_a_delete_path(prefect_api, tiny_data):
    made = replicate(replicas=3, dataset=str(tiny_data))
    assert len(made) == 3
    paths = [r.details["path"] for r in LocalBackend(prefect_api).resources("replicas")]
    assert len(paths) == 3 and all(os.path.isdir(p) for p in paths)
    cleanup(backends=["local"])  # pool replicas wait for their expiry, not for their maker
    assert len(LocalBackend(prefect_api).resources("replicas")) == 3

    state = imagenet18(machines=2, dataset=str(tiny_data), schedule="cpu-tiny", epochs=1, return_state=True)
    assert state.is_completed(), state.message
    logs = [log.message for log in flow_run_logs(state.state_details.flow_run_id, until="back to the pool")]
    assert f"2 dataset replicas ready: {made[0]}, {made[1]}" in logs, "the run trained on the first two made ahead"
    assert f"gave 2 replica(s) back to the pool: {made[0]}, {made[1]}" in logs
    assert [r.id for r in LocalBackend(prefect_api).resources("replicas")] == made, "and gave them back"
    assert all(os.path.isdir(p) for p in paths)

    assert len(replicate(delete=True)) == 3
    _assert_nothing_left(prefect_api)


@pytest.mark.slow
def test_cleanup_removes_what_a_sigkilled_run_left(prefect_api, tiny_data):
    script = ("from flows.imagenet18 import imagenet18; "
              f"imagenet18(machines=2, dataset={str(tiny_data)!r}, schedule='cpu-tiny')")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    flow_process = subprocess.Popen([sys.executable, "-c", script], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backend = LocalBackend(prefect_api)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(backend.processes()) < 2:
        time.sleep(0.2)
    assert backend.processes(), "training started"
    flow_process.send_signal(signal.SIGKILL)
    flow_process.wait()
    assert {"process", "replica", "record"} <= set(local_leftovers(prefect_api)), "SIGKILL ran no teardown"
    removed = cleanup(backends=["local"])
    assert any("replica" in r for r in removed["local"])
    _assert_nothing_left(prefect_api)


@pytest.mark.slow
def test_a_lost_node_is_replaced_and_the_run_resumes_from_its_checkpoint(prefect_api, tiny_data):
    runs_before = set((prefect_api / "runs").glob("*"))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(imagenet18, machines=2, dataset=str(tiny_data), schedule="cpu-tiny", epochs=3,
                              return_state=True)
        metrics = _wait_for_epoch_record(prefect_api, runs_before)
        for process in LocalBackend(prefect_api).processes():
            if process["job"] == "train-1":  # machine 1's node: its wrapper, torchrun and worker
                os.kill(process["pid"], signal.SIGKILL)
        state = running.result(timeout=600)
    assert state.is_completed(), state.message
    result = state.result()
    assert [r["lost"] for r in result["restarts"]] == [{"1": -signal.SIGKILL}]
    assert result["epochs"] == 3 and result["epochs_redone"] <= 1, "at most one epoch of work is lost"
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()
              if json.loads(line)["type"] == "epoch"]
    assert sorted(set(epochs)) == [0, 1, 2]
    _assert_nothing_left(prefect_api)


@pytest.mark.slow
def test_a_node_that_fails_as_its_peer_goes_away_is_its_echo_and_the_run_resumes(prefect_api, tiny_data, caplog):
    """A machine going away takes its node's processes before its backend lists it as gone (EC2 says
    shutting-down a moment later): the other node fails first, with gloo's "Connection closed by peer". The
    failure is judged once the loss is seen, and the run restarts from its checkpoint rather than fails."""
    runs_before = set((prefect_api / "runs").glob("*"))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(imagenet18, machines=2, dataset=str(tiny_data), schedule="cpu-tiny", epochs=3,
                              return_state=True)
        _wait_for_epoch_record(prefect_api, runs_before)
        node = [p["pid"] for p in LocalBackend(prefect_api).processes() if p["job"] == "train-1"]
        for pid in node:  # its wrapper and torchrun still there, so the backend counts it as running
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in node:
            with suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_text()
                if "trainer\0train" in command and "torch.distributed.run" not in command:  # the worker, whose
                    os.kill(pid, signal.SIGKILL)  # peer sees it go
        wait_for(lambda: "failed (exit codes {0: 1}) while the others run: waiting" in caplog.text, 120,
                 "the flow to see machine 0 fail, and wait")
        for pid in node:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        state = running.result(timeout=600)
    assert state.is_completed(), state.message
    assert [r["lost"] for r in state.result()["restarts"]] == [{"1": -signal.SIGKILL}]
    _assert_nothing_left(prefect_api)


@pytest.mark.slow
def test_a_hung_node_is_noticed_by_its_heartbeats_and_the_run_resumes(prefect_api, tiny_data):
    runs_before = set((prefect_api / "runs").glob("*"))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(imagenet18, machines=2, dataset=str(tiny_data), schedule="cpu-tiny", epochs=3,
                              hang_minutes=0.5, return_state=True)
        _wait_for_epoch_record(prefect_api, runs_before)
        for process in LocalBackend(prefect_api).processes():
            if process["job"] == "train-1":  # alive, but making no progress: a hung machine
                os.kill(process["pid"], signal.SIGSTOP)
        state = running.result(timeout=600)
    assert state.is_completed(), state.message
    result = state.result()
    [restart] = result["restarts"]
    assert restart["lost"] == {} and 1 in restart["hung"], restart
    assert result["epochs"] == 3 and result["epochs_redone"] <= 1, "at most one epoch of work is lost"
    _assert_nothing_left(prefect_api)


def _wait_for_epoch_record(home, runs_before, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in set((home / "runs").glob("*")) - runs_before:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and '"type": "epoch"' in metrics.read_text():
                return metrics
        time.sleep(0.5)
    raise AssertionError("no epoch ended")
