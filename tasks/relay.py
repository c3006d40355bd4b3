"""What the machines write, brought to the flow run's log while they train: the trainer's records
(metrics.jsonl) and the machines' console logs (logs/<job>-<i>.log), read from the run's storage by offset.

Reading them is a side path: a read that fails (storage unreachable for a while) is reported and tried again
after a pause from where the last one ended, so the flow's log catches up; training never waits on it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from tasks.backends.base import Backend, Cluster
from trainer.console import WARNING_PREFIX
from trainer.records import METRICS_FILE, EndRecord, EpochRecord, Record, RecordError, TargetRecord, WandbRecord, \
    read_record
from trainer.side_path import SidePath

# torchrun and Python's own ways of saying something went wrong; "[rank1]: " prefixes are kept
ERROR_LINE = re.compile(r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b|\bFAILED\b|\bKilled\b|"
                        r"\bSignal \d+|exitcode\s*:\s*-?[1-9]")
TRACEBACK_FRAME = re.compile(r"^(\[rank\d+\]:\s?)?(\s|Traceback)")
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
# The lines after a C++ message of torch's (c10's "[W1206 09:05:20.05 TCPStore.cpp:138] ..."): its stack, which the
# message's own line says enough about, never an error of its own.
CPP_STACK = re.compile(r"^(Exception raised from \S+ at \S+ \(most recent call first\):|frame #\d+: |"
                       r"<omitting python frames>$)")
LAUNCHER_FAILURE = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
# torchrun's agents meet at an exit barrier in node 0's store once their workers end; node 0's agent may exit (and
# close the store) while another agent still reads the barrier's last key, which that agent logs as an error with a
# traceback, each line under the same log prefix. The workers had ended: their exit codes say how the job went.
EXIT_BARRIER = re.compile(r"^(\[rank\d+\]:\s?)?(?P<prefix>[EW]\d{4} [\d:.]+ \d+ \S+:\d+\] )"
                          r"Error waiting on exit barrier")


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
        self.epochs: list[EpochRecord] = []  # in the order they were written; a resumed epoch appears twice
        self.wandb: WandbRecord | None = None

    def poll(self, backend: Backend, cluster: Cluster, logger: logging.Logger) -> list[EpochRecord]:
        """New epoch records since the last poll, after logging what else is news."""
        lines, size = _complete_lines(backend.read_storage(cluster, METRICS_FILE, self.offset))
        self.offset += size
        new_epochs = []
        for record in self._records(lines, logger):
            if isinstance(record, EpochRecord):
                new_epochs.append(record)
            elif isinstance(record, TargetRecord):
                logger.info("reached %s %.3f >= %.1f at epoch %d after %.5f hours", record.metric, record.value,
                            record.target, record.epoch, record.hours)
            elif isinstance(record, WandbRecord):
                self.wandb = record
                _log_wandb(record, logger)
            elif isinstance(record, EndRecord) and record.status == "failed":
                logger.error("the trainer failed: %s", record.error)
        self.epochs += new_epochs
        return new_epochs

    @staticmethod
    def _records(lines: list[str], logger: logging.Logger) -> Iterator[Record]:
        for line in lines:
            try:
                yield read_record(line)
            except RecordError as exc:  # a line torn by a node killed mid-write, or a trainer of another version
                logger.warning("skipping a metrics line: %s", exc)


def _log_wandb(wandb: WandbRecord, logger: logging.Logger) -> None:
    if not wandb.reason:
        logger.info("wandb run: %s", wandb.url or f"offline, in {wandb.dir}")
    elif wandb.status == "offline":
        logger.warning("wandb on machine 0: %s; the run goes on with wandb offline, in %s (`wandb sync` uploads it "
                       "later)", wandb.reason, wandb.dir)
    else:
        logger.warning("wandb on machine 0: %s; wandb is off for the rest of the run (what it wrote: %s)",
                       wandb.reason, wandb.dir)


class MachineLogs:
    """Machine 0's console (the seed's lines) at INFO, every machine's warnings at WARNING and its error lines and
    tracebacks at ERROR, prefixed with the machine, as each poll finds them in job `job`'s logs."""

    def __init__(self, job: str, machines: int) -> None:
        self.job = job
        self.offsets = dict.fromkeys(range(machines), 0)
        self.in_traceback = dict.fromkeys(range(machines), False)
        self.exit_barrier: dict[int, str | None] = dict.fromkeys(range(machines))  # that record's log prefix

    def poll(self, backend: Backend, cluster: Cluster, logger: logging.Logger) -> None:
        for index in self.offsets:
            chunk = backend.read_storage(cluster, f"logs/{self.job}-{index}.log", self.offsets[index])
            lines, size = _complete_lines(chunk)
            self.offsets[index] += size
            for line in lines:
                if self._after_the_exit_barrier(index, line, logger) or CPP_STACK.match(RANK_PREFIX.sub("", line)):
                    continue
                if line.startswith(WARNING_PREFIX):
                    logger.warning("machine %d | %s", index, line)
                elif self._is_error(index, line):
                    logger.error("machine %d | %s", index, line)
                elif index == 0 and line.strip():
                    logger.info("machine 0 | %s", line)

    def _after_the_exit_barrier(self, index: int, line: str, logger: logging.Logger) -> bool:
        """torchrun's exit-barrier record (see EXIT_BARRIER): one warning line for the whole record."""
        prefix = self.exit_barrier[index]
        if prefix is not None and RANK_PREFIX.sub("", line).startswith(prefix):
            return True
        found = EXIT_BARRIER.match(line)
        self.exit_barrier[index] = found["prefix"] if found else None
        if found:
            logger.warning("machine %d | torchrun: the exit barrier's store closed as this agent left it (node 0's "
                           "agent had gone); the workers had ended, their exit codes say how the job went", index)
        return bool(found)

    def _is_error(self, index: int, line: str) -> bool:
        """Error lines, and a traceback's frames up to and including its exception line."""
        if self.in_traceback[index]:
            self.in_traceback[index] = bool(TRACEBACK_FRAME.match(line))
            return True
        if "Traceback (most recent call last)" in line:
            self.in_traceback[index] = True
        return bool(ERROR_LINE.search(line))


