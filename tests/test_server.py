"""A real `prefect server` on 127.0.0.1, the deployments served by `imagenet18 serve`, and runs started with
the real `prefect deployment run` command, as a user would."""

from pathlib import Path

import pytest
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.prefect_server import BIN, ONE_EPOCH, assert_backend_lines_in_run_log, assert_no_traceback, \
    assert_three_machines_refused_with_no_run, background, final_state, prefect_cli, prefect_server, started_flow_run
from tests.support import wait_for as _wait_for

# One worker runs the module, so its one served process serves every test (pytest -n: docs/testing.md).
pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.xdist_group("served")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`prefect server start` and `imagenet18 serve`, each in its own process group, stopped afterwards."""
    home = tmp_path_factory.mktemp("served")
    with (prefect_server(home, IMAGENET18_HOME=str(home / "imagenet18"), PREFECT_RUNNER_POLL_FREQUENCY="2") as env,
          background([str(BIN / "imagenet18"), "serve"], env, home / "serve.log"),
          temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})):
        _wait_for(lambda: len(_deployment_names()) >= 3, 120, "the served deployments")
        yield env


def _deployment_names() -> set[str]:
    with get_client(sync_client=True) as client:
        return {d.name for d in client.read_deployments()}


def test_served_deployments_include_a_scheduled_cleanup(served):
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"full", "replicate", "cleanup"} <= set(deployments)
    assert deployments["cleanup"].schedules, "cleanup runs on a cron schedule"


def test_deployment_run_with_the_local_defaults_completes(served):
    flow_run_id = started_flow_run(prefect_cli(served, "deployment", "run", "imagenet18/full", "--param",
                                               "machines=2", "--param", "backend=local", *ONE_EPOCH))
    state = final_state(flow_run_id, 900)
    assert state.is_completed(), state.message
    assert not list(Path(served["IMAGENET18_HOME"], "local", "replicas").glob("*/*")), "replicas are gone"
    assert_backend_lines_in_run_log(flow_run_id)
    home = Path(served["IMAGENET18_HOME"]).parent
    assert_no_traceback(home / "serve.log", server_log=home / "server.log")


def test_three_machines_is_refused_and_creates_no_run(served):
    assert_three_machines_refused_with_no_run(served)


def test_no_flow_module_shadows_an_installed_one():
    """A served run imports its entrypoint with flows/ first on sys.path, so flows/tensorboard.py, say, would
    hide the tensorboard package from every stage of the run."""
    import importlib.util

    flows = Path(__file__).resolve().parents[1] / "flows"
    shadowing = [path.stem for path in flows.glob("*.py")
                 if path.stem != "__init__" and importlib.util.find_spec(path.stem) is not None]
    assert shadowing == [], f"rename flows/{shadowing[0]}.py: it shadows an installed module of that name"
