"""The Prefect API that `imagenet18` starts for its flow runs when none is configured (deployments/api_server.py): real
commands, a real server, and nothing of it left behind."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import wait_for
from tests.processes import alive, with_environment

REPO = Path(__file__).resolve().parents[1]
IMAGENET18 = str(Path(sys.executable).parent / "imagenet18")


def plan(tmp_path: Path, dataset: Path, **env: str) -> subprocess.CompletedProcess:
    """`imagenet18 plan` with no PREFECT_API_URL in its environment, its own PREFECT_HOME."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IMAGENET18_HOME": str(tmp_path / "imagenet18"),
                   "PREFECT_HOME": str(tmp_path / "prefect"), **env}
    return subprocess.run([IMAGENET18, "plan", "--dataset", str(dataset)], capture_output=True, text=True,
                          env=environment, timeout=300)


def run_name(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing was created" in result.stdout, result.stdout
    return result.stdout.split(":", 1)[0]


@pytest.mark.slow
def test_without_an_api_url_the_flow_reports_to_a_server_that_ends_with_the_command(tmp_path, tiny_data):
    result = plan(tmp_path, tiny_data)
    name = run_name(result)
    assert "Starting temporary server" not in result.stderr, "Prefect started a server of its own"
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:  # the server's database, in PREFECT_HOME
        runs = db.execute("select name, state_type from flow_run").fetchall()
    assert runs == [(name, "COMPLETED")]
    assert not with_environment("PREFECT_HOME", str(tmp_path / "prefect")), "the server is stopped"


def test_a_profiles_api_url_is_where_the_flow_reports(tmp_path, tiny_data, prefect_api):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL

    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{PREFECT_API_URL.value()}"\n')
    name = run_name(plan(tmp_path, tiny_data, PREFECT_PROFILES_PATH=str(profiles)))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert [run.state.type.value for run in runs] == ["COMPLETED"]
    assert not with_environment("PREFECT_HOME", str(tmp_path / "prefect")), "the server started early is stopped"


def test_a_server_that_cannot_start_is_one_clear_error(tmp_path, tiny_data):
    result = plan(tmp_path, tiny_data, PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:////nonexistent/x.db")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: the temporary Prefect API server exited with status"), result.stderr[-3000:]
    assert not (tmp_path / "imagenet18").exists(), "nothing was created"


def test_a_configured_api_that_does_not_answer_is_one_clear_error(tmp_path, tiny_data):
    result = plan(tmp_path, tiny_data, PREFECT_API_URL="http://127.0.0.1:9/api")  # nothing listens on port 9
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: the Prefect API at http://127.0.0.1:9/api (PREFECT_API_URL, from the environment or the active "
        "profile) does not answer (ConnectError"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "imagenet18").exists(), "nothing was created"


def test_the_server_dies_with_a_command_that_is_killed(tmp_path):
    script = ("import time\nfrom deployments.api_server import TemporaryAPI\n"
              "print(TemporaryAPI().process.pid, flush=True)\ntime.sleep(300)")
    command = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")})
    server = int(command.stdout.readline())
    assert alive(server)
    command.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can stop the server now
    command.wait()
    wait_for(lambda: not alive(server), 30, "the server to end with the command")


def test_a_ctrl_c_in_the_terminal_stops_the_command_not_its_server(tmp_path):
    """The terminal sends SIGINT to its whole foreground process group: the server, in that group, stopped at once,
    and the interrupted run's teardown and last states had no API to report to (the command then waited minutes)."""
    script = ("import time\nfrom deployments.api_server import TemporaryAPI, _answers\n"
              "api = TemporaryAPI()\napi.wait_until_ready(120)\n"
              "try:\n    print(api.process.pid, flush=True)\n    time.sleep(300)\nexcept KeyboardInterrupt:\n"
              "    time.sleep(1)\n"
              "    print('answers' if _answers(f'{api.url}/health') else 'gone', flush=True)")
    command = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}, start_new_session=True)
    server = int(command.stdout.readline())  # printed once the command is ready for the interrupt
    os.killpg(command.pid, signal.SIGINT)  # what Ctrl-C does
    assert command.stdout.readline().strip() == "answers", "the server outlives the interrupt"
    command.wait(timeout=30)
    wait_for(lambda: not alive(server), 30, "the server to stop with the command")
