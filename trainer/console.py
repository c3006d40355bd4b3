"""What a user reads: the seed's console lines, and the verbose/event/debug log files on rank 0."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("trainer")
EVENT = {"event": True}  # `log.info(msg, extra=EVENT)` also goes to event.log
WARNING_PREFIX = "warning: "


class Meter:
    """Latest value and running average, printed as the seed did: `v (avg)`."""

    def __init__(self) -> None:
        self.value, self.total, self.count = 0.0, 0.0, 0

    def update(self, value: float, count: int = 1) -> None:
        self.value = value
        self.total += value * count
        self.count += count

    @property
    def avg(self) -> float:
        return self.total / max(self.count, 1)


class NetworkMeter:
    """Gbit/s received and sent since the last reading, from /proc/net/dev, loopback excluded."""

    def __init__(self) -> None:
        self.last = self._read(), time.perf_counter()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            lines = Path("/proc/net/dev").read_text().splitlines()[2:]
        except OSError:
            return 0, 0
        recv = sent = 0
        for line in lines:
            name, fields = line.split(":", 1)
            if name.strip() != "lo":
                values = fields.split()
                recv, sent = recv + int(values[0]), sent + int(values[8])
        return recv, sent

    def gbits(self) -> tuple[float, float]:
        (recv0, sent0), t0 = self.last
        now = self._read(), time.perf_counter()
        (recv1, sent1), t1 = now
        self.last = now
        seconds = max(t1 - t0, 1e-9)
        return (recv1 - recv0) * 8 / 1e9 / seconds, (sent1 - sent0) * 8 / 1e9 / seconds


def train_line(epoch: int, batch: int, batches: int, batch_time: Meter, loss: Meter, top1: Meter,
               top5: Meter, data_time: Meter, bandwidth: tuple[float, float]) -> str:
    return (f"Epoch: [{epoch}][{batch}/{batches}]\t"
            f"Time {batch_time.value:.3f} ({batch_time.avg:.3f})\t"
            f"Loss {loss.value:.4f} ({loss.avg:.4f})\t"
            f"Acc@1 {top1.value:.3f} ({top1.avg:.3f})\t"
            f"Acc@5 {top5.value:.3f} ({top5.avg:.3f})\t"
            f"Data {data_time.value:.3f} ({data_time.avg:.3f})\t"
            f"BW {bandwidth[0]:.3f} {bandwidth[1]:.3f}")


def test_line(epoch: int, batch: int, batches: int, batch_time: Meter, loss: Meter, top1: Meter,
              top5: Meter) -> str:
    return (f"Test:  [{epoch}][{batch}/{batches}]\t"
            f"Time {batch_time.value:.3f} ({batch_time.avg:.3f})\t"
            f"Loss {loss.value:.4f} ({loss.avg:.4f})\t"
            f"Acc@1 {top1.value:.3f} ({top1.avg:.3f})\t"
            f"Acc@5 {top5.value:.3f} ({top5.avg:.3f})")


EPOCH_HEADER = "~~epoch\thours\ttop1\ttop5"


def epoch_line(epoch: int, hours: float, top1: float, top5: float) -> str:
    return f"~~{epoch}\t{hours:.5f}\t\t{top1:.3f}\t\t{top5:.3f}"


def dataset_changed_lines(size: int, batch_size: int, train_dir: Path, val_dir: Path) -> list[str]:
    return ["Dataset changed.", f"Image size: {size}", f"Batch size: {batch_size}",
            f"Train Directory: {train_dir}", f"Validation Directory: {val_dir}"]


class _Plain(logging.Formatter):
    """The message as the seed printed it; a warning says so, to a reader and to the orchestrator's relay."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{WARNING_PREFIX}{message}" if record.levelno >= logging.WARNING else message


class _EventsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", False)


def setup(logdir: Path | None, is_master: bool, verbose: bool = False) -> None:
    """Rank 0 prints and writes verbose.log, event.log and debug.log; other ranks print only warnings."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.DEBUG)
    plain = _Plain("%(message)s")
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.DEBUG if verbose else logging.INFO if is_master else logging.WARNING)
    console.setFormatter(plain)
    log.addHandler(console)
    if not (is_master and logdir):
        return
    logdir.mkdir(parents=True, exist_ok=True)
    stamped = logging.Formatter("%(asctime)s %(message)s")
    for name, level, formatter, only_events in (("verbose.log", logging.INFO, plain, False),
                                               ("event.log", logging.INFO, stamped, True),
                                               ("debug.log", logging.DEBUG, stamped, False)):
        handler = logging.FileHandler(logdir / name)
        handler.setLevel(level)
        handler.setFormatter(formatter)
        if only_events:
            handler.addFilter(_EventsOnly())
        log.addHandler(handler)
