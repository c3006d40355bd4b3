"""Calls AWS takes without an idempotency token (SSM's SendCommand, EC2's AllocateAddress): botocore must not retry
them, since a call whose answer was lost (a dropped connection, a 5xx) may have been carried out, and its copy
would make a second of what the first made (a second job beside the first, an address past the quota). Once a
try may have been carried out, what it made is looked for before each further try, and after the last, a few times
over some seconds: a listing may not show what was made moments ago (EC2's eventual consistency)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import botocore.exceptions

from tasks.backends.aws.clients import error_code
from tasks.backends.base import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")
THROTTLED = ("ThrottlingException", "RequestLimitExceeded")
ATTEMPTS = 8
LOOK_AFTER_S = (0.0, 1.0, 2.0, 4.0, 8.0)  # the waits before each look for what a lost answer made


def make_once(what: str, make: Callable[[], T], find: Callable[[], T | None], attempts: int = ATTEMPTS) -> T:
    """`make` (a call made without botocore's retries), tried again where its answer was lost or it was throttled;
    `find`: what a try whose answer was lost made, or None."""
    maybe_made = False
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(min(2 ** attempt * 0.25, 10))
        if maybe_made:
            try:
                if (found := _look(find)) is not None:
                    return found
            except Exception as exc:  # noqa: BLE001 - a throttled listing, say: never make it again before knowing
                log.warning("could not look for %s: %s; looking again", what, exc)
                continue
        try:
            return make()
        except Exception as exc:  # noqa: BLE001
            lost = answer_lost(exc)
            maybe_made = maybe_made or lost
            unsent = error_code(exc) in THROTTLED or isinstance(exc, botocore.exceptions.EndpointConnectionError)
            if not (lost or unsent):
                raise
            log.warning("%s: %s; %s", what, exc, "looking for it before trying again" if maybe_made else "trying again")
    if maybe_made and (found := _look(find)) is not None:
        return found
    raise BackendError(f"AWS did not take {what} in {attempts} tries"
                       + ("; it may have been carried out all the same" if maybe_made else ""))


def _look(find: Callable[[], T | None]) -> T | None:
    for wait in LOOK_AFTER_S:
        time.sleep(wait)
        if (found := find()) is not None:
            return found
    return None


def answer_lost(exc: BaseException) -> bool:
    """Whether a failed call may have been carried out: its answer was a server error, or never came."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return isinstance(exc, (botocore.exceptions.ConnectionClosedError, botocore.exceptions.ReadTimeoutError))
