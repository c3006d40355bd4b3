"""Fault rules: make chosen API calls fail with a given error code, by probability, count and request params;
optionally hold a call first, as an endpoint that hangs does, until the rules are cleared."""

import random
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from .calls import AwsCall


@dataclass
class FaultRule:
    service: str  # botocore name: ec2, ssm, efs, s3
    action: str  # RunInstances, SendCommand, ...; "*": every action of the service
    code: str
    message: str = "injected by awssim"
    status: int | None = None  # None: the status AWS uses for this code
    probability: float = 1.0
    times: int | None = None  # fire at most this many times; None: no limit
    match: dict[str, str] = field(default_factory=dict)  # flat request params -> regular expressions they match
    after: int = 0  # let the first N matching calls through
    hold_s: float = 0.0  # keep each failing call waiting this long (or until the rules are cleared) first
    seen: int = 0  # matching calls so far
    fired: int = 0

    def matches(self, call: AwsCall) -> bool:
        return (
            self.service == call.service
            and self.action in ("*", call.action)
            and all(re.fullmatch(str(pattern), call.params.get(key, "\0")) for key, pattern in self.match.items())
        )


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = random.Random()
        self._released = threading.Event()

    def add(self, rules: list[dict[str, Any]], seed: int | None = None) -> None:
        parsed = [FaultRule(**{k: v for k, v in rule.items() if k not in ("seen", "fired")}) for rule in rules]
        with self._lock:
            self._rules.extend(parsed)
            if seed is not None:
                self._rng.seed(seed)

    def clear(self) -> None:
        """No more rules; calls held now get their errors at once."""
        with self._lock:
            self._rules.clear()
            self._released.set()
            self._released = threading.Event()

    def hold(self, rule: FaultRule) -> None:
        with self._lock:
            released = self._released
        released.wait(rule.hold_s)

    def report(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(rule) for rule in self._rules]

    def pick(self, call: AwsCall) -> FaultRule | None:
        """The first rule that fires for this call, counting it; None lets the call through."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(call):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after or (rule.times is not None and rule.fired >= rule.times):
                    continue
                if self._rng.random() < rule.probability:
                    rule.fired += 1
                    return rule
        return None
