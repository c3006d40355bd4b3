"""The work-pool commands of docs/deployments.md as written: a real `prefect server`, then each line of the page's
block in order (`prefect work-pool create`, `prefect deploy --all` in the repository root, a worker started in another
folder, `prefect deployment run`), as a user in a terminal would type them."""

import os
import re
import shlex
import signal
from contextlib import ExitStack
from pathlib import Path

import pytest
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.prefect_server import BIN, ONE_EPOCH, assert_backend_lines_in_run_log, assert_no_traceback, \
    assert_three_machines_refused_with_no_run, background, final_state, prefect_cli, prefect_server, started_flow_run
from tests.processes import with_environment

ROOT = Path(__file__).resolve().parents[1]
# One worker runs the module, so its one server, worker and run serve every test (pytest -n: docs/testing.md).
pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.xdist_group("work-pool")]


def documented_work_pool_commands() -> list[list[str]]:
    """The commands of docs/deployments.md's code block that deploys (`prefect deploy`), comments dropped."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "docs" / "deployments.md").read_text(), re.M | re.S)
    block = next(block for block in blocks if re.search(r"^prefect deploy\b", block, re.M))
    return [words for line in block.splitlines() if (words := shlex.split(line, comments=True))]


@pytest.fixture(scope="module")
def work_pool(tmp_path_factory):
    """A server, and the page's block run against it; yields the environment and the flow run it started."""
    home = tmp_path_factory.mktemp("work-pool")
    imagenet18_home = str(home / "imagenet18")
    with prefect_server(home) as server, ExitStack() as running, \
            temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
        # Only the deployments' job variables may name the extra loggers; Prefect's prompts are on, as in a
        # terminal, with nobody to answer them.
        env = {name: value for name, value in server.items() if not name.startswith("PREFECT_LOGGING_")}
        env.update(IMAGENET18_HOME=imagenet18_home, PREFECT_CLI_PROMPT="true", PREFECT_WORKER_QUERY_SECONDS="2")
        flow_run_id = None
        for command in documented_work_pool_commands():
            if command[0] == "export":
                env.update(assignment.split("=", 1) for assignment in command[1:])
                env["PREFECT_API_URL"] = server["PREFECT_API_URL"]  # this test's server, not one on 4200
            elif command[:3] == ["prefect", "worker", "start"]:
                running.enter_context(background([str(BIN / "prefect"), *command[1:]], env, home / "worker.log",
                                                 cwd=tmp_path_factory.mktemp("elsewhere")))
            elif command[:3] == ["prefect", "deployment", "run"]:
                flow_run_id = started_flow_run(prefect_cli(env, *command[1:], *ONE_EPOCH, cwd=ROOT))
            else:
                assert command[0] == "prefect", f"the test does not run {shlex.join(command)}"
                done = prefect_cli(env, *command[1:], cwd=ROOT)
                assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stdout}{done.stderr}"
        assert flow_run_id, "the page's block starts a run"
        yield {"env": env, "flow_run_id": flow_run_id, "logs": [home / "worker.log", home / "server.log"]}
    left = with_environment("IMAGENET18_HOME", imagenet18_home)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "nothing of the run outlives the worker"


def test_the_deployments_are_in_the_work_pool_and_cleanup_keeps_its_schedule(work_pool):
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert set(deployments) == {"full", "replicate", "cleanup"}
    assert {d.work_pool_name for d in deployments.values()} == {"imagenet18"}
    assert [s.schedule.cron for s in deployments["cleanup"].schedules] == ["*/15 * * * *"]
    assert not deployments["full"].schedules and not deployments["replicate"].schedules


def test_the_documented_run_completes_with_no_traceback_in_any_log(work_pool):
    state = final_state(work_pool["flow_run_id"], 600)
    assert state.is_completed(), state.message
    assert_no_traceback(work_pool["logs"][0], server_log=work_pool["logs"][1])


def test_the_backends_info_lines_reach_the_run_log(work_pool):
    final_state(work_pool["flow_run_id"], 600)
    assert_backend_lines_in_run_log(work_pool["flow_run_id"])


def test_three_machines_is_refused_and_creates_no_run(work_pool):
    assert_three_machines_refused_with_no_run(work_pool["env"])
