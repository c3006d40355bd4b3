"""A real `prefect server start` on 127.0.0.1 for tests, background commands that are always stopped, the `prefect`
command as a user types it, and what the served and the work-pool tests both check of a run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import free_port, wait_for

BIN = Path(sys.executable).parent
# Added to a deployment run's parameters (the demo's defaults train 8 epochs): what the served and work-pool tests
# check of the run (it completes, the demo dataset is made, its lines reach the run's log) needs one epoch.
ONE_EPOCH = ("--param", "epochs=1")


def healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def background(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None, mode: str = "w"
               ) -> Iterator[subprocess.Popen]:
    """`command` in its own process group, output to `log` (opened with `mode`); afterwards SIGTERM to what is left
    of the group, SIGKILL after 30 s."""
    with open(log, mode) as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass  # it ended, and nothing it started is left
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def prefect_server(home: Path, port: int | None = None, **extra_env: str) -> Iterator[dict[str, str]]:
    """`prefect server start` on `port` (default: a free one), with its own PREFECT_HOME under `home` and no
    telemetry; yields the environment that points clients (and the UI: PREFECT_UI_API_URL follows PREFECT_API_URL,
    not --port) at it. The server's log is `home`/server.log (appended to: a server restarted on the same home and
    port, with the same database, continues it)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": url, "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra_env}
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(command, env, home / "server.log", mode="a") as server:
        try:
            wait_for(lambda: healthy(url) or server.poll() is not None, 120, "the Prefect server")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{(home / 'server.log').read_text()[-3000:]}") from None
        if server.poll() is not None:
            raise AssertionError(f"the Prefect server exited ({server.returncode}); its log:\n"
                                 f"{(home / 'server.log').read_text()[-3000:]}")
        yield env


def flow_run_logs(flow_run_id, until: str, seconds: float = 30) -> list:
    """All the flow run's log records in the API, once one contains `until` (logs reach the API in batches), or
    all there are after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        logs = all_flow_run_logs(flow_run_id)
        if any(until in log.message for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def all_flow_run_logs(flow_run_id, page: int = 200) -> list:
    """Every log record of the flow run, oldest first, page by page: the API answers at most a page per read."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    logs = []
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                     limit=page, offset=len(logs), sort=LogSort.TIMESTAMP_ASC)
            logs += batch
            if len(batch) < page:
                return logs


def prefect_cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`prefect ARGS`, as a user types it; nothing on its standard input."""
    return subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def started_flow_run(started: subprocess.CompletedProcess) -> uuid.UUID:
    """The id of the flow run that `prefect deployment run` created."""
    assert started.returncode == 0, started.stdout + started.stderr
    return uuid.UUID(re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1))


def final_state(flow_run_id: uuid.UUID, seconds: float):
    """The flow run's state once it is final."""
    from prefect import get_client

    def final():
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        return state if state and state.is_final() else None

    return wait_for(final, seconds, "the flow run to finish")


def flow_runs_of(flow_name: str) -> int:
    """How many flow runs the flow has (any state)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))


def assert_three_machines_refused_with_no_run(env: dict[str, str]) -> None:
    """`prefect deployment run imagenet18/full --param machines=3` fails with the allowed counts, and no run is made."""
    before = flow_runs_of("imagenet18")
    refused = prefect_cli(env, "deployment", "run", "imagenet18/full", "--param", "machines=3")
    assert refused.returncode != 0
    assert re.search(r"machines", refused.stdout + refused.stderr)
    assert re.search(r"1, 2, 4, 8, 16|\[1, 2, 4, 8, 16\]", refused.stdout + refused.stderr)
    assert flow_runs_of("imagenet18") == before


def assert_backend_lines_in_run_log(flow_run_id: uuid.UUID) -> None:
    """INFO lines of the `tasks` and `trainer` loggers (a run that made the demo dataset) are in the run's log."""
    messages = [log.message for log in flow_run_logs(flow_run_id, until="making the demo dataset")]
    assert any(message.startswith("making the demo dataset") for message in messages), messages  # tasks.planning
    assert any(re.match(r"writing \d+ demo images", message) for message in messages), messages  # trainer.demo_data


# Prefect's own server, on SQLite, may fail a write it retries later (a worker's heartbeat, a deployment's last poll)
# with "database is locked" when a busy machine holds another transaction (PrefectHQ/prefect#18934, #23051); the
# run goes on unharmed. Only such a traceback, only in the server's log, is let be.
PREFECTS_SQLITE_LOCK = re.compile(r"^(sqlite3|sqlalchemy\.exc)\.OperationalError: (\(sqlite3\.OperationalError\) )?"
                                  r"database is locked")


def assert_no_traceback(*logs: Path, server_log: Path | None = None) -> None:
    """No traceback in `logs`; in `server_log`, none but Prefect's own SQLite locks."""
    for log in [*logs, *([server_log] if server_log else [])]:
        text = log.read_text()
        for start in (m.start() for m in re.finditer("Traceback", text)):
            lines = text[start:].splitlines()
            raised = next((line for line in lines[1:] if not line.startswith(" ")), "")  # the exception's line
            assert log == server_log and text[start - 1:start] in ("", "\n") \
                and lines[0] == "Traceback (most recent call last):" and PREFECTS_SQLITE_LOCK.match(raised), \
                f"{log.name}:\n{text[max(0, start - 500):][:5000]}"
