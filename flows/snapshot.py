"""Flow `imagenet18-snapshot`: make the dataset snapshot that runs replicate, from a dataset at an s3:// URL
(the seed's manual recipe: a big machine, a fresh volume, the dataset copied on, a snapshot)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_run

from tasks.backends.aws import AwsBackend, AwsOptions
from tasks.backends.aws.snapshots import BUILD_HOURS, make_snapshot
from tasks.extra_loggers import extra_loggers_at_prefect_level

DEFAULT_NAME = "imagenet18-backup"  # the seed's snapshot description


@flow(name="imagenet18-snapshot")
def snapshot(source: str, name: str = DEFAULT_NAME, sizes: list[int] | None = None,
             aws: AwsOptions | None = None, max_hours: float = BUILD_HOURS) -> str:
    """Make the dataset snapshot `name` from the dataset at `source` (s3://) and its -sz/<px> copies `sizes`; the
    builder ends itself after `max_hours`. What the build makes carries this flow run's id, as a training run's does:
    the cleanup deletes what a killed build left once the run is over, not at its expiry hours later."""
    extra_loggers_at_prefect_level()
    snapshot_id = make_snapshot(AwsBackend(aws), source, name, [160, 352] if sizes is None else sizes,
                                max_hours=max_hours, run_id=str(current_run.id))
    get_run_logger().info("snapshot %s is ready: run with dataset=%s (or %s)", snapshot_id, name, snapshot_id)
    return snapshot_id
