"""`imagenet18 smoke --backend aws`: a first run on a real account, small and cheap. Two of the cheapest GPU
machines the machines' torch build runs (spot where the account's spot quota allows two), the demo dataset
through the run's bucket (uploaded, made a snapshot by the builder machine, replicated), a few minutes of
training; then the snapshot and the upload are deleted, teardown is verified by tag, and a markdown report is
written to paste into an issue. Refused before anything is made when the doctor finds a failing check or when
its plan costs more than the budget."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from tasks.backends.aws import AwsBackend, AwsOptions, catalog, doctor, quotas, storage
from tasks.backends.aws.clients import error_code
from tasks.backends.aws.snapshots import BUILDER_USD_PER_HOUR, dataset_size_gb, make_snapshot
from tasks.backends.base import ClusterSpec, InputError
from tasks.backends.local import default_home
from tasks.backends.demo import demo_dataset_root, ensure_demo_dataset
from tasks.planning import load_schedule
from trainer.schedule import ScheduleError

MACHINES = 2
SIZES = [160]  # the -sz/ copy the demo schedules read
# A replica of a few MB needs no io2 at 11,500 IOPS (about $1/h a volume): gp3's free baseline is enough.
STORAGE = {"volume_type": "gp3", "iops": 3000, "throughput_mbps": 125}
BUILDER_HOURS = 0.5  # the builder shuts itself down after this; it copies a few MB


class NotReady(InputError):
    """The doctor found a check that fails: `table` says which, and what to do."""

    def __init__(self, table: str) -> None:
        super().__init__("this account is not ready for a run (the doctor's table above says what to do); "
                         "nothing was created")
        self.table = table


@dataclass(frozen=True)
class SmokePlan:
    options: AwsOptions
    kind: catalog.InstanceType
    spot: bool
    market: str  # on-demand or spot, and why
    run_hourly_usd: float
    estimate_usd: float  # at most, the builder's time included
    budget_usd: float
    max_hours: float
    schedule: str
    epochs: int | None
    dataset_root: Path
    name: str
    checks: list[doctor.Check] = field(default_factory=list)


@dataclass(frozen=True)
class SmokeReport:
    markdown: str
    passed: bool
    path: Path


def plan_smoke(aws: dict, instance_type: str | None, on_demand: bool, budget_usd: float, max_hours: float,
               schedule: str, epochs: int | None, dataset_root: Path | None = None) -> SmokePlan:
    """Everything the smoke needs, checked and priced; nothing is made in the account."""
    options = AwsOptions(**{**STORAGE, **aws})
    backend = AwsBackend(options)
    backend.clients.check_region()
    backend.clients.check_credentials()
    try:
        kind = catalog.runnable_instance_type(instance_type) if instance_type else _cheapest_offered(backend)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    spot, market = _market(backend, kind, on_demand)
    checks = doctor.diagnose(options, kind.name, MACHINES, spot)
    if doctor.failed(checks):
        raise NotReady(doctor.table(checks))
    if not 0 < max_hours <= BUILDER_HOURS * 4:
        raise InputError(f"--max-hours {max_hours:g}: a smoke run takes minutes; give more than 0 and at most "
                         f"{BUILDER_HOURS * 4:g}")
    if dataset_root is None:
        dataset_root = demo_dataset_root()
        ensure_demo_dataset()
    try:
        load_schedule(AwsBackend.schedule_location(schedule), str(dataset_root), MACHINES)
    except ScheduleError as exc:
        raise InputError(str(exc)) from None
    name = f"imagenet18-smoke-{uuid.uuid4().hex[:8]}"
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=max_hours)
    run = backend.cost_plan(ClusterSpec(name, name, MACHINES, kind.name, spot, expires),
                            dataset_size_gb(str(dataset_root), SIZES), max_hours)
    estimate = run.total_usd + BUILDER_USD_PER_HOUR * BUILDER_HOURS
    if estimate > budget_usd:
        raise InputError(f"the smoke run costs up to ${estimate:,.2f} ({MACHINES} x {kind.name} {market.split()[0]} "
                         f"for {max_hours:g} h at ${run.hourly_usd:,.2f}/h, and the dataset builder's "
                         f"{BUILDER_HOURS:g} h), over the budget of ${budget_usd:,.2f}; raise --budget-usd or "
                         "lower --max-hours")
    return SmokePlan(options, kind, spot, market, run.hourly_usd, estimate, budget_usd, max_hours, schedule, epochs,
                     dataset_root, name, checks)


def _cheapest_offered(backend: AwsBackend) -> catalog.InstanceType:
    """The cheapest type the machines' torch build runs that the run's region (and zone, if given) offers."""
    for kind in catalog.runnable_by_price():
        try:
            backend.zone(kind.name)
        except InputError:
            continue
        return kind
    where = backend.options.availability_zone or backend.options.region
    raise InputError(f"none of the types the machines' torch build runs is offered in {where}: "
                     f"{', '.join(t.name for t in catalog.runnable_by_price())}")


def _market(backend: AwsBackend, kind: catalog.InstanceType, on_demand: bool) -> tuple[bool, str]:
    """Spot when asked for and the account's spot quota for the type holds both machines."""
    if on_demand:
        return False, "on-demand (--on-demand)"
    quota = quotas.quota_for(kind.name, True)
    value = quotas.quota_value(backend.clients, quota) if quota else None
    _, used = quotas.in_use(backend.clients, quota) if value is not None else (0, 0)
    if value is None or value - used < MACHINES * kind.vcpus:
        held = "not readable" if value is None else f"{value:g} vCPUs" + (f", {used} in use" if used else "")
        return False, f"on-demand (the spot quota, {held}, does not hold {MACHINES} x {kind.name})"
    return True, "spot (the account's spot quota holds both)"


