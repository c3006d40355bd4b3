"""Artifacts on their way to the Prefect API, as a side path: the API may go away while a run trains (a restarted
server, a network blip), and a run neither waits for it nor fails with it.

Each call is made without the Prefect client's own retries, which wait about a minute. One the API does not
answer is reported once and kept; the kept ones are sent again, after a growing pause, with a later artifact, and
after teardown, when the flow gives the API a while to come back and then says what never reached it. A progress
update replaces one that has not been sent yet."""

from __future__ import annotations

import logging
import time
from uuid import UUID

from prefect.artifacts import Artifact, ProgressArtifact, update_progress_artifact
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.utilities.context import get_task_and_flow_run_ids

from trainer.side_path import SidePath

log = logging.getLogger(__name__)
LAST_WAIT_SECONDS = 90.0  # after teardown: how long kept artifacts wait for the API to come back


class Progress:
    """A progress artifact: created once, then updated; only its latest value matters."""

    def __init__(self, key: str, progress: float, description: str) -> None:
        self.key, self.progress, self.description = key, progress, description
        self.task_run_id, self.flow_run_id = get_task_and_flow_run_ids()
        self.id: UUID | None = None

    def send(self) -> None:
        if self.id is None:
            self.id = ProgressArtifact(key=self.key, progress=self.progress, description=self.description,
                                       task_run_id=self.task_run_id, flow_run_id=self.flow_run_id).create(_sync=True).id
        else:
            update_progress_artifact(self.id, self.progress, description=self.description, _sync=True)


class Outbox:
    def __init__(self) -> None:
        self.kept: list[Artifact | Progress] = []
        self.side_path = SidePath("sending artifacts to the Prefect API", log)

    def send(self, artifact: Artifact) -> None:
        """Create `artifact`, in the task or flow run this is called in, now or later."""
        artifact.task_run_id, artifact.flow_run_id = get_task_and_flow_run_ids()
        self.kept.append(artifact)
        self.deliver()

    def progress(self, progress: Progress, value: float, description: str) -> None:
        progress.progress, progress.description = value, description
        if progress not in self.kept:
            self.kept.append(progress)
        self.deliver()

    def deliver(self) -> None:
        """Send what is kept, oldest first, if a try is due; what the API does not answer stays."""
        if not self.side_path.due():
            return
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            while self.kept:
                try:
                    _send(self.kept[0])
                except Exception as exc:  # noqa: BLE001 - httpx's connection errors, the API's 5xx: all "not now"
                    self.side_path.failed(exc)
                    return
                self.kept.pop(0)
        self.side_path.succeeded()

    def deliver_before(self, seconds: float) -> list[str]:
        """Keep trying for up to `seconds`; returns the keys of the artifacts that never reached the API."""
        deadline = time.monotonic() + seconds
        self.deliver()
        while self.kept and time.monotonic() + self.side_path.pause() < deadline:
            time.sleep(self.side_path.pause())
            self.deliver()
        return [artifact.key for artifact in self.kept]


def _send(artifact: Artifact | Progress) -> None:
    if isinstance(artifact, Progress):
        artifact.send()
    else:
        artifact.create(_sync=True)


_OUTBOXES: dict[UUID | None, Outbox] = {}  # by flow run: a process may run several flows at once (tests do)


def outbox() -> Outbox:
    """The outbox of the flow run this is called in (from its flow or one of its tasks)."""
    return _OUTBOXES.setdefault(get_task_and_flow_run_ids()[1], Outbox())


def close_outbox(seconds: float = LAST_WAIT_SECONDS) -> list[str]:
    """At the end of a flow run: its kept artifacts get up to `seconds` to reach the API; returns the keys of those
    that did not."""
    return _OUTBOXES.pop(get_task_and_flow_run_ids()[1], Outbox()).deliver_before(seconds)
