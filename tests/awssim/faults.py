"""Fault rules: make chosen API calls fail with a given error code, by probability, count, request params and
run; optionally hold a call first, as an endpoint that hangs does, until the rules are cleared, or carry the call
out and lose only its answer."""

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .calls import AwsCall

ABSENT = "\0"  # what a request parameter left out reads as, to a rule's `match`
PRESENT = "[^\0]+"  # a `match` pattern: the parameter is given, whatever its value


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
    hold_s: float = 0.0  # keep each failing call waiting this long (or until the rule is cleared) first
    carried_out: bool = False  # the call is carried out and only its answer is the error (a 5xx after AWS acted)
    run: str | None = None  # only calls of this run (see `Faults`)
    region: str | None = None  # only calls signed for this region
    label: str = ""  # who added it: clearing a label clears only its rules
    seen: int = 0  # matching calls so far
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event)  # set when the rule is cleared

    def matches(self, call: AwsCall) -> bool:
        return (
            self.service == call.service
            and self.action in ("*", call.action)
            and self.region in (None, call.region)
            and all(re.fullmatch(str(pattern), call.params.get(key, ABSENT)) for key, pattern in self.match.items())
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "released"}


class Faults:
    """`of_run(call, run_id)` says whether a call is one of a run's: rules with `run` match only those."""

    def __init__(self, of_run: Callable[[AwsCall, str], bool]) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = random.Random()
        self._of_run = of_run

    def add(self, rules: list[dict[str, Any]], seed: int | None = None) -> None:
        parsed = [FaultRule(**{k: v for k, v in rule.items() if k not in ("seen", "fired")}) for rule in rules]
        with self._lock:
            self._rules.extend(parsed)
            if seed is not None:
                self._rng.seed(seed)

    def clear(self, label: str | None = None) -> None:
        """No more rules (with `label`: no more of its rules); calls they hold now get their errors at once."""
        with self._lock:
            cleared = [rule for rule in self._rules if label in (None, rule.label)]
            self._rules = [rule for rule in self._rules if label not in (None, rule.label)]
        for rule in cleared:
            rule.released.set()

    @staticmethod
    def hold(rule: FaultRule) -> None:
        rule.released.wait(rule.hold_s)

    def report(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.as_dict() for rule in self._rules]

    def unfire(self, rule: FaultRule) -> None:
        """Not counted: a rule whose call was `carried_out`, refused by the simulator instead (nothing was done, so
        the rule's answer was not given)."""
        with self._lock:
            rule.fired -= 1

    def pick(self, call: AwsCall) -> FaultRule | None:
        """The first rule that fires for this call, counting it; None lets the call through."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(call) or (rule.run is not None and not self._of_run(call, rule.run)):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after or (rule.times is not None and rule.fired >= rule.times):
                    continue
                if self._rng.random() < rule.probability:
                    rule.fired += 1
                    return rule
        return None
