"""wandb is optional: a run whose wandb cannot be reached, or whose wandb dies mid-run, trains to the end with wandb
offline (its files kept for `wandb sync`), says so, and writes the key nowhere. Real wandb, real commands; the
fault is at the boundary (an address that never answers, a killed wandb service)."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_for
from tests.processes import command_line, with_environment
from tests.trainer_runs import train_command, trainer_env

# Each test here trains or runs a flow: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow

IMAGENET18 = str(Path(sys.executable).parent / "imagenet18")
CANARY = "canary" + "0123456789abcdef" * 2 + "wxyz"  # 40 characters, like a real key


@pytest.fixture
def silent_wandb() -> Iterator[str]:
    """A wandb address that accepts connections and never answers, as behind a firewall that drops packets (one
    that refuses them: tests/test_train.py)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)  # the kernel completes the handshakes; nobody reads or answers
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def files_under(root: Path) -> Iterator[Path]:
    return (path for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def test_demo_with_a_wandb_key_and_no_route_to_wandb_completes_offline(tmp_path, tiny_data, silent_wandb):
    home = tmp_path / "imagenet18"
    (tmp_path / "tmp").mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
           "IMAGENET18_HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect"),
           "WANDB_API_KEY": CANARY, "WANDB_BASE_URL": silent_wandb, "WANDB_INIT_TIMEOUT": "5"}
    result = subprocess.run([IMAGENET18, "demo", "--machines", "1", "--dataset", str(tiny_data), "--schedule",
                             "cpu-tiny", "--epochs", "1"], capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "top-1" in result.stdout and "after 1 epochs" in result.stdout
    assert "wandb on machine 0: wandb is unreachable" in output and "the run goes on with wandb offline" in output
    assert "machine 0 | warning: wandb is unreachable" in output, "machine 0's warning is relayed as one"

    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        (summary,), = db.execute("select data from artifact where key = 'imagenet18-summary'").fetchall()
    assert "| wandb | offline, in `" in summary and "wandb is unreachable" in summary

    (run_folder,) = (home / "runs").iterdir()
    (offline_run,) = (run_folder / "wandb").glob("offline-run-*/run-*.wandb")
    assert offline_run.stat().st_size > 0, "the offline run has the scalars, for `wandb sync`"
    assert not any((home / "local" / "replicas").glob("*/*")), "torn down"
    assert not with_environment("IMAGENET18_LOCAL_HOME", str(home.resolve())), "no machine is left"
    assert CANARY not in output
    for path in files_under(tmp_path):
        assert CANARY.encode() not in path.read_bytes(), path


def _wandb_services(trainer: int) -> list[int]:
    children = Path(f"/proc/{trainer}/task/{trainer}/children").read_text().split()
    return [int(pid) for pid in children if any("wandb-core" in part for part in command_line(int(pid)))]


def _records(logdir: Path, kind: str) -> list[dict]:
    if not (logdir / "metrics.jsonl").exists():
        return []
    return [r for r in map(json.loads, (logdir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_a_wandb_service_that_dies_mid_run_leaves_the_run_going_offline(tiny_data, tmp_path):
    logdir = tmp_path / "run"
    trainer = subprocess.Popen(train_command(tiny_data, logdir, "--epochs", "2"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=trainer_env(WANDB_MODE="offline"))
    try:
        wait_for(lambda: _records(logdir, "epoch") or trainer.poll() is not None, 240, "the first epoch")
        os.kill(trainer.pid, signal.SIGSTOP)  # so that it logs again only once its wandb service is gone
        try:
            services = _wandb_services(trainer.pid)
            assert services, "wandb runs in a service process of its own"
            for service in services:
                os.kill(service, signal.SIGKILL)
        finally:
            os.kill(trainer.pid, signal.SIGCONT)
        output = trainer.communicate(timeout=300)[0]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, output[-3000:]
    assert [r["epoch"] for r in _records(logdir, "epoch")] == [0, 1]
    first, second = _records(logdir, "wandb")
    assert first["status"] == "offline" and first["reason"] is None
    assert second["status"] == "offline" and second["reason"].startswith("wandb.log failed (")
    assert "warning: wandb.log failed (" in output
    assert len(list((logdir / "wandb").glob("offline-run-*/run-*.wandb"))) == 2, "both runs' files are kept"


def test_runs_named_alike_in_different_folders_are_different_wandb_runs(tmp_path):
    """Runs the flow starts in the same second share a name (its time to the second), not a folder: each is a wandb
    run of its own, where a run resumed in its folder goes on in the same one."""
    script = ("import sys; from pathlib import Path; from trainer.wandb_run import WandbRun\n"
              "for folder in sys.argv[1:]:\n"
              "    run = WandbRun(Path(folder), 'imagenet18-2x-local-20261207-032353', {}, report=lambda **_: None)\n"
              "    print(run.run.id); run.finish()\n")
    folders = [str(tmp_path / name) for name in ("a", "b", "a")]
    result = subprocess.run([sys.executable, "-c", script, *folders], capture_output=True, text=True, timeout=300,
                            env=trainer_env(WANDB_MODE="offline"))
    assert result.returncode == 0, result.stderr[-3000:]
    first, other, resumed = result.stdout.split()
    assert first != other and first == resumed