class Relay:
    """Machine logs and metrics records of job `job`, read as a side path (see the module's docstring)."""

    def __init__(self, job: str, machines: int, metrics: MetricsRelay, logger: logging.Logger) -> None:
        self.machine_logs, self.metrics, self.logger = MachineLogs(job, machines), metrics, logger
        self.side_path = SidePath("reading the machines' logs and metrics from the run's storage", logger)

    def poll(self, backend: Backend, cluster: Cluster, force: bool = False) -> list[EpochRecord]:
        """New epoch records since the last poll that read them; none while reading fails or waits to be retried.
        `force`: read now, whatever the pause (the run ended: what was missed is caught up now or never)."""
        if not (force or self.side_path.due()):
            return []
        try:
            self.machine_logs.poll(backend, cluster, self.logger)
            new_epochs = self.metrics.poll(backend, cluster, self.logger)
        except Exception as exc:  # noqa: BLE001 - any storage error (OSError, botocore's, s3fs's) means "not now"
            self.side_path.failed(exc)
            return []
        self.side_path.succeeded()
        return new_epochs

    def heartbeats(self, backend: Backend, cluster: Cluster) -> dict[int, bytes]:
        """Each machine's heartbeat file as it is now; none while the storage cannot be read."""
        if not self.side_path.due():
            return {}
        try:
            return {m.index: backend.read_storage(cluster, f"heartbeats/node-{m.index}.json") for m in cluster.machines}
        except Exception as exc:  # noqa: BLE001 - see poll
            self.side_path.failed(exc)
            return {}
