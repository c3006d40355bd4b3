"""SSM's request-rate throttling of Run Command's reads, which moto lacks. AWS throttles each account and Region
with a token bucket per API and answers ThrottlingException ("Rate exceeded", HTTP 400) past it, but publishes no
rate for ListCommands, ListCommandInvocations or GetCommandInvocation (its Systems Manager quotas give request
rates for Parameter Store only). So this is an approximation, on the low side of what users report being throttled
at: one bucket shared by the three reads, BURST calls at once, refilled at RATE_PER_S a second. A client that asks
once per machine on every poll goes past it with a handful of machines."""

import threading
import time
from collections.abc import Callable

from .calls import AwsCall

THROTTLED_ACTIONS = ("ListCommands", "ListCommandInvocations", "GetCommandInvocation")
BURST = 10
RATE_PER_S = 5.0


class TokenBucket:
    def __init__(self, burst: float, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate_per_s, self.clock = burst, rate_per_s, clock
        self.tokens, self.at = burst, clock()

    def take(self) -> bool:
        """One token if there is one; False when the call is over the rate."""
        now = self.clock()
        self.tokens, self.at = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s), now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SsmThrottle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def refuses(self, call: AwsCall) -> bool:
        if call.service != "ssm" or call.action not in THROTTLED_ACTIONS:
            return False
        with self._lock:
            bucket = self._buckets.setdefault((call.account, call.region), TokenBucket(BURST, RATE_PER_S))
            return not bucket.take()

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
