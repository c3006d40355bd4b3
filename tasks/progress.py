"""Which training nodes stopped making progress, from the heartbeat files they overwrite in the run's storage
(heartbeats/node-<i>.json, each node's first process, once per few seconds while it trains).

A node whose process is alive but stuck (a hung collective, a wedged disk, a frozen machine) never exits, so
exit codes do not show it; its heartbeat file stops changing. A node is judged only once it has beaten during
the current job: loading, rendezvous and a file left by an earlier job do not count as progress or as a hang.

Nodes meet in a collective every step, so one stuck node stalls the others within a step, and which of their
files the watcher saw change last is chance. So once one node is past the limit, every node silent for half of
it is named with it: the stuck one is among them.
"""

from __future__ import annotations

import time
from typing import Callable


class ProgressWatch:
    def __init__(self, hang_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.hang_seconds, self.clock = hang_seconds, clock
        self._first: dict[int, bytes] = {}  # what each node's file held when this job started
        self._last: dict[int, tuple[bytes, float]] = {}  # its latest content, and when it was first seen

    def hung(self, beats: dict[int, bytes]) -> list[int]:
        """Once a node's heartbeat, changed in this job, has not changed for `hang_seconds`: every node silent
        for half of that. Else none."""
        now = self.clock()
        for node, content in beats.items():
            self._first.setdefault(node, content)
            if self._last.get(node, (None, 0.0))[0] != content:
                self._last[node] = (content, now)
        silent = {node: now - since for node, (content, since) in self._last.items() if content != self._first[node]}
        if not any(seconds > self.hang_seconds for seconds in silent.values()):
            return []
        return sorted(node for node, seconds in silent.items() if seconds > self.hang_seconds / 2)
