"""Work that may fail without stopping training (TensorBoard events, metrics records, heartbeats, the S3 mirror,
the orchestrator's relay): its caller keeps what is not yet done and tries again after a growing pause, and an
outage is reported when it begins and when it ends, not at every try."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

FIRST_PAUSE = 1.0  # seconds before the first retry; doubled after each failure
LONGEST_PAUSE = 60.0


class SidePath:
    def __init__(self, what: str, logger: logging.Logger, clock: Callable[[], float] = time.monotonic):
        self.what, self.logger, self.clock = what, logger, clock
        self.failures, self.next_try = 0, 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def due(self) -> bool:
        """Whether to try now: always while it works, after the pause while it fails."""
        return self.clock() >= self.next_try

    def pause(self) -> float:
        """Seconds until the next try is due."""
        return max(0.0, self.next_try - self.clock())

    def failed(self, error: BaseException) -> None:
        pause = min(FIRST_PAUSE * 2 ** self.failures, LONGEST_PAUSE)
        if not self.failing:
            self.logger.warning("%s failed (%s: %s); training goes on, and it is tried again with pauses of up to "
                                "%.0f s", self.what, type(error).__name__, error, LONGEST_PAUSE)
        self.failures += 1
        self.next_try = self.clock() + pause

    def succeeded(self) -> None:
        if self.failing:
            # a warning too, so that it is seen wherever the failure was (a console that shows only warnings)
            self.logger.warning("%s works again after %d failed tries; what it missed is caught up", self.what,
                                self.failures)
        self.failures, self.next_try = 0, 0.0
