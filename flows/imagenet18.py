"""Flow `imagenet18`: validate and plan -> authorize the launch -> prepare the dataset's resized copies, then
replicate it, while the cluster is prepared -> provision -> train -> evaluate, then teardown.

Teardown runs whatever happens: in `finally` for failures, and from the on_cancellation / on_crashed hooks
for cancels and crashes. It finds resources by the run's tag, never from this process's memory, so it also
removes what a cancel during parallel creation left. What SIGKILL leaves, the scheduled cleanup flow removes.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run

from tasks import stages
from tasks.artifacts import close_outbox
from tasks.backends import get_backend
from tasks.extra_loggers import extra_loggers_at_prefect_level
from tasks.parameters import RunParameters, with_run_parameters

HOOK_TEARDOWN_ATTEMPTS = 4  # as the teardown task: one try and three retries
HOOK_RETRY_SECONDS = 5.0


def _run_name() -> str:
    p = current_run.parameters
    spot = "-spot" if p.get("spot") else ""
    return f"imagenet18-{p.get('machines', 2)}x-{p.get('backend', 'local')}{spot}-" \
           f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


def _teardown_hook(flow, flow_run, state) -> None:  # noqa: ARG001 - a served run's runner passes all three by name
    """Runs on cancel and crash (also in a served run's runner process): find by tag, delete, verify. Retried
    like the teardown task: a hook has no task retries, and a call that failed once (a hung endpoint, a
    throttled burst) should not leave the run's resources to the scheduled cleanup."""
    backend = get_backend(flow_run.parameters.get("backend", "local"), flow_run.parameters.get("aws"))
    logger = flow_run_logger(flow_run, flow)
    for attempt in range(1, HOOK_TEARDOWN_ATTEMPTS + 1):
        try:
            removed = backend.teardown(str(flow_run.id))
        except Exception as exc:  # noqa: BLE001 - any failure is retried, the last one raised
            if attempt == HOOK_TEARDOWN_ATTEMPTS:
                raise
            logger.warning("teardown attempt %d of %d failed (%s); again in %.0f s", attempt, HOOK_TEARDOWN_ATTEMPTS,
                           exc, HOOK_RETRY_SECONDS)
            time.sleep(HOOK_RETRY_SECONDS)
        else:
            logger.info("teardown removed %d resource(s) of run %s", len(removed), flow_run.id)
            return


@flow(name="imagenet18", flow_run_name=_run_name, on_cancellation=[_teardown_hook], on_crashed=[_teardown_hook])
@with_run_parameters
def imagenet18(**options: Any) -> dict:
    """Train ResNet-50 the imagenet18 way on `machines` machines, then tear everything down."""
    extra_loggers_at_prefect_level()
    params = RunParameters(**options)
    run_id, run_name = str(current_run.id), current_run.name
    try:
        return _plan_and_train(params, run_id, run_name)
    finally:
        _report_unsent_artifacts()


def _plan_and_train(params: RunParameters, run_id: str, run_name: str) -> dict:
    plan = stages.validate_and_plan(params, run_id, run_name)
    if params.dry_run:
        get_run_logger().info("dry run: nothing was created")
        return {"run_name": run_name, "dry_run": True, "hourly_usd": plan.cost.hourly_usd,
                "total_usd": plan.cost.total_usd, "compile": str(plan.compile)}
    started: list[PrefectFuture] = []
    try:
        stages.authorize_launch(plan)  # a refused permission fails here, before the replicas are paid for
        started = [stages.prepare_cluster.submit(plan)]
        stages.prepare_dataset(plan)
        started.insert(0, stages.replicate_dataset.submit(plan))
        wait(started)  # both, even when one failed: teardown must not begin while the other is still creating
        replicas, prepared = [future.result() for future in started]
        cluster = stages.provision_cluster(plan, replicas, prepared)
        summary, cluster = stages.train(plan, cluster, replicas)
        return stages.evaluate(plan, cluster, summary)
    finally:
        wait(started)  # on a cancel or SIGTERM while they run
        stages.teardown(params, run_id)


def _report_unsent_artifacts() -> None:
    """After teardown, which needs no API: artifacts the Prefect API did not take while it was away get a while
    to reach it; those that never do are named in the flow's log (which reaches the console in any case)."""
    unsent = close_outbox()
    if unsent:
        get_run_logger().warning("the Prefect API did not answer, so this run's artifact(s) %s are not there; "
                                 "its logs, metrics and curves are in its run folder", ", ".join(unsent))
