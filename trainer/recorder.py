"""Where the numbers go: TensorBoard events with the seed's tags, wandb when WANDB_API_KEY is set, and
metrics.jsonl (a record per epoch plus heartbeats), the file an orchestrator reads from shared storage.

All of them are side paths: a full disk or a lost network is reported and retried, and training goes on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from trainer import wandb_run
from trainer.side_path import SidePath

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class Recorder:
    """Rank 0 records; other ranks hold a Recorder that does nothing, so the loops need no rank checks."""

    def __init__(self, logdir: Path, run_name: str, config: dict, enabled: bool,
                 heartbeat_seconds: float = 30.0):
        self.enabled, self.heartbeat_seconds, self.last_heartbeat = enabled, heartbeat_seconds, 0.0
        self.tensorboard = self.wandb = self.metrics = None
        if not enabled:
            return
        logdir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = TensorBoardEvents(logdir)
        self.metrics = JsonLines(logdir / METRICS_FILE)
        if wandb_run.wanted():
            self.wandb = wandb_run.WandbRun(logdir, run_name, config, report=lambda **state: self.record("wandb",
                                                                                                      **state))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        self.tensorboard.add(values, step)
        if self.wandb is not None:
            self.wandb.log(values, step)

    def record(self, kind: str, **fields) -> None:
        """One line of metrics.jsonl, on disk at once so a reader on shared storage sees it."""
        if self.enabled:
            self.metrics.append({"type": kind, "time": time.time(), **fields})

    def heartbeat(self, **fields) -> None:
        if self.enabled and time.monotonic() - self.last_heartbeat >= self.heartbeat_seconds:
            self.last_heartbeat = time.monotonic()
            self.record("heartbeat", **fields)

    def close(self) -> None:
        if not self.enabled:
            return
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.metrics.close()


class TensorBoardEvents:
    """The scalars as TensorBoard events in `logdir`. A writer that failed once (a full disk, an I/O error) fails
    for good, so the next try starts a new one (a new events file) and writes every value not yet flushed."""

    def __init__(self, logdir: Path, clock: Callable[[], float] = time.monotonic):
        self.logdir = logdir
        self.writer: SummaryWriter | None = None
        self.unwritten: list[tuple[str, float, int, float]] = []  # tag, value, step, wall time
        self.side_path = SidePath(f"writing TensorBoard events in {logdir}", log, clock)
        self._write()

    def add(self, values: dict[str, float], step: int) -> None:
        now = time.time()
        self.unwritten += [(tag, value, step, now) for tag, value in values.items()]
        if self.side_path.due():
            self._write()

    def close(self) -> None:
        if self.unwritten:
            self._write()
        if self.unwritten:
            log.warning("%d TensorBoard value(s) could not be written to %s", len(self.unwritten), self.logdir)
        self._close_writer()

    def _write(self) -> None:
        try:
            if self.writer is None:
                self.writer = SummaryWriter(log_dir=str(self.logdir))
            for tag, value, step, walltime in self.unwritten:
                self.writer.add_scalar(tag, value, step, walltime=walltime)
            self.writer.flush()  # the writer's thread writes; its failure shows here, while the values are kept
        except OSError as exc:
            self._close_writer()
            self.side_path.failed(exc)
        else:
            self.unwritten.clear()
            self.side_path.succeeded()

    def _close_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(OSError):  # a failed writer raises its error again; its values are kept
                writer.close()


class JsonLines:
    """Records appended to a file that a reader on shared storage follows, each on disk before `append` returns.
    An append that fails (a full disk) is cut off again, so no torn line is left, and tried again with the next."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.unwritten: list[bytes] = []
        self.side_path = SidePath(f"writing records to {path}", log, clock)

    def append(self, record: dict) -> None:
        self.unwritten.append((json.dumps(record) + "\n").encode())
        if self.side_path.due():
            self._write()

    def close(self) -> None:
        if self.unwritten:
            self._write()
        if self.unwritten:
            log.warning("%d record(s) could not be written to %s", len(self.unwritten), self.path)
        os.close(self.fd)

    def _write(self) -> None:
        pending, size = memoryview(b"".join(self.unwritten)), None
        try:
            size = os.fstat(self.fd).st_size
            while pending:
                pending = pending[os.write(self.fd, pending):]
            os.fsync(self.fd)
        except OSError as exc:
            if size is not None:
                with contextlib.suppress(OSError):  # if even this fails, readers skip the torn line
                    os.ftruncate(self.fd, size)
            self.side_path.failed(exc)
        else:
            self.unwritten.clear()
            self.side_path.succeeded()


class NodeHeartbeat:
    """Each node's first process overwrites LOGDIR/heartbeats/node-<i>.json, so an orchestrator reading the
    shared storage sees which machine stopped making progress, not only that the run did. A beat that cannot be
    written is reported; the next one tries again (the orchestrator judges a node hung only after minutes)."""

    def __init__(self, logdir: Path, node_rank: int, enabled: bool, seconds: float):
        self.path = logdir / "heartbeats" / f"node-{node_rank}.json"
        self.node_rank, self.enabled, self.seconds, self.last = node_rank, enabled, seconds, 0.0
        self.side_path = SidePath(f"writing the heartbeat {self.path}", log)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def beat(self, force: bool = False, **fields) -> None:
        if not self.enabled or (not force and time.monotonic() - self.last < self.seconds):
            return
        self.last = time.monotonic()
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"node": self.node_rank, "host": socket.gethostname(), "time": time.time(),
                                       **fields}))
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self.side_path.failed(exc)
        else:
            self.side_path.succeeded()

