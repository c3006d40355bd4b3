"""Pool workers end at once and quietly when their pool ends them (SIGTERM), whatever SIGTERM handler the process
that made the pool had: in a flow run, Prefect's, which raises TerminationSignal."""

import multiprocessing
import signal
import time
from pathlib import Path

import pytest
from prefect.exceptions import TerminationSignal

from tests.support import wait_for
from trainer.process_pool import process_pool


def _raise_termination_signal(signum, frame):
    raise TerminationSignal(signal=signum)


@pytest.fixture
def flow_engine_sigterm_handler():
    """As the one Prefect's flow engine installs while a flow runs (prefect.utilities.engine.capture_sigterm)."""
    previous = signal.signal(signal.SIGTERM, _raise_termination_signal)
    yield
    signal.signal(signal.SIGTERM, previous)


def _busy(started: Path) -> None:
    started.touch()
    time.sleep(120)


def test_workers_end_quietly_when_the_pool_ends_them(flow_engine_sigterm_handler, tmp_path: Path, capfd) -> None:
    others = set(multiprocessing.active_children())
    with process_pool(2) as pool:
        for name in ("a", "b"):
            pool.apply_async(_busy, (tmp_path / name,))
        workers = [p for p in multiprocessing.active_children() if p not in others]
        wait_for(lambda: (tmp_path / "a").exists() and (tmp_path / "b").exists(), 60, "both workers to be busy")
    # the pool's exit has sent each worker SIGTERM and waited for it
    assert [worker.exitcode for worker in workers] == [-signal.SIGTERM, -signal.SIGTERM]
    assert "Traceback" not in capfd.readouterr().err