def run_smoke(plan: SmokePlan) -> SmokeReport:
    """The smoke, whatever happens torn down: its snapshot and upload deleted, then every resource tagged with
    a run that began meanwhile looked for."""
    from flows.imagenet18 import imagenet18

    backend = AwsBackend(plan.options)
    runs_before = {r.run_id for r in backend.resources()}
    bucket = storage.bucket_name(backend.clients, plan.options.bucket)
    url = f"s3://{bucket}/smoke/{plan.name}/demo"
    times: dict[str, float] = {}
    snapshot_id, result = None, None
    try:
        with _timed(times, "upload"):
            storage.ensure_bucket(backend.clients, bucket)
            fs = fsspec.filesystem("s3")
            for suffix in ("", *(f"-sz/{size}" for size in SIZES)):
                fs.put(f"{plan.dataset_root}{suffix}/", f"{url}{suffix}/".removeprefix("s3://"), recursive=True)
        with _timed(times, "snapshot"):
            snapshot_id = make_snapshot(backend, url, plan.name, SIZES, max_hours=BUILDER_HOURS)
        with _timed(times, "run"):
            state = imagenet18(machines=MACHINES, backend="aws", instance_type=plan.kind.name, spot=plan.spot,
                               dataset=snapshot_id, schedule=plan.schedule, epochs=plan.epochs,
                               budget_usd=plan.budget_usd - BUILDER_USD_PER_HOUR * BUILDER_HOURS,
                               max_hours=plan.max_hours, aws=plan.options, return_state=True)
        result = state.result() if state.is_completed() else f"the run failed: {state.message}"
    except Exception as exc:  # noqa: BLE001 - the report says what failed; the cleanup below runs all the same
        result = f"the smoke failed: {type(exc).__name__}: {exc}"
    finally:
        with _timed(times, "cleanup"):
            deleted = _delete_dataset(backend, snapshot_id, url)
            leftovers = [r for r in backend.resources() if r.run_id not in runs_before]
    return _report(plan, bucket, snapshot_id, result, times, deleted, leftovers)


@contextmanager
def _timed(times: dict[str, float], stage: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        times[stage] = time.monotonic() - start


def _delete_dataset(backend: AwsBackend, snapshot_id: str | None, url: str) -> dict[str, bool]:
    """The smoke's dataset (its snapshot, its upload) -> whether it is gone, checked by asking again."""
    ec2, fs = backend.clients.ec2, fsspec.filesystem("s3")
    gone = {}
    if snapshot_id:
        gone[f"snapshot {snapshot_id}"] = False
        try:  # a failed delete is reported as the snapshot not deleted: the report must still be written
            ec2.delete_snapshot(SnapshotId=snapshot_id)
            ec2.describe_snapshots(SnapshotIds=[snapshot_id])
        except Exception as exc:  # noqa: BLE001 - only "not found" is the answer looked for
            gone[f"snapshot {snapshot_id}"] = error_code(exc) == "InvalidSnapshot.NotFound"
    prefix = url.removeprefix("s3://").rsplit("/", 1)[0]
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)
    fs.invalidate_cache()
    gone[f"s3://{prefix}/"] = not fs.exists(prefix)
    return gone


def _report(plan: SmokePlan, bucket: str, snapshot_id: str | None, result: dict | str, times: dict[str, float],
            deleted: dict[str, bool], leftovers: list) -> SmokeReport:
    ran = isinstance(result, dict)
    if ran:
        outcome = (f"completed: top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f} after {result['epochs']} "
                   f"epoch(s) ({result['hours'] * 60:.1f} min of training), results in {result['storage']}")
    else:
        outcome = result
    spent = plan.run_hourly_usd * times.get("run", 0) / 3600 + BUILDER_USD_PER_HOUR * times.get("snapshot", 0) / 3600
    left = [f"{r.kind} {r.id} (run {r.run_id})" for r in leftovers]
    left += [what for what, gone in deleted.items() if not gone]
    teardown = ("verified by tag: nothing tagged `imagenet18:run` with a run the smoke began is left"
                if not left else "NOT clean, left: " + ", ".join(left))
    rows = [
        ("result", outcome),
        ("versions", f"imagenet18 {_version('imagenet18')}, {catalog.TORCH_BUILD} on the machines, Python "
                     f"{platform.python_version()} here, boto3 {_version('boto3')}, prefect {_version('prefect')}"),
        ("region", plan.options.region),
        ("machines", f"{MACHINES} x {plan.kind.name} ({plan.kind.gpus} x {plan.kind.gpu}), {plan.market}"),
        *((c.name, c.result) for c in plan.checks if c.name in ("AMI", "zones")),
        ("dataset", f"the demo dataset, uploaded to s3://{bucket}/smoke/{plan.name}/, snapshot {snapshot_id or '-'}"),
        ("schedule", f"{plan.schedule}" + (f", {plan.epochs} epoch(s)" if plan.epochs else "")),
        ("times", ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in times.items())
         + f"; total {sum(times.values()) / 60:.1f} min"),
        ("cost", f"at most ${plan.estimate_usd:,.2f} planned (budget ${plan.budget_usd:,.2f}); about ${spent:,.2f} "
                 "for the time the machines ran"),
        ("teardown", f"{teardown}; deleted: {', '.join(what for what, gone in deleted.items() if gone)}"),
    ]
    passed = ran and not left
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    markdown = (f"## imagenet18 smoke on AWS: {'passed' if passed else 'FAILED'}\n\n| | |\n|---|---|\n{table}\n")
    path = default_home() / "smoke" / f"{plan.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    return SmokeReport(markdown, passed, path)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"
