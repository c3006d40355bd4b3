"""A real `prefect server` on 127.0.0.1, the deployments served by `imagenet18 serve`, and runs started with
the real `prefect deployment run` command, as a user would."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.trainer_runs import free_port

BIN = Path(sys.executable).parent


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`prefect server start` and `imagenet18 serve`, each in its own process group, stopped afterwards."""
    home = tmp_path_factory.mktemp("served")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": url,
           "IMAGENET18_HOME": str(home / "imagenet18"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    logs = home / "logs"
    logs.mkdir()
    processes = [subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port)], env=env, start_new_session=True,
                                  stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)]
    try:
        _wait_for(lambda: _healthy(url), 120, "the Prefect server")
        processes.append(subprocess.Popen([str(BIN / "imagenet18"), "serve"], env=env, start_new_session=True,
                                          stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT))
        with temporary_settings({PREFECT_API_URL: url}):
            _wait_for(lambda: len(_deployment_names()) >= 3, 120, "the served deployments")
            yield env
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _deployment_names() -> set[str]:
    with get_client(sync_client=True) as client:
        return {d.name for d in client.read_deployments()}


def _prefect(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_served_deployments_include_a_scheduled_cleanup(served):
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"full", "replicate", "cleanup"} <= set(deployments)
    assert deployments["cleanup"].schedules, "cleanup runs on a cron schedule"


def test_deployment_run_with_the_local_defaults_completes(served):
    started = _prefect(served, "deployment", "run", "imagenet18/full", "--param", "machines=2", "--param",
                       "backend=local")
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = uuid.UUID(re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1))

    def final_state():
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        return state if state and state.is_final() else None

    state = _wait_for(final_state, 900, "the flow run to finish")
    assert state.is_completed(), state.message
    assert not list(Path(served["IMAGENET18_HOME"], "local", "replicas").glob("*/*")), "replicas are gone"


def _training_runs() -> int:
    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["imagenet18"]))))


def test_three_machines_is_refused_and_creates_no_run(served):
    before = _training_runs()
    refused = _prefect(served, "deployment", "run", "imagenet18/full", "--param", "machines=3")
    assert refused.returncode != 0
    assert re.search(r"machines", refused.stdout + refused.stderr)
    assert re.search(r"1, 2, 4, 8, 16|\[1, 2, 4, 8, 16\]", refused.stdout + refused.stderr)
    assert _training_runs() == before
