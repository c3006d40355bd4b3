"""Flow `imagenet18`: validate and plan -> replicate dataset -> provision -> train -> evaluate, then teardown.

Teardown runs whatever happens: in `finally` for failures, and from the on_cancellation / on_crashed hooks
for cancels and crashes. It finds resources by the run's tag, never from this process's memory, so it also
removes what a cancel during parallel creation left. What SIGKILL leaves, the scheduled cleanup flow removes.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from flows.parameters import BackendName, MachineCount, RunParameters
from tasks import stages
from tasks.backends import get_backend
from tasks.backends.aws.options import AwsOptions


def _run_name() -> str:
    p = current_run.parameters
    spot = "-spot" if p.get("spot") else ""
    return f"imagenet18-{p.get('machines', 2)}x-{p.get('backend', 'local')}{spot}-" \
           f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


def _teardown_hook(flow_, flow_run, state) -> None:
    """Runs on cancel and crash (also in a served run's runner process): find by tag, delete, verify."""
    aws = flow_run.parameters.get("aws")
    get_backend(flow_run.parameters.get("backend", "local"), AwsOptions(**aws) if aws else None).teardown(
        str(flow_run.id))


@flow(name="imagenet18", flow_run_name=_run_name, on_cancellation=[_teardown_hook], on_crashed=[_teardown_hook])
def imagenet18(machines: MachineCount = 2, backend: BackendName = "local", spot: bool = False,
               instance_type: str | None = None, dataset: str | None = None, schedule: str | None = None,
               target: float | None = None, target_metric: Literal["top1", "top5"] | None = None,
               epochs: int | None = None,
               budget_usd: float | None = None, max_hours: float = 2.0, dry_run: bool = False,
               restarts: int = 2, aws: AwsOptions | None = None) -> dict:
    """Train ResNet-50 the imagenet18 way on `machines` machines, then tear everything down."""
    params = RunParameters(machines=machines, backend=backend, spot=spot, instance_type=instance_type,
                           dataset=dataset, schedule=schedule, target=target, target_metric=target_metric,
                           epochs=epochs, budget_usd=budget_usd, max_hours=max_hours, dry_run=dry_run,
                           restarts=restarts, aws=aws)
    run_id, run_name = str(current_run.id), current_run.name
    plan = stages.validate_and_plan(params, run_id, run_name)
    if params.dry_run:
        get_run_logger().info("dry run: nothing was created")
        return {"run_name": run_name, "dry_run": True, "hourly_usd": plan.cost.hourly_usd,
                "total_usd": plan.cost.total_usd}
    try:
        replicas = stages.replicate_dataset(plan)
        cluster = stages.provision_cluster(plan, replicas)
        summary, cluster = stages.train(plan, cluster, replicas)
        return stages.evaluate(plan, cluster, summary)
    finally:
        stages.teardown(params, run_id)
