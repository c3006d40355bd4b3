"""Polling for what boto3 has no waiter for (EFS, SSM) or where we want our own bounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tasks.backends.base import BackendError

T = TypeVar("T")
POLL_SECONDS = 2.0


def until(what: str, probe: Callable[[], T | None], timeout: float = 900.0, poll: float = POLL_SECONDS) -> T:
    """Call `probe` until it returns something other than None or False; BackendError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise BackendError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def waiter_config(timeout: float = 900.0) -> dict:
    """boto3 waiter settings for a bound of `timeout` seconds."""
    return {"Delay": 2, "MaxAttempts": max(1, int(timeout / 2))}
