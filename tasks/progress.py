"""Which training nodes stopped making progress, from the heartbeat files they overwrite in the run's storage
(heartbeats/node-<i>.json, each node's first process, once per few seconds while it trains).

A node whose process is alive but stuck (a hung collective, a wedged disk, a frozen machine) never exits, so
exit codes do not show it; its heartbeat file stops changing. A node is judged only once it has beaten during
the current job: loading, rendezvous and a file left by an earlier job do not count as progress or as a hang.
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
        """Nodes whose heartbeat, once it changed in this job, has not changed for `hang_seconds`."""
        now = self.clock()
        for node, content in beats.items():
            self._first.setdefault(node, content)
            if self._last.get(node, (None, 0.0))[0] != content:
                self._last[node] = (content, now)
        return sorted(node for node, (content, since) in self._last.items()
                      if content != self._first[node] and now - since > self.hang_seconds)
