"""End-to-end trainer runs on real JPEGs: files, console lines, TensorBoard tags, 2 nodes, resume."""

import json
import re
import signal
import subprocess
import time
from importlib import resources

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support import free_port
from tests.trainer_runs import run, run_two_nodes, train_command, trainer_env
from trainer import checkpoint
from trainer.model import build_model, training_module

SEED_TAGS = {
    "losses/xent", "losses/train_1", "losses/train_5", "losses/test_1", "losses/test_5",
    "sizes/world", "sizes/batch", "sizes/image", "sizes/lr", "sizes/momentum", "sizes/batch_total",
    "times/step", "times/data", "times/eval_sec", "times/1gpu_images_per_sec", "times/8gpu_images_per_sec",
    "net/recv_gbit", "net/transmit_gbit", "epoch",
}
NUMBER = r"\d+\.\d+"
TRAIN_LINE = re.compile(rf"^Epoch: \[\d+\]\[\d+/\d+\]\tTime {NUMBER} \({NUMBER}\)\tLoss {NUMBER} \({NUMBER}\)\t"
                        rf"Acc@1 {NUMBER} \({NUMBER}\)\tAcc@5 {NUMBER} \({NUMBER}\)\tData {NUMBER} \({NUMBER}\)\t"
                        rf"BW {NUMBER} {NUMBER}$")
TEST_LINE = re.compile(rf"^Test:  \[\d+\]\[\d+/\d+\]\tTime {NUMBER} \({NUMBER}\)\tLoss {NUMBER} \({NUMBER}\)\t"
                       rf"Acc@1 {NUMBER} \({NUMBER}\)\tAcc@5 {NUMBER} \({NUMBER}\)$")
TARGET = ("--target", "30", "--target-metric", "top1")
EPOCH_LINE = re.compile(r"^~~(\d+)\t(\d+\.\d{5})\t\t(\d+\.\d{3})\t\t(\d+\.\d{3})$")


