"""Flow `imagenet18-cleanup` (scheduled): delete what runs left behind.

A run's resources go when its Prefect flow run is in a final state (completed, failed, cancelled, crashed)
or when their expiry has passed. A run whose flow process died without a word (SIGKILL, a lost host, a runner
gone while cancelling) stays Running or Cancelling in Prefect forever; its heartbeats stop, though. Cleanup
marks such a run Crashed (or Cancelled) first, which makes it finished, and then deletes what it left.
"""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, \
    FlowRunFilterStateType
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Crashed

from tasks.backends import BACKENDS, get_backend
from tasks.backends.aws.options import AwsOptions
from tasks.backends.base import BackendError, Resource, SweepIncomplete
from tasks.extra_loggers import extra_loggers_at_prefect_level

RUN_FLOWS = ["imagenet18", "imagenet18-snapshot"]  # the flows whose runs create machines and disks
HEARTBEAT = "prefect.flow-run.heartbeat"  # what Prefect's flow engine emits every PREFECT_FLOWS_HEARTBEAT_FREQUENCY s
STALE_AFTER_MINUTES = 10.0  # over three of Prefect's default 180 s heartbeats


def run_is_finished(run_id: str) -> bool:
    """True when the flow run is in a final state; unknown ids (other servers, replica pools) wait for expiry."""
    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        return False
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return False
    return run.state is not None and run.state.is_final()


def last_heartbeat(flow_run_id: uuid.UUID) -> dt.datetime | None:
    """When the run's flow process last said it was alive (None: never, e.g. killed before its first beat left)."""
    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=[HEARTBEAT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            occurred=EventOccurredFilter(since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30))), limit=1)
    return page.events[0].occurred if page.events else None


def abandoned_runs(stale_after: dt.timedelta) -> list[tuple[FlowRun, dt.datetime]]:
    """Runs of RUN_FLOWS still Running or Cancelling with no sign of life (a heartbeat, else their start) for
    over `stale_after`. With heartbeats switched off there is no telling: none are."""
    if get_current_settings().flows.heartbeat_frequency is None:
        return []
    with get_client(sync_client=True) as client:
        stuck = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=RUN_FLOWS)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING]))))
    now = dt.datetime.now(dt.timezone.utc)
    found = []
    for run in stuck:
        alive_at = last_heartbeat(run.id) or run.start_time or run.created
        if alive_at is not None and now - alive_at > stale_after:
            found.append((run, alive_at))
    return found


def mark_abandoned(run: FlowRun, alive_at: dt.datetime) -> None:
    """Cancelling becomes Cancelled, Running becomes Crashed: final states, so the sweep deletes what is left."""
    message = (f"no sign of life from its flow process since {alive_at:%Y-%m-%d %H:%M:%S} UTC; marked by "
               "imagenet18-cleanup")
    final = Cancelled if run.state_type == StateType.CANCELLING else Crashed
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, final(message=message), force=True)


@flow(name="imagenet18-cleanup")
def cleanup(backends: list[str] | None = None, aws: AwsOptions | None = None,
            stale_after_minutes: float = STALE_AFTER_MINUTES) -> dict[str, list[str]]:
    extra_loggers_at_prefect_level()
    logger = get_run_logger()
    for run, alive_at in abandoned_runs(dt.timedelta(minutes=stale_after_minutes)):
        mark_abandoned(run, alive_at)
        logger.warning("flow run %s (%s) was %s with no sign of life since %s: marked it finished", run.name,
                       run.id, run.state_name, alive_at.isoformat(timespec="seconds"))
    removed: dict[str, list[str]] = {}
    incomplete: dict[str, str] = {}
    swept_everywhere: list[Resource] = []
    for name in backends or BACKENDS:
        try:
            swept = get_backend(name, aws).sweep(run_is_finished)
        except SweepIncomplete as exc:
            logger.warning("%s: %s", name, exc)
            swept, incomplete[name] = exc.removed, str(exc)
        except BackendError as exc:  # a backend this place cannot use (no AWS credentials, say)
            logger.info("skipping backend %s: %s", name, exc)
            continue
        removed[name] = [r.id for r in swept]
        swept_everywhere += swept
        logger.info("%s: removed %d resource(s)%s", name, len(swept),
                    ": " + ", ".join(removed[name]) if swept else "")
    if incomplete:
        raise SweepIncomplete("; ".join(f"{name}: {why}" for name, why in incomplete.items()),  # the run fails
                              swept_everywhere)
    return removed
