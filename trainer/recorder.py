"""Where the numbers go: TensorBoard events with the seed's tags, wandb when WANDB_API_KEY is set, and
metrics.jsonl (a record per epoch plus heartbeats), the file an orchestrator reads from shared storage."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)
WANDB_PROJECT = "imagenet18"
METRICS_FILE = "metrics.jsonl"


class Recorder:
    """Rank 0 records; other ranks hold a Recorder that does nothing, so the loops need no rank checks."""

    def __init__(self, logdir: Path, run_name: str, config: dict, enabled: bool,
                 heartbeat_seconds: float = 30.0):
        self.enabled, self.heartbeat_seconds, self.last_heartbeat = enabled, heartbeat_seconds, 0.0
        self.tensorboard = self.wandb_run = self.metrics = None
        if not enabled:
            return
        logdir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(log_dir=str(logdir))
        self.metrics = open(logdir / METRICS_FILE, "a", encoding="utf-8")
        if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "offline":
            self.wandb_run = _start_wandb(logdir, run_name, config)
            self.record("wandb", url=self.wandb_run.url, dir=self.wandb_run.dir)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            self.tensorboard.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def record(self, kind: str, **fields) -> None:
        """One line of metrics.jsonl, flushed at once so a reader on shared storage sees it."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps({"type": kind, "time": time.time(), **fields}) + "\n")
        self.metrics.flush()
        os.fsync(self.metrics.fileno())

    def heartbeat(self, **fields) -> None:
        if self.enabled and time.monotonic() - self.last_heartbeat >= self.heartbeat_seconds:
            self.last_heartbeat = time.monotonic()
            self.record("heartbeat", **fields)

    def close(self) -> None:
        if not self.enabled:
            return
        self.tensorboard.close()
        self.metrics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class NodeHeartbeat:
    """Each node's first process overwrites LOGDIR/heartbeats/node-<i>.json, so an orchestrator reading the
    shared storage sees which machine stopped making progress, not only that the run did."""

    def __init__(self, logdir: Path, node_rank: int, enabled: bool, seconds: float):
        self.path = logdir / "heartbeats" / f"node-{node_rank}.json"
        self.node_rank, self.enabled, self.seconds, self.last = node_rank, enabled, seconds, 0.0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def beat(self, force: bool = False, **fields) -> None:
        if not self.enabled or (not force and time.monotonic() - self.last < self.seconds):
            return
        self.last = time.monotonic()
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"node": self.node_rank, "host": socket.gethostname(), "time": time.time(),
                                   **fields}))
        os.replace(tmp, self.path)


def _start_wandb(logdir: Path, run_name: str, config: dict):
    import wandb  # imported only when used: it costs seconds

    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:64]
    run = wandb.init(project=WANDB_PROJECT, name=run_name, id=run_id, resume="allow", config=config,
                     dir=str(logdir))
    log.info("wandb run: %s", run.url or f"offline, in {run.dir}")
    return run
