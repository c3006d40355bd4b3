"""Whose is what: a sampler that lists every run's tagged resources, asked of the world (tests/leftovers.py), every
few seconds while the chaos runs go on, so that the ids a teardown or the cleanup flow names can be traced to the
run that made them, and each run's resources counted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.awssim import AwsSim
from tests.leftovers import Found, aws_machines_and_storage, aws_names, local_resources

SAMPLE_SECONDS = 2.0


class Census:
    def __init__(self, aws: AwsSim, home: Path):
        self.aws, self.home = aws, home
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}  # resource id -> run id
        self._made: dict[str, set[tuple[str, str]]] = {}  # run id -> (kind, id)
        self._names: set[str] = set()  # IAM's and SSM's, each holding its run's id

    def sample(self) -> None:
        self.record(aws_machines_and_storage(self.aws) + local_resources(self.home))
        names = aws_names(self.aws)
        with self._lock:
            self._names.update(names)

    def record(self, found: list[Found]) -> None:
        with self._lock:
            for thing in found:
                self._owners[thing.id] = thing.run_id
                self._made.setdefault(thing.run_id, set()).add((thing.kind, thing.id))

    def made(self, run_id: str) -> int:
        with self._lock:
            return len(self._made.get(run_id, ())) + sum(run_id in name for name in self._names)

    def owner(self, resource_id: str, run_ids: set[str]) -> str | None:
        """The run whose tag the resource carried when sampled, else the run whose id is in its name (local
        resources, IAM roles, SSM parameters); None when neither tells."""
        with self._lock:
            if resource_id in self._owners:
                return self._owners[resource_id]
        return next((run_id for run_id in run_ids if run_id in resource_id), None)

    @contextmanager
    def running(self) -> Iterator[Census]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(SAMPLE_SECONDS):
                try:
                    self.sample()
                except Exception:  # noqa: BLE001 - a listing racing a deletion; the next sample sees a settled world
                    continue

        sampler = threading.Thread(target=loop, name="chaos-census", daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            stop.set()
            sampler.join()
