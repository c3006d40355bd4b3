"""What the machines write, brought to the flow run's log while they train: the trainer's records
(metrics.jsonl) and the machines' console logs (logs/<job>-<i>.log), read from the run's storage by offset."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

from tasks.backends.base import Backend, Cluster

# torchrun and Python's own ways of saying something went wrong; "[rank1]: " prefixes are kept
ERROR_LINE = re.compile(r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b|\bFAILED\b|\bKilled\b|"
                        r"\bSignal \d+|exitcode\s*:\s*-?[1-9]")
TRACEBACK_FRAME = re.compile(r"^(\[rank\d+\]:\s?)?(\s|Traceback)")
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
LAUNCHER_FAILURE = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"


def trainer_error(log: str) -> str | None:
    """The cause of a failed node in one line: the trainer's own `error: ...` line (a refusal it explains), else the
    exception line that ended the trainer's traceback; never torchrun's report that its child failed."""
    lines = [RANK_PREFIX.sub("", line) for line in log.splitlines()]
    own = next((line for line in lines if line.startswith("error: ")), None)
    if own:
        return own
    exceptions, in_traceback = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            in_traceback = False
            if not line.startswith(LAUNCHER_FAILURE):
                exceptions.append(line)
    return exceptions[-1] if exceptions else None


def _complete_lines(chunk: bytes) -> tuple[list[str], int]:
    """The whole lines in `chunk` and how many bytes they take; a line still being written waits."""
    complete = chunk[:chunk.rfind(b"\n") + 1]
    return complete.decode(errors="replace").splitlines(), len(complete)


class MetricsRelay:
    """Follows metrics.jsonl: keeps the epoch records, says when a target is reached or the trainer failed."""

    def __init__(self) -> None:
        self.offset = 0
        self.epochs: list[dict] = []  # in the order they were written; a resumed epoch appears twice
        self.wandb: dict | None = None

    def poll(self, backend: Backend, cluster: Cluster, logger: logging.Logger) -> list[dict]:
        """New epoch records since the last poll, after logging what else is news."""
        lines, size = _complete_lines(backend.read_storage(cluster, "metrics.jsonl", self.offset))
        self.offset += size
        new_epochs = []
        for record in self._records(lines, logger):
            if record["type"] == "epoch":
                new_epochs.append(record)
            elif record["type"] == "target":
                logger.info("reached %s %.3f >= %.1f at epoch %d after %.5f hours", record["metric"],
                            record["value"], record["target"], record["epoch"], record["hours"])
            elif record["type"] == "wandb":
                self.wandb = {"url": record.get("url"), "dir": record.get("dir")}
                logger.info("wandb run: %s", record.get("url") or f"offline, in {record.get('dir')}")
            elif record["type"] == "end" and record.get("status") == "failed":
                logger.error("the trainer failed: %s", record.get("error"))
        self.epochs += new_epochs
        return new_epochs

    @staticmethod
    def _records(lines: list[str], logger: logging.Logger) -> Iterator[dict]:
        for line in lines:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line torn by a node killed mid-write
                logger.warning("skipping an unreadable metrics line: %.200s", line)


class MachineLogs:
    """Machine 0's console (the seed's lines) at INFO, and every machine's error lines and tracebacks at ERROR,
    prefixed with the machine, as each poll finds them in job `job`'s logs."""

    def __init__(self, job: str, machines: int) -> None:
        self.job = job
        self.offsets = dict.fromkeys(range(machines), 0)
        self.in_traceback = dict.fromkeys(range(machines), False)

    def poll(self, backend: Backend, cluster: Cluster, logger: logging.Logger) -> None:
        for index in self.offsets:
            chunk = backend.read_storage(cluster, f"logs/{self.job}-{index}.log", self.offsets[index])
            lines, size = _complete_lines(chunk)
            self.offsets[index] += size
            for line in lines:
                if self._is_error(index, line):
                    logger.error("machine %d | %s", index, line)
                elif index == 0 and line.strip():
                    logger.info("machine 0 | %s", line)

    def _is_error(self, index: int, line: str) -> bool:
        """Error lines, and a traceback's frames up to and including its exception line."""
        if self.in_traceback[index]:
            self.in_traceback[index] = bool(TRACEBACK_FRAME.match(line))
            return True
        if "Traceback (most recent call last)" in line:
            self.in_traceback[index] = True
        return bool(ERROR_LINE.search(line))
