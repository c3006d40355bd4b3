"""The backend contract: what the flow asks of a place that runs training (this machine, or AWS).

Plain Python, no Prefect. Identity lives in tags, never in memory: every resource a run creates carries the
run id and an expiry time, so any process (the flow, its hooks, the scheduled cleanup) can find and delete
what a run left, even one that was killed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

POOL_OWNER = "replicas"  # the run id pool replicas (made ahead of runs by `imagenet18 replicate`) are tagged with
POOL_LOCK_S = 3600.0  # a bound on how long the pool's own upkeep holds a replica's lock (a deletion awaits it)


def pool_lock_expiry() -> dt.datetime:
    """When a lock the pool's own upkeep takes (keeping or deleting a replica) is stale: held for moments, one older
    than that was left by a process that died holding it, and would keep the replica from ever being deleted."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=POOL_LOCK_S)


class BackendError(RuntimeError):
    """Something a backend cannot do; the message says what and, where it can, how to fix it."""


class SweepIncomplete(BackendError):
    """A cleanup's sweep that removed what it could (`removed`) but not everything; the next cleanup tries the rest
    again."""

    def __init__(self, message: str, removed: Sequence[Resource] = ()):  # a default: unpickled from the message
        super().__init__(message)
        self.removed = list(removed)


class InputError(ValueError):
    """Bad input found before anything was created or spent."""


@dataclass(frozen=True)
class Resource:
    kind: str  # "replica", "machine", ...
    id: str
    run_id: str
    expires_at: dt.datetime
    details: dict = field(default_factory=dict, compare=False)

    @property
    def expired(self) -> bool:
        return self.expires_at <= dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class ClusterSpec:
    run_id: str
    run_name: str
    machines: int
    instance_type: str
    spot: bool
    expires_at: dt.datetime

    @property
    def hours_left(self) -> float:
        return (self.expires_at - dt.datetime.now(dt.timezone.utc)).total_seconds() / 3600


@dataclass(frozen=True)
class LineItem:
    what: str
    count: int
    hourly_usd: float

    @property
    def total_hourly_usd(self) -> float:
        return self.count * self.hourly_usd


@dataclass(frozen=True)
class Warmup:
    """What a run does before its machines start, and what that costs: AWS's replicas initializing."""
    what: str
    minutes: float
    usd: float


@dataclass(frozen=True)
class CostPlan:
    items: tuple[LineItem, ...]
    hours: float
    warmup: Warmup | None = None

    @property
    def hourly_usd(self) -> float:
        return sum(item.total_hourly_usd for item in self.items)

    @property
    def total_usd(self) -> float:
        return self.hourly_usd * self.hours + (self.warmup.usd if self.warmup else 0.0)


@dataclass(frozen=True)
class Devices:
    """What each machine trains on: `per_machine` GPUs of `gpu_model`, or (gpu_model None) one CPU process."""
    gpu_model: str | None
    per_machine: int


@dataclass(frozen=True)
class Machine:
    index: int
    id: str
    address: str
    data_root: str  # where this machine's dataset replica is mounted


@dataclass(frozen=True)
class Cluster:
    spec: ClusterSpec
    machines: tuple[Machine, ...]
    storage: str  # where the orchestrator reads the run's logs, metrics and events (a folder or s3:// URL)
    gpus_per_machine: int
    connect: str  # how a person reaches machine 0
    node_storage: str  # the same run folder as the machines see it (the seed's EFS run directory)
    python: str  # the machines' Python, with the project installed


@dataclass(frozen=True)
class JobStatus:
    running: int
    succeeded: int
    failed: dict[int, int]  # machine index -> exit code
    causes: dict[int, str] = field(default_factory=dict)  # machine index -> why it failed, where the backend knows

    @property
    def done(self) -> bool:
        return self.running == 0


@dataclass(frozen=True)
class RunsFolder:
    """Where a backend's runs are stored (a folder or fsspec URL), and the environment a reader of it needs."""
    url: str
    env: dict[str, str] | None = None


class RemoteTensorBoard(Protocol):
    """TensorBoard on a running run's machine 0, over the run's folder there, reached through a port forward."""
    logdir: str  # what it serves, as the user is told

    def start(self, remote_port: int) -> None: ...

    def ended(self) -> str | None:
        """None while it serves; else how it ended."""

    def stop(self) -> None: ...

    def forward(self, local_port: int, remote_port: int) -> tuple[list[str], str | None]:
        """The command that forwards 127.0.0.1:<local_port> here to it, and what to install first where this
        machine lacks the command's tools (None where nothing is missing)."""


