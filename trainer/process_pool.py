"""A process pool safe to start from a flow run, whose workers end quietly when it does."""

from __future__ import annotations

from multiprocessing import get_context
from multiprocessing.pool import Pool


def process_pool(workers: int) -> Pool:
    """`multiprocessing.Pool(workers)` of spawned workers: fresh interpreters, not forks.

    A forked worker inherits its parent's state. In a flow run that is Prefect's SIGTERM handler, which raises
    TerminationSignal, and `with Pool()` ends by sending each worker SIGTERM: each printed a traceback, and could
    die holding a queue's lock. It also inherits the locks the parent's other threads (Prefect's) held at the
    fork, and hung on one here. A spawned worker starts with SIGTERM's default action and no held locks.
    """
    return get_context("spawn").Pool(workers)
