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
from trainer.records import METRICS_FILE, HeartbeatRecord, Record, WandbRecord
from trainer.side_path import SidePath

log = logging.getLogger(__name__)


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
            self.wandb = wandb_run.WandbRun(logdir, run_name, config,
                                            report=lambda **state: self.record(WandbRecord(**state)))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        self.tensorboard.scalars(values, step)
        if self.wandb is not None:
            self.wandb.log(values, step)

    def record(self, record: Record) -> None:
        """One line of metrics.jsonl, on disk at once so a reader on shared storage sees it."""
        if self.enabled:
            self.metrics.append(record.line())

    def heartbeat(self, epoch: int, batch: int, batches: int) -> None:
        if self.enabled and time.monotonic() - self.last_heartbeat >= self.heartbeat_seconds:
            self.last_heartbeat = time.monotonic()
            self.record(HeartbeatRecord(epoch=epoch, batch=batch, batches=batches))

    def close(self) -> None:
        if not self.enabled:
            return
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.metrics.close()


class Backlog:
    """What a side path has not written yet: kept, written whole when a try is due, and tried once more at close.
    A subclass writes a list of items, or raises OSError having undone what it could of a partial write."""

    def __init__(self, what: str, clock: Callable[[], float]):
        self.what = what
        self.unwritten: list = []
        self.side_path = SidePath(f"writing {what}", log, clock)

    def add(self, items: list) -> None:
        self.unwritten += items
        if self.side_path.due():
            self.flush()

    def flush(self) -> None:
        try:
            self._write(self.unwritten)
        except OSError as exc:
            self.side_path.failed(exc)
        else:
            self.unwritten.clear()
            self.side_path.succeeded()

    def close(self) -> None:
        if self.unwritten:
            self.flush()
        if self.unwritten:
            log.warning("%d item(s) were never written: %s", len(self.unwritten), self.what)

    def _write(self, items: list) -> None:
        raise NotImplementedError


class TensorBoardEvents(Backlog):
    """The scalars as TensorBoard events in `logdir`. A writer that failed once (a full disk, an I/O error) fails
    for good, so the next try starts a new one (a new events file) and writes every value not yet flushed."""

    def __init__(self, logdir: Path, clock: Callable[[], float] = time.monotonic):
        super().__init__(f"TensorBoard events in {logdir}", clock)
        self.logdir = logdir
        self.writer: SummaryWriter | None = None
        self.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = time.time()
        self.add([(tag, value, step, now) for tag, value in values.items()])

    def close(self) -> None:
        super().close()
        self._close_writer()

    def _write(self, items: list[tuple[str, float, int, float]]) -> None:
        try:
            if self.writer is None:
                self.writer = SummaryWriter(log_dir=str(self.logdir))
            for tag, value, step, walltime in items:
                self.writer.add_scalar(tag, value, step, walltime=walltime)
            self.writer.flush()  # the writer's thread writes; its failure shows here, while the values are kept
        except OSError:
            self._close_writer()
            raise

    def _close_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(OSError):  # a failed writer raises its error again; its values are kept
                writer.close()


class JsonLines(Backlog):
    """Records appended to a file that a reader on shared storage follows, each on disk before `append` returns.
    An append that fails (a full disk) is cut off again, so no torn line is left, and tried again with the next."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        super().__init__(f"records to {path}", clock)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, line: str) -> None:
        self.add([line.encode()])

    def close(self) -> None:
        super().close()
        os.close(self.fd)

    def _write(self, items: list[bytes]) -> None:
        pending, size = memoryview(b"".join(items)), os.fstat(self.fd).st_size
        try:
            while pending:
                pending = pending[os.write(self.fd, pending):]
            os.fsync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):  # if even this fails, readers skip the torn line
                os.ftruncate(self.fd, size)
            raise


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

