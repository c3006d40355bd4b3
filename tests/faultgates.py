"""Fault gates for the local backend: make a chosen function fail, or hang until released and then fail, from
its (after+1)-th call on until the gate is released, in this process or, through the environment, in a flow
process the test starts.

A gate writes its `hit` file when it fires, so a test knows the run is inside the stage it wants to kill it in.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

GATE_ENV = "IMAGENET18_TEST_GATE"  # a JSON file with the Gate a flow process installs at start
HOLD_LIMIT_SECONDS = 300.0
# A function each stage of a local run calls, where a gate makes the stage fail.
STAGE_GATES = {
    "validate": "tasks.backends.local:LocalBackend.check",
    "authorize": "tasks.backends.local:LocalBackend.authorize_launch",
    "replicate": "tasks.backends.local:LocalBackend._replica",
    "prepare": "tasks.backends.local:LocalBackend.prepare",  # while the replicas are made
    "provision": "tasks.backends.local:Machine",
    "train": "tasks.backends.local:LocalBackend.status",  # the first poll of the running job
    "evaluate": "tasks.stages:_publish_report",  # writing the curves beside the run's logs
    "teardown": "tasks.backends.local:LocalBackend.delete_replicas",
}


class GateError(RuntimeError):
    """The failure a gate injects."""


@dataclass(frozen=True)
class Gate:
    target: str  # "module:attribute" or "module:Class.method"
    after: int  # calls let through before it fires
    hold: bool  # hang until `release` exists, then fail
    hit: str  # file written when it fires
    release: str  # file whose existence ends a hold

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str) -> Gate:
        return cls(**json.loads(Path(path).read_text()))

    @property
    def released(self) -> bool:
        return Path(self.release).exists()

    @property
    def fired(self) -> bool:
        return Path(self.hit).exists()


def _owner_and_name(target: str) -> tuple[object, str]:
    module, _, attribute = target.partition(":")
    owner: object = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _gated(original, gate: Gate):
    calls, lock = itertools.count(), threading.Lock()

    def gated(*args, **kwargs):
        with lock:
            call = next(calls)
        if call < gate.after or gate.released:  # released: the fault was transient, later calls succeed
            return original(*args, **kwargs)
        Path(gate.hit).touch()
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        while gate.hold and not gate.released and time.monotonic() < deadline:
            time.sleep(0.1)
        raise GateError(f"injected failure in {gate.target} (call {call + 1})")

    return gated


@contextmanager
def installed(gate: Gate) -> Iterator[None]:
    """The gate in place for the block."""
    owner, name = _owner_and_name(gate.target)
    original = getattr(owner, name)
    setattr(owner, name, _gated(original, gate))
    try:
        yield
    finally:
        setattr(owner, name, original)


def install_from_environment() -> None:
    """For a flow process: the gate GATE_ENV names, for the life of the process."""
    if os.environ.get(GATE_ENV) and Path(os.environ[GATE_ENV]).is_file():
        gate = Gate.load(os.environ[GATE_ENV])
        owner, name = _owner_and_name(gate.target)
        setattr(owner, name, _gated(getattr(owner, name), gate))
