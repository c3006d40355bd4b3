"""The cleanup flow's judgement: of flow runs left Running or Cancelling by a flow process that is gone, and of
which processes on this host are a local run's."""

import datetime as dt
import os
import signal
import subprocess
import uuid

import pytest
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling, Running

from flows.cleanup import cleanup, run_is_finished
from flows.imagenet18 import imagenet18
from tasks.backends.base import ClusterSpec, SweepIncomplete
from tasks.backends.local import LocalBackend
from tests.leftovers import local_leftovers
from tests.processes import with_environment
from tests.support import wait_for


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
    cleanup(backends=["local"])
    assert _state(stuck).is_cancelling(), "started a moment ago: within the default 10 minutes"
    cleanup(backends=["local"], stale_after_minutes=0)
    state = _state(stuck)
    assert state.is_cancelled() and "no sign of life" in state.message


def test_a_running_run_with_no_sign_of_life_is_marked_crashed(prefect_api):
    stuck = _stuck_run(Running())
    cleanup(backends=["local"], stale_after_minutes=0)
    state = _state(stuck)
    assert state.is_crashed() and "marked by imagenet18-cleanup" in state.message


def test_the_local_sweep_stops_only_its_own_homes_expired_processes(prefect_api, tmp_path):
    """The AWS simulator's machines and a second IMAGENET18_HOME run processes on this host too: an expired run
    tag alone must not make them this home's to stop."""
    run_id = str(uuid.uuid4())
    tags = {"IMAGENET18_RUN": run_id, "IMAGENET18_JOB": "train-0", "IMAGENET18_EXPIRES": "2000-01-01T00:00:00+00:00"}

    def sleeper(**home_tag):
        return subprocess.Popen(["sleep", "120"], env={**os.environ, **tags, **home_tag})

    own = sleeper(IMAGENET18_LOCAL_HOME=str(prefect_api.resolve()))
    others = [sleeper(IMAGENET18_LOCAL_HOME=str(tmp_path / "another-home")), sleeper()]
    try:
        # A process's /proc environ reads empty until its exec is done, which Popen does not wait for.
        pids = sorted(p.pid for p in [own, *others])
        wait_for(lambda: sorted(with_environment("IMAGENET18_RUN", run_id)) == pids, 10, "the 3 tagged processes")
        assert [p["pid"] for p in LocalBackend(prefect_api).processes(run_id)] == [own.pid]
        removed = cleanup(backends=["local"])
        assert f"{run_id}/train-0/{own.pid}" in removed["local"]
        assert own.poll() == -signal.SIGTERM, "stopped before the sweep returned, asked first with SIGTERM"
        assert [p.poll() for p in others] == [None, None], "another home's and an untagged process keep running"
    finally:
        for process in [own, *others]:
            process.kill()
            process.wait()


def test_a_local_run_whose_teardown_fails_stops_no_other_runs_sweep_and_fails_the_cleanup(prefect_api, tiny_data,
                                                                                          tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET18_HOME", str(tmp_path))
    backend = LocalBackend(tmp_path)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    for run_id in ("run-a-stuck", "run-b-expired"):
        backend.replicate(ClusterSpec(run_id, f"test-{run_id}", 1, "local", False, past), str(tiny_data), 1)
    delete_replicas = LocalBackend.delete_replicas

    def stuck(self, run_id):
        if run_id == "run-a-stuck":
            raise RuntimeError("its replica could not be removed")
        return delete_replicas(self, run_id)

    monkeypatch.setattr(LocalBackend, "delete_replicas", stuck)
    with pytest.raises(SweepIncomplete, match=r"^local: the other runs were swept, but not run-a-stuck \(its replica "
                                              r"could not be removed\): the next cleanup tries again$") as failed:
        cleanup(backends=["local"])
    assert [r.run_id for r in failed.value.removed] == ["run-b-expired"], "what it did remove, for its caller"
    assert {r.run_id for r in backend.resources()} == {"run-a-stuck"}
    monkeypatch.undo()
    monkeypatch.setenv("IMAGENET18_HOME", str(tmp_path))
    assert cleanup(backends=["local"]) == {"local": ["run-a-stuck/replica-00"]}
    assert local_leftovers(tmp_path) == {}


def test_a_prefect_api_that_cannot_answer_leaves_the_runs_it_would_judge_and_the_expired_are_swept(
        prefect_api, tiny_data, tmp_path):
    """Whether a run finished is Prefect's to say; where its API does not answer (gone, restarting), the runs that
    only it could judge are left for the next cleanup, asked once, and the expired ones are torn down all the same."""
    backend = LocalBackend(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    live, expired = sorted(str(uuid.uuid4()) for _ in range(2)), str(uuid.uuid4())
    for run_id, expires in [(live[0], now + dt.timedelta(hours=1)), (live[1], now + dt.timedelta(hours=1)),
                            (expired, now - dt.timedelta(minutes=1))]:
        backend.replicate(ClusterSpec(run_id, f"test-{run_id}", 1, "local", False, expires), str(tiny_data), 1)
    asked = []

    def finished_with_the_api_gone(run_id: str) -> bool:
        asked.append(run_id)
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens on port 9
            return run_is_finished(run_id)

    with pytest.raises(SweepIncomplete, match=rf"^could not tell whether {live[0]}, {live[1]} finished \(\w*Connect"
                                              r"\w*: .+\), so they were left: the next cleanup asks again$") as failed:
        backend.sweep(finished_with_the_api_gone)
    assert [r.run_id for r in failed.value.removed] == [expired]
    assert {r.run_id for r in backend.resources()} == set(live)
    assert len(asked) == 1, "not asked again once the API failed"
