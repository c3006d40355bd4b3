"""The cleanup flow's judgement of flow runs left Running or Cancelling by a flow process that is gone."""

from prefect import get_client
from prefect.states import Cancelling, Running

from flows.cleanup import cleanup
from flows.imagenet18 import imagenet18


def _stuck_run(*states):
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(imagenet18, parameters={"machines": 2})
        for state in states:
            client.set_flow_run_state(run.id, state, force=True)
    return run.id


def _state(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def test_a_run_stuck_cancelling_is_marked_cancelled_once_it_shows_no_sign_of_life(prefect_api):
    stuck = _stuck_run(Running(), Cancelling())
    cleanup()
    assert _state(stuck).is_cancelling(), "started a moment ago: within the default 10 minutes"
    cleanup(stale_after_minutes=0)
    state = _state(stuck)
    assert state.is_cancelled() and "no sign of life" in state.message


def test_a_running_run_with_no_sign_of_life_is_marked_crashed(prefect_api):
    stuck = _stuck_run(Running())
    cleanup(stale_after_minutes=0)
    state = _state(stuck)
    assert state.is_crashed() and "marked by imagenet18-cleanup" in state.message
