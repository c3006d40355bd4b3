"""A cleanup's sweep over many runs, where one run's trouble stops no other run's teardown."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tasks.backends.base import Resource, SweepIncomplete

log = logging.getLogger(__name__)


class Sweep:
    """Tears down runs one after another, noting those that fail; `removed()` then fails naming them, so the
    cleanup's run shows it, and the next cleanup tries them again."""

    def __init__(self) -> None:
        self._removed: list[Resource] = []
        self._failed: dict[str, str] = {}  # run id -> why its teardown failed
        self._unasked: set[str] = set()  # runs not known to be finished, since asking failed (in any region)
        self._why_unasked = ""

    def finished(self, run_id: str, finished: Callable[[str], bool]) -> bool:
        """finished(run_id); False, noted for removed(), where it cannot be asked (the orchestrator's API away or
        failing), and not asked again in this sweep once it failed: one failing run's question stops no expired
        run's teardown, nor waits for the API once per run."""
        if not self._why_unasked:
            try:
                return finished(run_id)
            except Exception as exc:  # noqa: BLE001 - whatever the API's client raised
                log.warning("could not tell whether run %s finished: %s", run_id, exc)
                self._why_unasked = f"{type(exc).__name__}: {exc}"
        self._unasked.add(run_id)
        return False

    def tear_down(self, run_id: str, tear_down: Callable[[], list[Resource]], where: str = "") -> None:
        try:
            self._removed += tear_down()
        except Exception as exc:  # noqa: BLE001 - one run's trouble stops no other's sweep
            log.warning("could not tear down run %s%s: %s", run_id, where, exc)
            self._failed[run_id] = str(exc)

    def removed(self, also: Sequence[str] = ()) -> list[Resource]:
        """What was removed; raises SweepIncomplete, carrying it, where a run failed or `also` names another trouble
        (a region not looked in, say)."""
        failures = list(also)
        if self._unasked:
            failures.insert(0, f"could not tell whether {', '.join(sorted(self._unasked))} finished "
                               f"({self._why_unasked}), so they were left: the next cleanup asks again")
        if self._failed:
            failures.insert(0, "the other runs were swept, but not " + "; ".join(
                f"{run_id} ({why})" for run_id, why in sorted(self._failed.items())) + ": the next cleanup tries again")
        if failures:
            raise SweepIncomplete("; and ".join(failures), self._removed)
        return self._removed