def _records(logdir, kind):
    lines = (logdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


# The tests that read single_run's files run on one worker, which makes it once (docs/testing.md, Workers).
READS_SINGLE_RUN = pytest.mark.xdist_group("single-run")


@pytest.fixture(scope="module")
def single_run(tiny_data, tmp_path_factory):
    """One uninterrupted single-process run of cpu-tiny, shared by the tests that only read its files."""
    logdir = tmp_path_factory.mktemp("single") / "run"
    result = run(train_command(tiny_data, logdir, *TARGET))
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir, result.stdout


@pytest.mark.slow
@READS_SINGLE_RUN
def test_console_shows_the_seeds_lines(single_run):
    _, stdout = single_run
    lines = stdout.splitlines()
    assert any(TRAIN_LINE.match(line) for line in lines)
    assert any(TEST_LINE.match(line) for line in lines)
    header = "~~epoch\thours\ttop1\ttop5"
    epochs = [EPOCH_LINE.match(line) for line in lines if line.startswith("~~") and line != header]
    assert header in lines and [int(m.group(1)) for m in epochs] == list(range(8))
    assert all(re.match(r"^Changing LR from \S+ to \S+$", line) for line in lines if line.startswith("Changing"))
    assert "Batch size changed: 48" in lines
    assert lines.count("Dataset changed.") == 2 and "Image size: 64" in lines
    assert all(not line.startswith("Epoch:") or TRAIN_LINE.match(line) for line in lines)


@pytest.mark.slow
@READS_SINGLE_RUN
def test_the_best_epochs_weights_are_kept_beside_the_latest_and_the_summary_says_which_is_which(single_run):
    logdir, stdout = single_run
    summary = json.loads((logdir / "summary.json").read_text())
    epochs = summary["epochs"]
    best = max(epochs, key=lambda e: (e["top1"], -e["epoch"]))  # the first epoch with the best top-1 (the metric)
    assert summary["accuracy_of"] == "the last epoch" and epochs[-1]["epoch"] == 7
    assert {k: summary["best"][k] for k in ("epoch", "top1", "top5")} == \
        {"epoch": best["epoch"], "top1": best["top1"], "top5": best["top5"]}
    assert summary["best"]["weights"] == str(logdir / "checkpoints" / "best.pt")
    weights = torch.load(summary["best"]["weights"], weights_only=True)
    assert (weights["epoch"], weights["arch"]) == (best["epoch"], "resnet10")
    build_model("resnet10", len(weights["classes"])).load_state_dict(weights["model"])  # a whole model's weights
    assert f"Best epoch by top1: {best['epoch']}, top-1 {best['top1']:.3f}" in stdout


@pytest.mark.slow
@READS_SINGLE_RUN
def test_log_files_metrics_and_summary(single_run):
    logdir, stdout = single_run
    for name in ("verbose.log", "event.log", "debug.log", "metrics.jsonl", "summary.json"):
        assert (logdir / name).is_file(), name
    events = (logdir / "event.log").read_text()
    assert "~~7\t" in events and "Dataset changed." in events and "Epoch: [" not in events
    assert "Epoch: [0][2/" in (logdir / "verbose.log").read_text()
    epochs = _records(logdir, "epoch")
    assert [r["epoch"] for r in epochs] == list(range(8))
    assert [r["size"] for r in epochs] == [48] * 6 + [64] * 2
    assert [r["global_batch"] for r in epochs] == [32] * 4 + [48] * 4
    assert _records(logdir, "heartbeat") and _records(logdir, "start")
    end = _records(logdir, "end")[-1]
    summary = json.loads((logdir / "summary.json").read_text())
    assert end["status"] == "completed" and end["top5"] == summary["epochs"][-1]["top5"]
    reached = [r["epoch"] for r in epochs if r["top1"] >= 30]
    assert reached, f"10 classes, chance 10%: the run reaches 30% top-1 ({[r['top1'] for r in epochs]})"
    assert summary["target_epoch"] == reached[0]
    assert f"Time to 30.0% top1: epoch {reached[0]}," in stdout


@pytest.mark.slow
@READS_SINGLE_RUN
def test_tensorboard_events_carry_the_seeds_tags(single_run):
    logdir, _ = single_run
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert SEED_TAGS <= tags, SEED_TAGS - tags
    test_5 = events.Scalars("losses/test_5")
    summary = json.loads((logdir / "summary.json").read_text())
    assert len(test_5) == 8 and [e.value for e in test_5] == pytest.approx([e["top5"] for e in summary["epochs"]])
    assert [e.step for e in test_5] == [e["examples_seen"] for e in summary["epochs"]]
    assert events.Scalars("sizes/image")[-1].value == 64


@pytest.mark.slow
def test_two_torchrun_nodes_over_gloo_learn(tiny_data, tmp_path):
    logdir = tmp_path / "run"
    outputs = run_two_nodes(tiny_data, logdir)
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["world_size"] == 2
    (start,) = _records(logdir, "start")
    assert (start["config"]["process_group"], start["config"]["pin_memory"]) == ("gloo", False), "CPUs: gloo, unpinned"
    assert summary["epochs"][-1]["global_batch"] == 96
    assert summary["epochs"][-1]["top1"] > 25, "10 classes: chance is 10%"
    assert "~~7\t" in outputs[0] and "~~" not in outputs[1], "only rank 0 prints"
    beats = [json.loads((logdir / "heartbeats" / f"node-{i}.json").read_text()) for i in range(2)]
    assert [b["node"] for b in beats] == [0, 1] and all(b["epoch"] == 8 for b in beats), "every node beats"


@pytest.mark.slow
@READS_SINGLE_RUN
def test_killed_run_resumes_and_ends_where_the_uninterrupted_run_did(tiny_data, tmp_path, single_run):
    logdir = tmp_path / "run"
    command = train_command(tiny_data, logdir, *TARGET)
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=trainer_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if (logdir / "metrics.jsonl").exists() and any(r["epoch"] >= 2 for r in _records(logdir, "checkpoint")):
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run was killed mid-way"
    killed_at = checkpoint.CheckpointState.load(str(logdir / "checkpoints")).epoch
    assert 2 <= killed_at < 8

    resumed = run(command + ["--auto-resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {logdir / 'checkpoints'} at epoch {killed_at}" in resumed.stdout
    reference = json.loads((single_run[0] / "summary.json").read_text())
    summary = json.loads((logdir / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == list(range(8))
    for mine, theirs in zip(summary["epochs"], reference["epochs"]):
        assert mine["top1"] == pytest.approx(theirs["top1"], abs=0.01)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3)
    assert summary["target_epoch"] == reference["target_epoch"]
    weights = checkpoint.CheckpointState.load(str(logdir / "checkpoints")).model
    reference_weights = checkpoint.CheckpointState.load(str(single_run[0] / "checkpoints")).model
    for name, tensor in weights.items():
        assert torch.allclose(tensor.float(), reference_weights[name].float(), atol=1e-4), name


@pytest.mark.parametrize("change,message", [
    (lambda text: text.replace('arch = "resnet10"', 'arch = "resnet18"'), "trained as resnet10, this run is resnet18"),
    (lambda text: text.replace("lr = [0.02", "lr = [0.03"), "trained with schedule 'cpu-tiny'"),
])
@pytest.mark.slow
@READS_SINGLE_RUN
def test_resume_from_another_model_or_schedule_is_refused(single_run, tiny_data, tmp_path, change, message):
    other = tmp_path / "other.toml"
    other.write_text(change((resources.files("trainer") / "schedules" / "cpu-tiny.toml").read_text()))
    command = train_command(tiny_data, tmp_path / "run", "--resume", str(single_run[0] / "checkpoints"))
    result = run(command + ["--schedule", str(other)])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_from_a_file_that_is_no_checkpoint(tiny_data, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = run(train_command(tiny_data, tmp_path / "run", "--resume", str(bogus)))
    assert result.returncode == 2 and "not a readable checkpoint" in result.stderr


def test_missing_data_is_one_clear_line(tmp_path):
    result = run(train_command(tmp_path / "nowhere", tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr == f"error: data folder {tmp_path / 'nowhere'} does not exist\n"


@pytest.mark.parametrize("wandb_env,reason", [
    ({"WANDB_MODE": "offline"}, None),
    ({"WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}", "WANDB_INIT_TIMEOUT": "5"},  # nothing listens there
     "wandb is unreachable ("),
], ids=["offline", "unreachable"])
@pytest.mark.slow
def test_wandb_mirrors_the_run_offline_and_the_key_is_written_nowhere(tiny_data, tmp_path, wandb_env, reason):
    canary = "canary" + "0123456789abcdef" * 2 + "wxyz"  # 40 characters, like a real key
    logdir = tmp_path / "run"
    result = run(train_command(tiny_data, logdir, "--epochs", "1"), WANDB_API_KEY=canary, **wandb_env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((logdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    records = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    (wandb,) = [r for r in records if r["type"] == "wandb"]
    assert wandb["status"] == "offline" and wandb["dir"].startswith(str(logdir / "wandb")), \
        "the orchestrator learns where the wandb run is"
    if reason is None:
        assert "wandb run: offline" in result.stdout and wandb["reason"] is None
    else:
        assert wandb["reason"].startswith(reason) and f"warning: {reason}" in result.stdout
        assert "the run goes on with wandb offline" in result.stdout
    assert canary not in result.stdout + result.stderr
    for path in logdir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


TWO_SIZES = """
arch = "resnet10"
[[data]]
ep = 0
sz = 32
bs = 32
trndir = "-sz/160"
[[data]]
ep = 1
sz = 48
bs = 32
trndir = "-sz/160"
[[lr]]
ep = [0, 2]
lr = [0.05, 0.01]
"""


@pytest.mark.slow
def test_compiled_two_node_run_changes_image_size_and_checkpoints_the_plain_model(tiny_data, tmp_path):
    """--compile under DDP (the graph holds DDP's hooks), through an image-size change (a static graph each)."""
    logdir, inductor_cache, schedule = tmp_path / "run", tmp_path / "inductor", tmp_path / "two.toml"
    schedule.write_text(TWO_SIZES)
    run_two_nodes(tiny_data, logdir, "--schedule", str(schedule), "--compile", timeout=400,
                  TORCHINDUCTOR_CACHE_DIR=str(inductor_cache))
    assert _records(logdir, "start")[0]["config"]["compile"] is True
    assert [(e["size"], e["global_batch"]) for e in _records(logdir, "epoch")] == [(32, 64), (48, 64)]
    assert list(inductor_cache.rglob("*.py")), "inductor generated no code: the model was not compiled"
    state = checkpoint.CheckpointState.load(str(logdir / "checkpoints"))
    assert state.epoch == 2
    assert state.model.keys() == build_model("resnet10", 10).state_dict().keys(), \
        "checkpoints hold the module itself, loadable without --compile"


@pytest.mark.slow
def test_a_schedule_with_more_shapes_than_dynamos_limit_compiles_every_one(tmp_path, monkeypatch):
    """Dynamo compiles at most `recompile_limit` (8) graphs of a function, then runs new shapes eagerly: a
    schedule with more phases than that would lose the compiled step in its last ones."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", torch._dynamo.config.recompile_limit)
    sizes = range(8, 18)  # 10 phases, an image size each
    torch._dynamo.reset()
    counters.clear()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    step = training_module(model, distributed=False, compile=True, phases=len(sizes))
    for size in sizes:
        step(torch.randn(2, 3, size, size)).sum().backward()
    assert counters["stats"]["unique_graphs"] == len(sizes), "a shape ran uncompiled"
