"""The Prefect API goes away while a run trains and comes back (a restarted server: the same port, the same
database): the run trains on, completes and tears down, and its states and artifacts are in the API afterwards.
A real `prefect server start`, stopped and started again; `imagenet18 run` as a user runs it."""

import glob
import json
import os
import signal
import sqlite3
from contextlib import ExitStack

import pytest

from tests.prefect_server import BIN, background, prefect_server
from tests.support import wait_for
from tests.processes import with_environment
from tests.support import free_port

# Each test here trains or runs a flow: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow
# Of cpu-tiny's 8: the server stops after the first, the run finds it gone when the next one's progress is sent,
# and epochs are left to train once it is back.
EPOCHS = 5


def _epochs(home) -> list[int]:
    lines = [line for path in glob.glob(f"{home}/runs/*/metrics.jsonl") for line in open(path)]
    return [record["epoch"] for record in map(json.loads, lines) if record["type"] == "epoch"]


def _database(server_home, query: str) -> list[tuple]:
    with sqlite3.connect(server_home / "prefect" / "prefect.db") as db:
        return db.execute(query).fetchall()


def test_a_prefect_server_that_stops_mid_training_and_comes_back_loses_nothing(tmp_path, tiny_data):
    server_home, home, port = tmp_path / "server", tmp_path / "imagenet18", free_port()
    machines = ("IMAGENET18_LOCAL_HOME", str(home.resolve()))
    command = [str(BIN / "imagenet18"), "run", "--machines", "1", "--dataset", str(tiny_data), "--schedule", "cpu-tiny",
               "--epochs", str(EPOCHS)]
    output = lambda: (tmp_path / "run.log").read_text()  # noqa: E731
    with ExitStack() as stack:
        with prefect_server(server_home, port) as env:
            run = stack.enter_context(background(command, {**env, "IMAGENET18_HOME": str(home)}, tmp_path / "run.log"))
            wait_for(lambda: _epochs(home) or run.poll() is not None, 300, "the first epoch")
        wait_for(lambda: "sending artifacts to the Prefect API failed" in output() or run.poll() is not None, 120,
                 "the run to find the API gone")
        assert run.poll() is None and _epochs(home)[-1] < EPOCHS - 1, "it trains on while the API is away"
        trainers = with_environment(*machines)
        for pid in trainers:  # paused while the server restarts, so that it is back before training ends
            os.kill(pid, signal.SIGSTOP)
        with prefect_server(server_home, port):
            for pid in trainers:
                os.kill(pid, signal.SIGCONT)
            assert run.wait(timeout=300) == 0, output()[-5000:]
            wait_for(lambda: _database(server_home, "select state_type from task_run where name like 'teardown%'")
                     == [("COMPLETED",)], 60, "the last task run's state to reach the API")
            flow_runs = _database(server_home, "select id, state_type from flow_run")
            task_runs = _database(server_home, "select name, state_type from task_run")
            artifacts = dict(_database(server_home, "select key, data from artifact where key is not null"))
    assert "top-1" in output() and "sending artifacts to the Prefect API works again" in output()
    [(flow_run_id, state)] = flow_runs
    assert state == "COMPLETED"
    assert {state for _, state in task_runs} == {"COMPLETED"}
    assert sorted(name.rsplit("-", 1)[0] for name, _ in task_runs) == [
        "authorize-launch", "evaluate", "prepare-cluster", "prepare-dataset", "provision-cluster", "replicate-dataset",
        "teardown", "train", "validate-and-plan"], "each stage once"
    assert {"imagenet18-plan", "imagenet18-progress", "imagenet18-epochs", "imagenet18-summary"} <= artifacts.keys()
    assert float(artifacts["imagenet18-progress"]) == 100.0
    assert not with_environment(*machines) and not with_environment("IMAGENET18_RUN", flow_run_id), \
        "no machine is left"
    assert not any((home / "local" / "replicas").glob("*/*")), "no replica is left"
