"""A process pool whose workers end quietly when it does."""

from __future__ import annotations

import signal
from multiprocessing import Pool
from multiprocessing.pool import Pool as PoolType


def process_pool(workers: int) -> PoolType:
    """`multiprocessing.Pool(workers)` whose workers take SIGTERM's default action (end at once, say nothing).

    `with Pool()` ends by sending each worker SIGTERM, and a forked worker inherits its parent's handler: in a flow
    run that is Prefect's, which raises TerminationSignal. Each worker then printed a traceback, and could die
    holding a queue's lock, raised inside its release.
    """
    return Pool(workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL))
