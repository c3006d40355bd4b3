"""A full disk, made real: a small tmpfs filled by a ballast file. What only reports (TensorBoard events, metrics
records, heartbeats) waits for space and catches up; what a run needs (checkpoints, dataset replicas) stops it
with an error that names the path, and teardown runs as always."""

import datetime as dt
import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flows.imagenet18 import imagenet18
from tasks.backends.base import BackendError, ClusterSpec
from tasks.backends.local import LocalBackend
from tests.disks import fill, small_disk
from tests.leftovers import local_leftovers
from tests.support import wait_for
from tests.trainer_runs import run, train_command, trainer_env

# Each test here trains or runs a flow: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow


def _records(logdir, kind):
    lines = (logdir / "metrics.jsonl").read_text().splitlines() if (logdir / "metrics.jsonl").exists() else []
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_a_disk_that_fills_and_frees_again_loses_no_event_or_record(tiny_data, tmp_path):
    console = tmp_path / "console.log"
    with small_disk(tmp_path / "disk", 16) as disk:
        logdir = disk / "run"
        command = train_command(tiny_data, logdir, "--epochs", "3", "--checkpoint-dir", str(tmp_path / "checkpoints"),
                                "--cache-dir", str(tmp_path / "cache"))
        with open(console, "w") as out:
            trainer = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=trainer_env())
        try:
            wait_for(lambda: _records(logdir, "epoch") or trainer.poll() is not None, 240, "the first epoch")
            os.kill(trainer.pid, signal.SIGSTOP)  # the disk is full before it writes again
            ballast = fill(disk)
            os.kill(trainer.pid, signal.SIGCONT)
            wait_for(lambda: "warning: writing TensorBoard events" in console.read_text() or trainer.poll() is not None,
                     120, "the trainer to find the disk full")
            ballast.unlink()
            assert trainer.wait(timeout=300) == 0, console.read_text()[-3000:]
        finally:
            if trainer.poll() is None:
                trainer.kill()
        output = console.read_text()
        assert (f"warning: writing TensorBoard events in {logdir} failed (OSError: [Errno 28] No space left on device)"
                in output)
        assert f"writing TensorBoard events in {logdir} works again" in output
        summary = json.loads((logdir / "summary.json").read_text())
        assert [r["epoch"] for r in _records(logdir, "epoch")] == [0, 1, 2], "every record, no torn line"
        assert len(list(logdir.glob("events.out.tfevents.*"))) >= 2, "a new writer after the failed one"
        events = EventAccumulator(str(logdir))
        events.Reload()
        assert [e.step for e in events.Scalars("losses/test_5")] == [e["examples_seen"] for e in summary["epochs"]]
        train_lines = [line for line in output.splitlines() if line.startswith("Epoch: [")]
        assert len({e.step for e in events.Scalars("losses/xent")}) == len(train_lines), "a value per console line"


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_names_it(tiny_data, tmp_path):
    with small_disk(tmp_path / "disk", 1) as disk:
        fill(disk)
        result = run(train_command(tiny_data, tmp_path / "run", "--epochs", "1", "--checkpoint-dir", str(disk)))
        assert list(disk.iterdir()) == [disk / "ballast"], "no half-written checkpoint is left"
    assert result.returncode != 0
    assert (f"OSError: [Errno 28] the checkpoint could not be written (No space left on device): "
            f"'{disk / 'checkpoint.pt'}'") in result.stderr
    assert _records(tmp_path / "run", "end")[-1]["status"] == "failed"


def test_a_replica_on_a_full_disk_fails_the_run_naming_it_and_leaves_nothing(prefect_api, tiny_data, tmp_path,
                                                                              monkeypatch):
    """The dataset is on another disk: the replica's links are symbolic, a file each (tiny_data has 2,600)."""
    with small_disk(tmp_path / "disk", 8, files=500) as home:
        monkeypatch.setenv("IMAGENET18_HOME", str(home))
        state = imagenet18(machines=1, dataset=str(tiny_data), schedule="cpu-tiny", epochs=1, return_state=True)
        assert state.is_failed()
        assert f"the dataset replica {home / 'local' / 'replicas'}/" in state.message
        assert "could not be made: [Errno 28] No space left on device" in state.message
        assert local_leftovers(home) == {}


def test_replicas_of_a_dataset_on_another_disk_take_no_space_of_their_own(tiny_data, tmp_path):
    """Hard links cannot cross disks: the replicas are symbolic links, not copies (two copies of tiny_data's 2,600
    images would not fit this disk; sixteen of a real dataset would fill most)."""
    with small_disk(tmp_path / "disk", 8) as home:
        backend = LocalBackend(home)
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        replicas = backend.replicate(ClusterSpec("run-elsewhere", "elsewhere", 2, "local", False, expires),
                                     str(tiny_data), 2)
        images = sorted(Path(replicas[1].details["path"]).rglob("*.JPEG"))
        assert len(images) == len([*tiny_data.rglob("*.JPEG"), *Path(f"{tiny_data}-sz").rglob("*.JPEG")])
        assert all(image.is_symlink() for image in images)
        assert images[0].read_bytes() == images[0].resolve().read_bytes() and images[0].resolve().is_relative_to(
            tiny_data.parent)
        backend.teardown("run-elsewhere")
        assert local_leftovers(home) == {}


def test_a_replica_on_a_full_disk_is_not_made_of_symbolic_links_instead(tiny_data, tmp_path, monkeypatch):
    """Only a link across disks (or to another user's readable file) becomes a symbolic link: a disk out of room
    fails the replica, naming why, rather than hiding the next failure behind links."""
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", full)
    backend = LocalBackend(tmp_path / "home")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    with pytest.raises(BackendError, match="could not be made: .*No space left on device"):
        backend.replicate(ClusterSpec("run-full", "full", 1, "local", False, expires), str(tiny_data), 1)
    backend.teardown("run-full")
    assert local_leftovers(tmp_path / "home") == {}
