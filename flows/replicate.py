"""Flow `imagenet18-replicate`: make N dataset replicas ahead of runs, or delete them (the seed's
tools/replicate_imagenet.py). They are tagged with the owner `replicas` and an expiry, so the cleanup flow
deletes forgotten ones. A run of the same dataset (and, on AWS, zone) claims what it needs of them, makes only
the rest, and gives them back when it ends."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger

from tasks.backends import get_backend
from tasks.backends.aws.options import AwsOptions
from tasks.backends.base import POOL_OWNER, ClusterSpec
from tasks.extra_loggers import extra_loggers_at_prefect_level
from tasks.parameters import BackendName, KeepHours, ReplicaCount, RunParameters


@flow(name="imagenet18-replicate")
def replicate(replicas: ReplicaCount = 16, backend: BackendName = "local", dataset: str | None = None,
              keep_hours: KeepHours = 24.0, delete: bool = False, instance_type: str | None = None,
              aws: AwsOptions | None = None) -> list[str]:
    extra_loggers_at_prefect_level()
    logger = get_run_logger()
    store = get_backend(backend, aws)
    if delete:
        removed = store.delete_replicas(POOL_OWNER)
        logger.info("deleted %d replica(s): %s", len(removed), ", ".join(r.id for r in removed) or "none")
        held = [r for r in store.resources() if r.kind == "replica" and "pool_index" in r.details]
        if held:
            logger.warning("%d replica(s) in use by runs are deleted when those runs end: %s", len(held),
                           ", ".join(f"{r.id} (run {r.run_id})" for r in held))
        return [r.id for r in removed]
    params = RunParameters(backend=backend, dataset=dataset, instance_type=instance_type, aws=aws)
    if dataset is None:
        store.ensure_default_dataset()
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=keep_hours)
    spec = ClusterSpec(POOL_OWNER, POOL_OWNER, replicas, params.resolved_instance_type, False, expires)
    made = store.replicate(spec, params.resolved_dataset, replicas, pool=True)
    logger.info("%d replica(s) ready until %s at least: %s", len(made), expires.isoformat(timespec="minutes"),
                ", ".join(r.id for r in made))
    return [r.id for r in made]
