"""Serve the three deployments from one process: `imagenet18/full`, `imagenet18-replicate/replicate`, and
`imagenet18-cleanup/cleanup` on a cron schedule. Needs a Prefect server (`prefect server start`)."""

from __future__ import annotations

import os

from prefect import serve

from flows.cleanup import cleanup
from flows.imagenet18 import imagenet18
from flows.replicate import replicate

CLEANUP_CRON = os.environ.get("IMAGENET18_CLEANUP_CRON", "*/15 * * * *")  # every 15 minutes


def deployments() -> list:
    return [
        imagenet18.to_deployment(name="full", tags=["imagenet18"],
                                 description="validate+plan -> replicate -> provision -> train -> evaluate, "
                                             "teardown always"),
        replicate.to_deployment(name="replicate", tags=["imagenet18"]),
        cleanup.to_deployment(name="cleanup", tags=["imagenet18"], cron=CLEANUP_CRON),
    ]


def serve_all() -> None:
    serve(*deployments())


if __name__ == "__main__":
    serve_all()
