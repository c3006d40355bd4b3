"""Flow `imagenet18-cleanup` (scheduled): delete what runs left behind.

A run's resources go when its Prefect flow run is in a final state (completed, failed, cancelled, crashed)
or when their expiry has passed: the backstop for runs whose flow process was SIGKILLed or lost its host.
"""

from __future__ import annotations

import uuid

from prefect import flow, get_client, get_run_logger
from prefect.exceptions import ObjectNotFound

from tasks.backends import BACKENDS, get_backend
from tasks.backends.aws.options import AwsOptions
from tasks.backends.base import BackendError


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


@flow(name="imagenet18-cleanup")
def cleanup(backends: list[str] | None = None, aws: AwsOptions | None = None) -> dict[str, list[str]]:
    logger = get_run_logger()
    removed: dict[str, list[str]] = {}
    for name in backends or BACKENDS:
        try:
            swept = get_backend(name, aws).sweep(run_is_finished)
        except BackendError as exc:
            logger.info("skipping backend %s: %s", name, exc)
            continue
        removed[name] = [r.id for r in swept]
        logger.info("%s: removed %d resource(s)%s", name, len(swept),
                    ": " + ", ".join(removed[name]) if swept else "")
    return removed
