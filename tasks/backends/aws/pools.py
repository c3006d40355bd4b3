"""Thread pools for AWS calls that do not wait on each other. With `parallel_calls` 1 every call is made in
turn, in the caller's thread: the serial baseline, and a way to debug one call at a time."""

from __future__ import annotations

import contextvars
from concurrent.futures import Executor, Future, ThreadPoolExecutor


class InlineExecutor(Executor):
    """Runs each submitted call at once in the caller's thread and hands back its finished future."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the future carries it to whoever asks for the result
            future.set_exception(exc)
        return future


class ContextExecutor(ThreadPoolExecutor):
    """Runs each call in a copy of its submitter's context variables. A worker thread has none of its own, and
    a log handler that tells a record's run by the context (the flow's, for a retry's warning) drops the line."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def pool(parallel: int, width: int) -> Executor:
    """At most `width` calls at once, and never more than the user's `parallel_calls`."""
    workers = min(parallel, width)
    return ContextExecutor(max_workers=workers) if workers > 1 else InlineExecutor()
