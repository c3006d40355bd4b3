"""The local backend: the whole DAG on one machine.

Replicas are folders of links to the dataset (hard links where the filesystem allows), machines are torchrun node
processes on 127.0.0.1, the run's shared storage is a folder. Tags work as on AWS: every replica and machine has
a record (run id, expiry) in the registry, written *before* the thing it describes exists, and every process
carries the run id and the backend's home in its environment, so teardown finds processes (and their children) by
tag even when no record of them survived, and never touches another home's processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.backends.base import (POOL_OWNER, BackendError, Cluster, ClusterSpec, CostPlan, Devices, InputError,
                                 JobStatus, LineItem, Machine, Resource, RunsFolder, pool_lock_expiry)
from tasks.backends.demo import demo_dataset_root, ensure_demo_dataset
from tasks.backends.home import default_home
from tasks.backends.sweeps import Sweep
from trainer.layout import SPLITS, DataError, check_source
from trainer.prepare import PrepareReport, prepare, size_of, unreadable_classes
from trainer.schedule import names_a_file
from trainer.written import naming

log = logging.getLogger(__name__)

RUN_ENV = "IMAGENET18_RUN"
HOME_ENV = "IMAGENET18_LOCAL_HOME"
JOB_ENV = "IMAGENET18_JOB"
EXPIRES_ENV = "IMAGENET18_EXPIRES"
EXIT_FILE_ENV = "IMAGENET18_EXIT_FILE"
INSTANCE_TYPE = "local"
STOP_GRACE_SECONDS = 10.0
POOL_PATIENCE_S = 30.0  # how long a run waits on the replica pool's other users before doing without it
# Runs the command, then leaves its exit code where status() reads it, even after the flow process is gone.
EXIT_CODE_WRAPPER = '"$@"; code=$?; echo $code > "$IMAGENET18_EXIT_FILE"; exit $code'


class LocalBackend:
    name = "local"
    poll_seconds = 0.5  # reading local files: polling often costs little and ends the stage sooner
    default_instance_type = INSTANCE_TYPE
    default_machines = 2

    def __init__(self, home: Path | None = None, gpus: LocalGpus | None = None):
        self.home = home or default_home()
        self.registry = self.home / "local" / "registry"
        self.replica_root = self.home / "local" / "replicas"
        self.claims = self.home / "local" / "claims"  # one file per pool replica a run holds
        self.runs = self.home / "runs"
        self._home_tag = str(self.home.resolve())
        self.gpus = gpus or LocalGpus.visible()

    # -- defaults and what a run's stages and reports ask ---------------------------------------------
    @classmethod
    def default_dataset(cls) -> str:
        return str(demo_dataset_root())

    @classmethod
    def schedule_location(cls, schedule: str) -> str:
        """A file as its absolute path: the machines' processes start in their own folders."""
        return str(Path(schedule).expanduser().resolve()) if names_a_file(schedule) else schedule

    @classmethod
    def dataset_location(cls, dataset: str) -> str:
        """A folder as its absolute path, links resolved (`~/flowers`, `.`, a link to /mnt/ds/flowers102): the
        resized copies are made beside the folder itself (ROOT-sz), where its replicas look for them."""
        if "://" in dataset.removeprefix("file://"):  # refused before anything reads it (the auto schedule)
            raise InputError(f"the local backend replicates a local folder, not {dataset}")
        return str(Path(dataset.removeprefix("file://")).expanduser().resolve())

    @classmethod
    def default_schedule(cls, machines: int, dataset_given: bool) -> str:
        return "auto" if dataset_given else "cpu-demo"

    @staticmethod
    def retry_may_pass(error: BaseException) -> bool:
        return True  # a full disk or a killed process may be gone on the next try

    def ensure_default_dataset(self) -> None:
        ensure_demo_dataset()

    def train_images(self, dataset: str) -> int:
        return len(check_source(Path(dataset.removeprefix("file://")))[SPLITS[0]].samples)

    def describe(self, spec: ClusterSpec) -> str:
        return f"{spec.machines} local machine(s): torchrun node processes on this machine"

    def rendezvous_port(self) -> int:
        """A free one: runs on this machine must not meet each other's rendezvous."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def node_flags(self, machines: int) -> list[str]:
        """Each node process's share of this machine's CPUs, so that N nodes don't each start a thread per CPU."""
        return ["--threads", str(max(1, len(os.sched_getaffinity(0)) // machines))]

    def tensorboard_options(self) -> list[str]:
        return []

    def runs_folder(self, logdir: str | None = None) -> RunsFolder:
        if logdir:
            return RunsFolder(logdir)
        if not self.runs.is_dir():
            raise InputError(f"no runs yet in {self.runs}: `imagenet18 demo` makes one")
        return RunsFolder(str(self.runs))

    def running_heads(self) -> tuple[str, dict]:
        raise InputError("--via head serves TensorBoard on an AWS run's machine 0: add --backend aws")

    # -- validate and plan ----------------------------------------------------------------------------
    def check(self, spec: ClusterSpec, dataset: str, reads: Sequence[str] = ("",)) -> None:
        if spec.instance_type != INSTANCE_TYPE:
            raise InputError(f"the local backend runs on instance type {INSTANCE_TYPE!r}, not "
                             f"{spec.instance_type!r}")
        if spec.spot:
            raise InputError("--spot needs a cloud backend: the local backend has no spot market")
        self.check_replicas(dataset)
        root = Path(dataset.removeprefix("file://"))
        for trndir in filter(None, reads):
            _check_makeable(Path(f"{root}{trndir}"))
        if self.resources(spec.run_id):
            raise InputError(f"run {spec.run_id} already has resources here; use another run id, or "
                             f"`imagenet18 cleanup` to remove them")

    def check_replicas(self, dataset: str) -> None:
        if "://" in dataset.removeprefix("file://"):
            raise InputError(f"the local backend replicates a local folder, not {dataset}")
        try:
            check_source(Path(dataset.removeprefix("file://")))
        except DataError as exc:
            raise InputError(str(exc)) from None

    def plan(self, spec: ClusterSpec, dataset: str, hours: float) -> CostPlan:
        return CostPlan((LineItem(f"torchrun node process on this machine ({self.gpus.describe(spec.machines)})",
                                  spec.machines, 0.0),
                         LineItem("dataset replica (links)", spec.machines, 0.0)), hours)

    def devices(self, spec: ClusterSpec) -> Devices:
        share = self.gpus.per_machine(spec.machines)
        return Devices(self.gpus.model or "unnamed", share) if share else Devices(None, 1)  # no driver file: unnamed

    # -- dataset --------------------------------------------------------------------------------------
    def prepare_dataset(self, spec: ClusterSpec, dataset: str, reads: Sequence[str],
                        progress: Callable[[int, int], None] | None = None) -> PrepareReport | None:
        """The resized copies beside the dataset (ROOT-sz/<px>, the seed's layout), made on all cores; a copy that
        cannot serve the schedule (a class whose every image was unreadable) is refused before any replica, as is
        such a class of the full-size dataset when the schedule reads only that."""
        root = Path(dataset.removeprefix("file://"))
        sizes = [size_of(trndir) for trndir in reads if trndir]
        if not sizes:
            if unreadable := unreadable_classes(root):
                more = f" (nor have {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
                raise InputError(f"class folder {unreadable[0]} has no image that can be read{more}: the trainer "
                                 "would fill its places with other classes' images")
            return None
        report = prepare(root, sizes, progress=progress)
        for copy in report.output_roots.values():
            try:
                check_source(copy)
            except DataError as exc:
                raise InputError(f"{exc}: its images in the full-size dataset cannot be read (see the warnings "
                                 "above)") from None
        return report

    # -- replicas -------------------------------------------------------------------------------------
    def replicate(self, spec: ClusterSpec, dataset: str, count: int, pool: bool = False) -> list[Resource]:
        if pool:  # a run's dataset was checked before anything was made
            self.check_replicas(dataset)
        root = Path(dataset.removeprefix("file://")).resolve()
        with self._pool_lock() if pool else contextlib.nullcontext():
            return self._make(spec, root, count, pool)

    def _make(self, spec: ClusterSpec, root: Path, count: int, pool: bool) -> list[Resource]:
        if pool:
            reused = self._keep_pool(spec, root, count)
            new = self._unused_pool_indices(count - len(reused))
        else:
            held = {r.details["index"]: r for r in self.resources(spec.run_id) if r.kind == "replica"}
            with self._pool_lock(shared=True, patience_s=POOL_PATIENCE_S) as free:
                if free:
                    held |= self._claim_pool(spec, root, [i for i in range(count) if i not in held])
                else:
                    log.info("the replica pool here is still being made or deleted: this run makes its own replicas")
            reused = [r for r in held.values() if "pool_index" in r.details]
            new = [i for i in range(count) if i not in held or "pool_index" not in held[i].details]
        reused = [self._filled(root, replica) for replica in reused]  # made ahead: perhaps before the copies read
        with ThreadPoolExecutor(max_workers=min(count, 8)) as workers:
            made = list(workers.map(lambda i: self._replica(spec, root, i, pool), new))
        return sorted([*made, *reused], key=lambda r: r.details["index"])

    def _replica(self, spec: ClusterSpec, root: Path, index: int, pool: bool) -> Resource:
        target = self.replica_root / spec.run_id / f"{index:02d}"
        details = {"path": str(target), "data_root": str(target / root.name), "index": index, "dataset": str(root),
                   "states": {}}
        resource = Resource("replica", f"{spec.run_id}/replica-{index:02d}", spec.run_id, spec.expires_at,
                            details if pool else {**details, **_owner()})
        self._record(resource)
        return self._filled(root, resource)

    def _filled(self, root: Path, replica: Resource) -> Resource:
        """The replica with links to each of the dataset's folders it lacks, and the record of their states."""
        linked = _fill(root, Path(replica.details["path"]))
        if not linked:
            return replica
        filled = dataclasses.replace(replica, details={**replica.details,
                                                       "states": {**replica.details.get("states", {}), **linked}})
        self._record(filled)
        return filled

    @contextlib.contextmanager
    def _pool_lock(self, shared: bool = False, patience_s: float | None = None) -> Iterator[bool]:
        """Making, deleting or sweeping the pool, one at a time (exclusive): two makers would take the same free
        places, and link two datasets into one folder. Runs claim and give back replicas side by side (shared),
        but only while no replica is half made or being deleted. Waits for the others (at most `patience_s`, where
        given); yields whether it holds the lock."""
        lock = self.home / "local" / "pool.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = None if patience_s is None else time.monotonic() + patience_s
        with open(lock, "a") as file:  # the lock goes when the file closes, or the process dies
            try:
                fcntl.flock(file, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for the replica pool: another process here is making, deleting or claiming from it")
                if deadline is None:
                    fcntl.flock(file, mode)
                elif not _flock_by(file, mode, deadline):  # polled: a thread blocked in flock ignores a cancel
                    yield False
                    return
            yield True

    def _pool_of(self, root: Path) -> list[Resource]:
        """The pool's unexpired replicas of the dataset, in their order in the pool."""
        return sorted((r for r in self.resources(POOL_OWNER)
                       if r.kind == "replica" and r.details.get("dataset") == str(root) and not r.expired),
                      key=lambda r: r.details["index"])

    def _keep_pool(self, spec: ClusterSpec, root: Path, count: int) -> list[Resource]:
        """Up to `count` of the pool's replicas of the dataset, each kept until the pool's new expiry where its own
        is sooner. Each is locked meanwhile, as a run claims one: one a run is claiming is the run's."""
        kept = []
        for listed in self._pool_of(root):
            if len(kept) == count:
                break
            if not self._lock(listed.id, POOL_OWNER, pool_lock_expiry()):
                continue
            try:
                replica = self._in_pool_now(listed.id)
                if replica is not None and _stale(root, replica):  # its place made again, with the dataset as it is
                    _remove_tree(replica.details["path"])
                    self._forget(replica)
                elif replica is not None and not replica.expired and replica.details["index"] not in \
                        {r.details["index"] for r in kept}:  # two pool makers at once may take one place
                    kept.append(dataclasses.replace(replica, expires_at=max(replica.expires_at, spec.expires_at)))
                    self._record(kept[-1])
            finally:
                self._unlock(listed.id)
        return kept

    def _in_pool_now(self, replica_id: str) -> Resource | None:
        """A pool replica's record as it is now that it is locked, or None where the pool's no more (deleted, or a
        run's) since it was listed."""
        try:
            return _load(self.registry / POOL_OWNER / _file_name(replica_id))
        except FileNotFoundError:
            return None

    def _unused_pool_indices(self, count: int) -> list[int]:
        """`count` places in the pool after those its replicas (the ones runs hold included) and folders take: a
        pool may hold replicas of several datasets, each in the folder of its place."""
        used = [r.details.get("pool_index", r.details["index"]) for r in self.resources()
                if r.kind == "replica" and (r.run_id == POOL_OWNER or "pool_index" in r.details)]
        used += [int(f.name) for f in (self.replica_root / POOL_OWNER).glob("*") if f.name.isdigit()]
        start = max(used, default=-1) + 1
        return list(range(start, start + count))

    def _claim_pool(self, spec: ClusterSpec, root: Path, indices: list[int]) -> dict[int, Resource]:
        """Pool replicas of this dataset for the run's machines at `indices`. The claim file, created only where
        none exists, is the lock two runs cannot both win; then the replica's record moves to the run."""
        claimed: dict[int, Resource] = {}
        for listed in self._pool_of(root):
            if len(claimed) == len(indices):
                break
            if not self._lock(listed.id, spec.run_id, spec.expires_at):
                continue
            if (replica := self._in_pool_now(listed.id)) is None or replica.expired:
                self._unlock(listed.id)
                continue
            if changed := _stale(root, replica):
                log.info("pool replica %s holds an older %s: not used (`imagenet18 replicate` makes it again)",
                         replica.id, ", ".join(changed))
                self._unlock(listed.id)
                continue
            index = indices[len(claimed)]
            claimed[index] = Resource("replica", replica.id, spec.run_id, spec.expires_at,
                                      {**replica.details, "index": index, "pool_index": replica.details["index"],
                                       "pool_expires": replica.expires_at.isoformat(), **_owner()})
            self._record(claimed[index])
            self._forget(replica)
        return claimed

    def _lock(self, replica_id: str, owner: str, expires_at: dt.datetime) -> bool:
        claim = Resource("claim", replica_id, owner, expires_at)
        path = self.claims / _file_name(replica_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = _write_record(path.with_name(f"{path.name}.{uuid.uuid4().hex}"), claim)  # each locker its own
        try:
            os.link(written, path)  # fails when the replica is claimed: one winner, and never a half-written claim
            return True
        except FileExistsError:
            return False
        finally:
            written.unlink()

    def _unlock(self, replica_id: str) -> None:
        (self.claims / _file_name(replica_id)).unlink(missing_ok=True)

    def _give_back(self, listed: Resource) -> None:
        """The replica's record back in the pool, then the claim. Deleted instead once the pool's time is up, as it
        is now (the pool may have been deleted since the run's teardown listed it), or while the pool is still
        being made or deleted after `POOL_PATIENCE_S` (locally a replica is links, quickly made again)."""
        with self._pool_lock(shared=True, patience_s=POOL_PATIENCE_S) as free:
            try:
                claimed = _load(self.registry / listed.run_id / _file_name(listed.id))
            except FileNotFoundError:
                claimed = listed
            pool_expires = dt.datetime.fromisoformat(claimed.details["pool_expires"])
            if not free:
                log.info("the replica pool here is still being made or deleted: replica %s deleted rather than "
                         "given back", claimed.id)
            if pool_expires <= dt.datetime.now(dt.timezone.utc) or not free:
                _remove_tree(claimed.details["path"])
            else:
                details = {key: value for key, value in claimed.details.items()
                           if key not in ("pool_index", "pool_expires", "owner_pid", "owner_start")}
                self._record(Resource("replica", claimed.id, POOL_OWNER, pool_expires,
                                      {**details, "index": claimed.details["pool_index"]}))
            self._forget(claimed)
            self._unlock(claimed.id)

    def delete_replicas(self, run_id: str) -> list[Resource]:
        if run_id == POOL_OWNER:
            with self._pool_lock():
                return self._delete_pool(expired_only=False)
        removed = []
        for resource in self.resources(run_id):
            if resource.kind != "replica":
                continue
            if "pool_index" in resource.details:
                self._give_back(resource)
            else:
                _remove_tree(resource.details["path"])
                self._forget(resource)
            removed.append(resource)
        return removed

    def _delete_pool(self, expired_only: bool) -> list[Resource]:
        """The pool's replicas (`expired_only`: those whose time is up), but those runs hold, which are marked to
        be deleted when their runs give them back. Each is locked first, as a run claims one: one a run is
        claiming is the run's."""
        removed = []
        if not expired_only:  # first too: one a run holds now may be given back before the pool's are listed
            self._retire_claimed()
        for listed in self.resources(POOL_OWNER):
            if listed.kind != "replica" or (expired_only and not listed.expired):
                continue
            if not self._lock(listed.id, POOL_OWNER, pool_lock_expiry()):
                continue
            try:  # as it is now that it is locked: another process may have kept it longer, or deleted it
                if (replica := self._in_pool_now(listed.id)) is None or (expired_only and not replica.expired):
                    continue
                _remove_tree(replica.details["path"])
                self._forget(replica)
            finally:
                self._unlock(listed.id)
            removed.append(replica)
        if not expired_only:  # and last: one a run claimed meanwhile
            self._retire_claimed()
        return removed

    def _retire_claimed(self) -> None:
        """The pool replicas runs hold now, marked to be deleted, not kept, when their runs give them back."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        for held in self.resources():
            record = self.registry / held.run_id / _file_name(held.id)
            if held.kind == "replica" and "pool_index" in held.details and record.exists():  # not given back
                self._record(dataclasses.replace(held, details={**held.details, "pool_expires": now}))

    def _sweep_pool(self) -> list[Resource]:
        """The pool's expired replicas, each on its own expiry (`imagenet18 replicate` may have added some with a
        later one), after its stale claims (`pool_lock_expiry`); those runs hold stay theirs. A pool still being
        made after `POOL_PATIENCE_S` is left to the next cleanup."""
        with self._pool_lock(patience_s=POOL_PATIENCE_S) as free:
            if not free:
                log.info("the replica pool here is still being made: the next cleanup sweeps it")
                return []
            stale = [r for r in self.resources(POOL_OWNER) if r.kind == "claim" and r.expired]
            for claim in stale:
                self._forget(claim)
            removed = stale + self._delete_pool(expired_only=True)
            if not any(r.kind == "replica" for r in self.resources(POOL_OWNER)):  # nothing a run could be claiming
                self._remove_strays(POOL_OWNER)  # what a try that died half-way left
                _remove_if_empty(self.replica_root / POOL_OWNER)
                _remove_if_empty(self.registry / POOL_OWNER)
        return removed

    # -- machines -------------------------------------------------------------------------------------
    def authorize_launch(self, spec: ClusterSpec) -> None:
        """Nothing to ask: the machines are this machine's processes."""

    def prepare(self, spec: ClusterSpec) -> Path:
        """The run's folder: its logs, metrics, events and checkpoints, kept after teardown."""
        storage = self.runs / f"{spec.run_name}-{spec.run_id[:8]}"  # cluster() finds it by the id's part
        (storage / "logs").mkdir(parents=True, exist_ok=True)
        return storage

    def provision(self, spec: ClusterSpec, replicas: list[Resource], prepared: Path | None = None) -> Cluster:
        if len(replicas) < spec.machines:
            raise InputError(f"{spec.machines} machines need {spec.machines} replicas, there are {len(replicas)}")
        storage = prepared or self.prepare(spec)
        machines = []
        by_index = sorted(replicas, key=lambda r: r.details["index"])
        for index, replica in enumerate(by_index[:spec.machines]):
            machine = Machine(index, f"{spec.run_id}/machine-{index}", "127.0.0.1", replica.details["data_root"])
            self._record(Resource("machine", machine.id, spec.run_id, spec.expires_at,
                                  {"index": index, "data_root": machine.data_root, **_owner()}))
            machines.append(machine)
        return self._cluster(spec, machines, storage)

    def cluster(self, run_id: str) -> Cluster:
        """The run's cluster as its records say, for a process that did not make it."""
        records = sorted((r for r in self.resources(run_id) if r.kind == "machine"), key=lambda r: r.details["index"])
        folders = list(self.runs.glob(f"*-{run_id[:8]}"))
        if not records or len(folders) != 1:
            raise BackendError(f"run {run_id} has no machines here ({self.home})")
        run_name = folders[0].name.removesuffix(f"-{run_id[:8]}")
        spec = ClusterSpec(run_id, run_name, len(records), INSTANCE_TYPE, False, records[0].expires_at)
        machines = [Machine(r.details["index"], r.id, "127.0.0.1", r.details["data_root"]) for r in records]
        return self._cluster(spec, machines, folders[0])

    def _cluster(self, spec: ClusterSpec, machines: list[Machine], storage: Path) -> Cluster:
        connect = f"tail -f {storage}/logs/train-0.log   (machine 0's console)"
        return Cluster(spec, tuple(machines), str(storage), self.gpus.per_machine(spec.machines) or 1, connect,
                       str(storage), sys.executable)

    def launch(self, cluster: Cluster, commands: dict[int, list[str]], name: str) -> None:
        spec = cluster.spec
        for index, command in commands.items():
            log_path = Path(cluster.storage) / "logs" / f"{name}-{index}.log"
            exit_file = Path(cluster.storage) / "logs" / f"{name}-{index}.exit"
            exit_file.unlink(missing_ok=True)
            env = {**os.environ, RUN_ENV: spec.run_id, HOME_ENV: self._home_tag, JOB_ENV: f"{name}-{index}",
                   EXPIRES_ENV: spec.expires_at.isoformat(), EXIT_FILE_ENV: str(exit_file),
                   "CUDA_VISIBLE_DEVICES": self.gpus.for_machine(index, len(cluster.machines))}
            with open(log_path, "ab") as log:
                subprocess.Popen(["bash", "-c", EXIT_CODE_WRAPPER, name, *command], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True, cwd=cluster.storage)

    def status(self, cluster: Cluster, name: str) -> JobStatus:
        alive = {p["job"] for p in self.processes(cluster.spec.run_id)}
        running = succeeded = 0
        failed: dict[int, int] = {}
        unseen: dict[int, tuple[str, Path]] = {}
        for machine in cluster.machines:
            exit_file = Path(cluster.storage) / "logs" / f"{name}-{machine.index}.exit"
            job = f"{name}-{machine.index}"
            if not (Path(cluster.storage) / "logs" / f"{job}.log").exists():
                continue
            if exit_file.exists() and exit_file.read_text().strip():
                code = int(exit_file.read_text())
                if code == 0:
                    succeeded += 1
                else:
                    failed[machine.index] = code
            elif job in alive:
                running += 1
            else:
                unseen[machine.index] = (job, exit_file)
        if unseen:
            # A process that is still exec'ing has no readable environment, so no tag yet: look once more.
            time.sleep(0.5)
            alive = {p["job"] for p in self.processes(cluster.spec.run_id)}
            for index, (job, exit_file) in unseen.items():
                if job in alive or exit_file.exists():
                    running += 1
                else:
                    failed[index] = -signal.SIGKILL  # gone without an exit code: killed
        return JobStatus(running, succeeded, failed)

    def stop(self, cluster: Cluster, name: str) -> None:
        self._stop_processes(cluster.spec.run_id)  # a run's only processes are its job's

    def read_storage(self, cluster: Cluster, relative_path: str, offset: int = 0) -> bytes:
        path = Path(cluster.storage) / relative_path
        if not path.is_file():
            return b""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()

    # -- find, tear down, sweep -----------------------------------------------------------------------
    def resources(self, run_id: str | None = None) -> list[Resource]:
        folders = [self.registry / run_id] if run_id else sorted(self.registry.glob("*"))
        found = [_load(path) for folder in folders for path in sorted(folder.glob("*.json"))]
        found += [claim for claim in map(_load, sorted(self.claims.glob("*.json"))) if run_id in (None, claim.run_id)]
        for process in self.processes(run_id):
            found.append(Resource("process", f"{process['run']}/{process['job']}/{process['pid']}", process["run"],
                                  dt.datetime.fromisoformat(process["expires"]), {"pid": process["pid"]}))
        return found

    def teardown(self, run_id: str) -> list[Resource]:
        processes = [r for r in self.resources(run_id) if r.kind == "process"]
        self._stop_processes(run_id)
        removed = processes + self.delete_replicas(run_id)
        for resource in self.resources(run_id):
            self._forget(resource)
            removed.append(resource)
        strays = self._remove_strays(run_id)
        _remove_if_empty(self.replica_root / run_id)
        shutil.rmtree(self.registry / run_id, ignore_errors=True)
        left = self.resources(run_id)
        if left or any(folder.exists() for folder in strays):
            raise RuntimeError(f"teardown of run {run_id} left {[r.id for r in left]}; run `imagenet18 cleanup`")
        return removed

    def _remove_strays(self, run_id: str) -> list[Path]:
        """The run's replica folders no record names (half-made ones too); a pool's, claimed by runs, stay. Listed
        before the records: a replica is recorded before its folder is made."""
        folders = list((self.replica_root / run_id).glob("*"))
        held = {r.details["path"] for r in self.resources() if r.kind == "replica"}
        strays = [f for f in folders if str(f) not in held]
        for folder in strays:
            shutil.rmtree(folder, ignore_errors=True)
        return strays

    def sweep(self, finished: Callable[[str], bool]) -> list[Resource]:
        """Tear down runs that finished, expired, or whose orchestrating process is gone (SIGKILL, lost host)."""
        sweep = Sweep()
        for run_id in sorted({r.run_id for r in self.resources()} | _run_folders(self.replica_root)):
            if run_id == POOL_OWNER:  # made ahead of runs, each replica with its own expiry
                sweep.tear_down(run_id, self._sweep_pool)
                continue
            resources = self.resources(run_id)
            orphaned = any("owner_pid" in r.details and not _alive(r.details["owner_pid"], r.details["owner_start"])
                           for r in resources)
            if orphaned or any(r.expired for r in resources) or not resources or sweep.finished(run_id, finished):
                sweep.tear_down(run_id, functools.partial(self.teardown, run_id))
        return sweep.removed()

    def processes(self, run_id: str | None = None) -> list[dict]:
        """This home's job processes (the given run's, when one is given), found by the tags in their environment."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            tags = dict(item.decode(errors="replace").split("=", 1) for item in environ
                        if item.startswith(b"IMAGENET18_") and b"=" in item)
            if (tags.get(HOME_ENV) == self._home_tag and RUN_ENV in tags and state != "Z"
                    and (run_id is None or tags[RUN_ENV] == run_id)):
                found.append({"pid": int(entry.name), "run": tags[RUN_ENV], "job": tags.get(JOB_ENV, ""),
                              "expires": tags.get(EXPIRES_ENV, "1970-01-01T00:00:00+00:00")})
        return found

    def _stop_processes(self, run_id: str) -> None:
        """SIGTERM every process tagged with the run, SIGKILL what is left after the grace period."""
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, STOP_GRACE_SECONDS)):
            processes = self.processes(run_id)
            for process in processes:
                try:
                    os.kill(process["pid"], sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while processes and time.monotonic() < deadline:
                time.sleep(0.1)
                processes = self.processes(run_id)
            if not processes:
                return
        raise RuntimeError(f"processes of run {run_id} survived SIGKILL: {[p['pid'] for p in self.processes(run_id)]}")

    def _record(self, resource: Resource) -> None:
        path = self.registry / resource.run_id / _file_name(resource.id)
        for attempt in range(3):  # the folder may go between mkdir and write: its last record forgotten just then
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(_write_record(path.with_suffix(".tmp"), resource), path)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def _forget(self, resource: Resource) -> None:
        if resource.kind == "claim":
            (self.claims / _file_name(resource.id)).unlink(missing_ok=True)
        elif resource.kind != "process":
            (self.registry / resource.run_id / _file_name(resource.id)).unlink(missing_ok=True)
            _remove_if_empty(self.registry / resource.run_id)


@dataclasses.dataclass(frozen=True)
class LocalGpus:
    """This machine's GPUs, shared out among the run's local "machines": each gets an equal, separate share and
    runs one process per GPU (NCCL); with fewer GPUs than machines, or none, each machine is one CPU process."""
    devices: tuple[str, ...]  # as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)
    model: str | None = None  # as the driver names the first GPU ("NVIDIA H100 80GB HBM3"), where it can be read

    @classmethod
    def visible(cls, environ: Mapping[str, str] = os.environ, driver: Path = Path("/proc/driver/nvidia/gpus")
                ) -> LocalGpus:
        """From CUDA_VISIBLE_DEVICES where it is set (CUDA ignores the ids after an invalid one, like -1), else
        the NVIDIA driver's list; no CUDA initialisation, no torch import."""
        model = _driver_model(driver)
        if "CUDA_VISIBLE_DEVICES" in environ:
            ids = [item.strip() for item in environ["CUDA_VISIBLE_DEVICES"].split(",")]
            return cls(tuple(itertools.takewhile(lambda item: item and not item.startswith("-"), ids)), model)
        try:
            return cls(tuple(str(i) for i in range(len(list(driver.iterdir())))), model)
        except OSError:
            return cls(())

    def per_machine(self, machines: int) -> int:
        return len(self.devices) // machines

    def for_machine(self, index: int, machines: int) -> str:
        share = self.per_machine(machines)
        return ",".join(self.devices[index * share:(index + 1) * share])  # "": CUDA sees none, the CPU trains

    def describe(self, machines: int) -> str:
        share = self.per_machine(machines)
        if share:
            return f"{share} GPU(s) each, one process per GPU"
        if self.devices:
            return (f"1 CPU process each: {len(self.devices)} GPU(s) here cannot give each of {machines} machines "
                    f"its own; --machines {len(self.devices)} would train on them")
        return "1 CPU process each"


def _driver_model(driver: Path) -> str | None:
    """The `Model:` line of the first GPU's information file (/proc/driver/nvidia/gpus/<bus id>/information)."""
    try:
        first = min(driver.glob("*/information"), default=None)
        lines = first.read_text().splitlines() if first else []
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model:")), None)


def _check_makeable(folder: Path) -> None:
    """A resized copy the schedule reads exists, or can be made beside the dataset."""
    if folder.is_dir():
        return
    existing = next(parent for parent in folder.parents if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"the schedule reads {folder}, which does not exist and cannot be made: {existing} is not "
                         "writable; give --dataset a copy of the dataset in a folder you can write to (`cp -rs` "
                         "makes one of links, without copying the images)")


def _file_name(resource_id: str) -> str:
    return f"{resource_id.replace('/', '_')}.json"


def _write_record(path: Path, resource: Resource) -> Path:
    with naming(path, f"the record of {resource.id}"):
        path.write_text(json.dumps({"kind": resource.kind, "id": resource.id, "run_id": resource.run_id,
                                    "expires_at": resource.expires_at.isoformat(), "details": resource.details}))
    return path


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if Path(path).exists():
        raise RuntimeError(f"replica {path} could not be removed")
    _remove_if_empty(Path(path).parent)


def _remove_if_empty(folder: Path) -> None:
    """A run's (or the pool's) folder goes with its last entry; a folder still in use is not empty."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _load(path: Path) -> Resource:
    raw = json.loads(path.read_text())
    return Resource(raw["kind"], raw["id"], raw["run_id"], dt.datetime.fromisoformat(raw["expires_at"]),
                    raw["details"])


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner() -> dict:
    """The orchestrating process: when it is gone and its run is not finished, the run was abandoned."""
    return {"owner_pid": os.getpid(), "owner_start": _start_time(os.getpid())}


def _alive(pid: int, start: int | None) -> bool:
    return _start_time(pid) == start  # a reused pid has another start time


def _run_folders(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*") if p.is_dir()}


def _fill(root: Path, replica: Path) -> dict[str, str]:
    """The dataset and each of its resized copies in the replica folder, where they are not yet; returns the state
    of each folder linked now, by its path in the replica."""
    linked = {}
    copies = (p for p in Path(f"{root}-sz").glob("*") if p.is_dir() and not p.name.startswith("."))
    for source in [root, *sorted(copies)]:  # the resized copies' folders, not a README or .DS_Store beside them
        relative = str(source.relative_to(root.parent))
        if not (replica / relative).exists():
            linked[relative] = _folder_state(source)  # before linking: a change meanwhile makes the replica stale
            _link_tree(source, replica / relative)
    return linked


def _folder_state(folder: Path) -> str:
    """What hard links to a dataset folder's files go stale with: the modification times of the folder, its splits
    and their class folders (a file added, removed or replaced by another changes its folder's; a file rewritten
    in place is the same file, its links too)."""
    folders = sorted(path for path in [folder, *folder.glob("*"), *folder.glob("*/*")] if path.is_dir())
    listing = "\n".join(f"{path.relative_to(folder)} {path.stat().st_mtime_ns}" for path in folders)
    return hashlib.sha256(os.fsencode(listing)).hexdigest()[:16]  # a name need not be UTF-8


def _stale(root: Path, replica: Resource) -> list[str]:
    """The folders of the replica whose dataset folder changed since it was linked (or is gone)."""
    changed = []
    for relative, state in replica.details.get("states", {}).items():
        source = root.parent / relative
        if not source.is_dir() or _folder_state(source) != state:
            changed.append(relative)
    return changed


def _link_tree(source: Path, destination: Path) -> None:
    """Hard links where the filesystem allows them, symbolic links where it does not (the dataset on another disk,
    files of another user under fs.protected_hardlinks): never a copy, which would take the dataset's size again
    for each machine."""
    def link(src: str, dst: str) -> None:
        # The dataset's own links are linked to by path, so each replica reads what they name now (Linux's link()
        # would link the link itself, a relative one then naming nothing).
        if not os.path.islink(src):
            try:
                os.link(src, dst)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK) or not os.access(src, os.R_OK):
                    raise  # no space, or a file this user cannot read: the replica fails naming it
        os.symlink(os.path.abspath(src), dst)

    tmp = destination.with_name(destination.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp, copy_function=link, ignore=_broken_links)
    except shutil.Error as exc:  # one (source, destination, why) per file that failed, thousands on a full disk
        shutil.rmtree(tmp, ignore_errors=True)  # what it filled
        raise BackendError(f"the dataset replica {destination} could not be made: {exc.args[0][0][2]} "
                           f"({len(exc.args[0])} file(s) not copied)") from exc
    os.replace(tmp, destination)


def _broken_links(folder: str, names: list[str]) -> list[str]:
    """Links to nothing, which no stage reads (check_source warns of them). Not copytree's
    ignore_dangling_symlinks, which looks a relative link's target up from the working folder."""
    return [name for name in names if not os.path.exists(os.path.join(folder, name))]


def _flock_by(file, mode: int, deadline: float) -> bool:
    """The lock, asked for until `deadline`; whether it was had."""
    while time.monotonic() < deadline:
        try:
            fcntl.flock(file, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.2)
    return False