class Backend(Protocol):
    """A place that runs training. What differs between places is here, so that no stage, report or flow asks
    which backend it has: backends register by name in tasks/backends/__init__.py."""
    name: str
    poll_seconds: float  # how often the train stage asks for status, logs and metrics
    default_instance_type: str
    default_machines: int  # the CLI's default

    @classmethod
    def default_dataset(cls) -> str:
        """The dataset a run without one trains on."""

    @classmethod
    def dataset_location(cls, dataset: str) -> str:
        """The dataset as this backend names it to every stage, from the user's words; InputError for words that
        name none it could use."""

    @classmethod
    def default_schedule(cls, machines: int, dataset_given: bool) -> str:
        """The schedule a run without one follows."""

    @classmethod
    def schedule_location(cls, schedule: str) -> str:
        """The schedule as the machines' trainer finds it, from the user's words (a built-in's name, or a file);
        InputError for a file the machines cannot read."""

    @staticmethod
    def retry_may_pass(error: BaseException) -> bool:
        """False for this backend's errors that a stage's retry would meet again (a permission refused)."""

    def ensure_default_dataset(self) -> None:
        """Make the default dataset where it is made on first use; a no-op where it must already exist."""

    def train_images(self, dataset: str) -> int:
        """Images an epoch of `dataset` trains, for the plan's estimates."""

    def describe(self, spec: ClusterSpec) -> str:
        """The run's machines in a few words, for its plan."""

    def rendezvous_port(self) -> int:
        """The port machine 0 offers torchrun's rendezvous on."""

    def node_flags(self, machines: int) -> list[str]:
        """Trainer flags each node process gets on this backend (for example its share of this machine's CPUs)."""

    def tensorboard_options(self) -> list[str]:
        """The `imagenet18 tensorboard` options that find this backend's runs (empty for the defaults)."""

    def runs_folder(self, logdir: str | None = None) -> RunsFolder:
        """Where this backend's runs are stored (`logdir` where the user gives one), for TensorBoard; InputError
        when there are none yet."""

    def running_heads(self) -> tuple[str, dict[str, RemoteTensorBoard]]:
        """Machine 0 of every run that is up, by the run's folder name, and where they were looked for (for an
        error that lists them); InputError where the backend's runs have no machine to serve from."""

    def check_replicas(self, dataset: str) -> None:
        """Raise InputError for replicas of `dataset` this backend cannot make (no such folder or snapshot, disk
        settings the cloud refuses)."""

    def check(self, spec: ClusterSpec, dataset: str, reads: Sequence[str] = ("",)) -> None:
        """Raise InputError for anything that would fail later; creates nothing. `reads` are the dataset's folders
        the schedule reads: "" (full size) and resized copies ("-sz/160"), which must exist or be makeable."""

    def plan(self, spec: ClusterSpec, dataset: str, hours: float) -> CostPlan: ...

    def devices(self, spec: ClusterSpec) -> Devices: ...

    def prepare_dataset(self, spec: ClusterSpec, dataset: str, reads: Sequence[str],
                        progress: Callable[[int, int], None] | None = None) -> object | None:
        """Make the resized copies in `reads` that the dataset lacks, or that are older than their source, once per
        dataset (a second call makes none); returns a report to log, or None where there is nothing to make.
        `progress(done, to_do)` is called as images are made."""

    def replicate(self, spec: ClusterSpec, dataset: str, count: int, pool: bool = False) -> list[Resource]:
        """`count` replicas of the dataset, tagged with the run, replica i for machine i; replicas that exist are
        reused. A run first claims pool replicas of the same dataset (a claim two runs cannot both win), and
        makes only the rest; its teardown gives them back to the pool (`details["pool_index"]` marks them).
        Pool replicas (`pool=True`, made ahead of runs) outlive the process that made them, until their expiry."""

    def delete_replicas(self, run_id: str) -> list[Resource]:
        """Delete the run's own replicas and give back those it claimed. For POOL_OWNER, the pool's: those a
        run holds are deleted when it gives them back."""

    def authorize_launch(self, spec: ClusterSpec) -> None:
        """What `check` cannot ask before the run has its own identity: make it (free, removed by teardown, found
        by `prepare`) and ask whether the machines may be launched with it. InputError when not; the flow asks
        before the replicas, so a refusal costs nothing. A no-op where machines need no identity."""

    def prepare(self, spec: ClusterSpec) -> object:
        """What the machines need besides their replicas (locally the run's folder; on AWS its network, file
        system, role and code too), reused where it exists, so safe to retry; the flow makes it while the
        replicas are made."""

    def provision(self, spec: ClusterSpec, replicas: list[Resource], prepared: object | None = None) -> Cluster:
        """Machines, replica i attached to machine i, from what `prepare` returned (prepared here when None)."""

    def cluster(self, run_id: str) -> Cluster:
        """The run's cluster rebuilt from what its tags and records say, so a process that did not make it can
        follow it (launch, status, stop, read_storage); BackendError when the run has no machine."""

    def launch(self, cluster: Cluster, commands: dict[int, list[str]], name: str) -> None:
        """Start `commands[i]` on machine i; its output goes to storage/logs/<name>-<i>.log."""

    def status(self, cluster: Cluster, name: str) -> JobStatus: ...

    def stop(self, cluster: Cluster, name: str) -> None:
        """Stop what is left of job `name` on the machines that are still there, and wait until it is gone."""

    def read_storage(self, cluster: Cluster, relative_path: str, offset: int = 0) -> bytes:
        """Bytes of a file in the run's storage from `offset` on (b"" when it does not exist yet)."""

    def resources(self, run_id: str | None = None) -> list[Resource]: ...

    def teardown(self, run_id: str) -> list[Resource]:
        """Delete every resource tagged with the run and verify each is gone; safe to repeat."""

    def sweep(self, finished: Callable[[str], bool]) -> list[Resource]:
        """Tear down every run that has finished (as `finished` says), was abandoned, or expired."""
