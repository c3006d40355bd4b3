"""Flow `imagenet18-snapshot`: make the dataset snapshot that runs replicate, from a dataset at an s3:// URL
(the seed's manual recipe: a big machine, a fresh volume, the dataset copied on, a snapshot)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.backends.aws import AwsBackend, AwsOptions
from tasks.backends.aws.snapshots import make_snapshot
from tasks.extra_loggers import extra_loggers_at_prefect_level

DEFAULT_NAME = "imagenet18-backup"  # the seed's snapshot description


@flow(name="imagenet18-snapshot")
def snapshot(source: str, name: str = DEFAULT_NAME, sizes: list[int] | None = None,
             aws: AwsOptions | None = None) -> str:
    extra_loggers_at_prefect_level()
    snapshot_id = make_snapshot(AwsBackend(aws), source, name, [160, 352] if sizes is None else sizes)
    get_run_logger().info("snapshot %s is ready: run with dataset=%s (or %s)", snapshot_id, name, snapshot_id)
    return snapshot_id
