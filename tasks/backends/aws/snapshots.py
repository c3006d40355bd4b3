"""The step the seed's users did by hand: a dataset snapshot made from a dataset at an fsspec URL. A builder
machine copies URL (and its -sz/<px> copies) onto a fresh volume, the volume is snapshotted, and the builder
run is torn down by its tag; the snapshot stays, named and described NAME, for `dataset=NAME`."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass

from tasks.backends.aws import jobs, machines, network, network_quotas, quotas, secrets, storage, tags, volumes
from tasks.backends.aws.backend import TEARDOWN_TIME, AwsBackend
from tasks.backends.aws.clients import error_code
from tasks.backends.aws.iam import ensure_instance_profile
from tasks.backends.aws.waiting import waiter_config
from tasks.backends.base import BackendError, Cluster, ClusterSpec, InputError, Machine
from trainer import sync

log = logging.getLogger(__name__)
BUILDER_TYPE = "c6i.4xlarge"  # 12.5 Gb/s to S3, no GPU needed
BUILDER_VCPUS = 16
BUILDER_IOPS, BUILDER_MIBPS = 6000, 500  # its disk's: a gp3 of at least 12 GiB (EBS allows 500 IOPS per GiB)
BUILDER_USD_PER_HOUR = 0.68  # its us-east-1 on-demand list price, for plans that include a build
COPY_JOB = "copy"
HEADROOM = 1.2
S3_FIRST_BYTE_S = 0.1  # at best, for a small object: S3's performance guidelines say 100-200 ms
BUILD_HOURS = 6.0  # a build's max_hours unless asked: the copy and the snapshot together
BUILDER_NAME = "{}-builder"  # its volume's Name: the snapshot's name, and this
TAG_VALUE_MAX = 256  # EC2's (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions)
BUILD_LOGS = f"{machines.DATA_MOUNT}/.imagenet18-build"  # the copy's log stays on the snapshot, as its provenance


@dataclass(frozen=True)
class DatasetSize:
    bytes: int
    files: int

    @property
    def volume_gb(self) -> int:
        """The builder's volume, with room to spare."""
        return max(10, math.ceil(self.bytes * HEADROOM / 2**30) + 5)

    @property
    def copy_hours_at_least(self) -> float:
        """The copy's hours at the builder's best pace: its disk's throughput, and its copies at once each waiting
        for S3's first byte."""
        return max(self.bytes / (BUILDER_MIBPS * 2**20), self.files * S3_FIRST_BYTE_S / sync.COPIES_AT_ONCE) / 3600


def measure_dataset(url: str, sizes: list[int]) -> DatasetSize:
    """The dataset at URL and its -sz/<px> copies `sizes`, listed, and a byte of one file read: a KMS key the
    objects are under that may not be used is found only by a read."""
    fs, base = sync.dataset_filesystem(url)
    fs.invalidate_cache()  # fsspec keeps listings per process; a served flow process lives long
    folders = [base] + [f"{base}-sz/{size}" for size in sizes]
    total = files = 0
    first = None
    try:
        missing = [folder for folder in folders if not fs.isdir(folder)]
        if missing:
            raise InputError(f"dataset folder(s) not found: {', '.join(missing)}")
        for folder in folders:
            for path, info in fs.find(folder, detail=True).items():
                total, files = total + info["size"], files + 1
                first = first or (path if info["size"] else None)
        if first:
            fs.cat_file(first, start=0, end=1)
    except OSError as refused:
        if not _refusal(refused):
            raise
        raise InputError(f"{url} cannot be read with these credentials ({refused}): another account's bucket must "
                         "allow this account s3:ListBucket and s3:GetObject in its bucket policy, and objects under "
                         "a KMS key need a key it may use (not the owner's AWS managed key aws/s3, which no other "
                         "account may); the snapshot builder's role reads them too") from None
    return DatasetSize(total, files)


def _refusal(error: OSError) -> bool:
    """s3fs's PermissionError for S3's 403; an OSError for a KMS key's refusal, its cause AWS's error."""
    return isinstance(error, PermissionError) or error_code(error.__cause__).startswith("KMS.")


def dataset_size_gb(url: str, sizes: list[int]) -> int:
    return measure_dataset(url, sizes).volume_gb


def make_snapshot(backend: AwsBackend, url: str, name: str, sizes: list[int], max_hours: float = BUILD_HOURS,
                  poll_seconds: float = 5.0, run_id: str | None = None) -> str:
    """Returns the new snapshot's id; everything else the builder made is deleted, whatever happens. What it makes
    carries `run_id`: the snapshot flow's run, by whose state the cleanup tells that a build killed meanwhile is
    over (a build id of its own otherwise, left to its expiry)."""
    if not url.startswith("s3://"):
        raise InputError(f"the builder machine reads the dataset from s3://, not {url}")
    url = url.rstrip("/")
    if "/" not in url.removeprefix("s3://"):
        raise InputError(f"the dataset is a folder in a bucket (s3://bucket/imagenet, its resized copies beside it in "
                         f"imagenet-sz/<px>), not the bucket {url} itself")
    if not 0 < max_hours <= jobs.MAX_COMMAND_HOURS:
        raise InputError(f"max_hours={max_hours:g}: a build takes more than 0 and at most {jobs.MAX_COMMAND_HOURS} h "
                         "(SSM's bound on its copy's command)")
    _check_tag_values(url, name, backend.options.dataset_folder)
    spec = ClusterSpec(run_id or f"snapshot-{uuid.uuid4().hex[:12]}", "snapshot-builder", 1, BUILDER_TYPE, False,
                       dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=max_hours))
    dataset = measure_dataset(url, sizes)
    if dataset.copy_hours_at_least > max_hours:
        raise InputError(f"copying {dataset.files:,} files ({dataset.bytes / 2**30:.3g} GiB) onto the builder's disk "
                         f"takes {dataset.copy_hours_at_least:.2g} h or more, over the build's "
                         f"max_hours={max_hours:g}: raise --max-hours")
    size_gb = dataset.volume_gb
    zone, image = _check(backend, spec)
    try:
        return _build(backend, spec, url, name, sizes, size_gb, zone, image, poll_seconds)
    finally:
        backend.teardown(spec.run_id)


def _check_tag_values(url: str, name: str, folder: str) -> None:
    """The tags that say what the snapshot holds, which EC2 refuses past 256 characters: the snapshot, made last,
    hours into the copy, would be refused."""
    for what, value, room in (("the dataset's URL", url, TAG_VALUE_MAX),
                              ("the snapshot's name", name, TAG_VALUE_MAX - len(BUILDER_NAME.format(""))),
                              ("aws.dataset_folder", folder, TAG_VALUE_MAX)):
        if len(value) > room:
            raise InputError(f"{what} is {len(value)} characters long: the snapshot's tags, which hold it, take at "
                             f"most {room}")


def _check(backend: AwsBackend, spec: ClusterSpec) -> tuple[str, dict]:
    """The builder's zone and image, once what AWS would refuse it for is asked, before anything is made (as a
    run's pre-flight does)."""
    clients, options = backend.clients, backend.options
    clients.check_region()
    account = clients.check_credentials()
    clients.check_credentials_outlast(spec.expires_at + TEARDOWN_TIME,
                                      f"the snapshot build (at most {spec.hours_left:.2g} h)", shorter=None)
    backend.check_disk_keys(account)
    backend.check_bucket(account)
    quotas.check_vcpus(clients, quotas.STANDARD, f"the snapshot builder ({BUILDER_TYPE}) needs", BUILDER_VCPUS)
    zone = backend.zone(BUILDER_TYPE)
    image = machines.resolve_ami(clients, options.ami)
    machines.check_image_release(image)
    if options.subnet_id:
        backend.check_subnet(zone)
    else:
        network.check_public_access(clients.ec2)
        network_quotas.check(clients, "the snapshot builder")
    return zone, image


def _build(backend: AwsBackend, spec: ClusterSpec, url: str, name: str, sizes: list[int], size_gb: int, zone: str,
           image: dict, poll_seconds: float) -> str:
    clients, options = backend.clients, backend.options
    ec2 = clients.ec2
    folder = f"snapshots/{spec.run_id}"
    bucket = storage.bucket_name(clients, options.bucket)
    profile = ensure_instance_profile(clients, spec, bucket, folder, secrets.path(spec.run_id),
                                      readable=(url, f"{url}-sz"))
    net = network.ensure_network(clients, spec, zone, options.subnet_id, options.ssh_cidr, backend.key_folder,
                                 options.parallel_calls)
    # before the volume is paid for: EC2 knows the new profile (IAM's changes take a while to reach it), and these
    # credentials may launch the builder and pass it the role
    backend.dry_run_instances(spec, image, net.subnet_id, profile)
    volume = ec2.create_volume(
        AvailabilityZone=zone, Size=volumes.volume_size_gb("gp3", BUILDER_IOPS, size_gb), VolumeType="gp3",
        Iops=BUILDER_IOPS, Throughput=BUILDER_MIBPS, Encrypted=True,
        TagSpecifications=tags.tag_specs("volume", tags.tag_list(spec.run_id, spec.expires_at,
                                                                 BUILDER_NAME.format(name))))
    volumes.wait_available(clients, [volume])
    storage.upload_project(clients, bucket, f"s3://{bucket}/{folder}/code/imagenet18.tar.gz")
    boot = machines.BootConfig(None, options.region, f"s3://{bucket}/{folder}/code/imagenet18.tar.gz",
                               max_hours=spec.hours_left,
                               format_volume=True)
    [builder] = machines.run_machines(clients, spec, net, image, profile, [volume["VolumeId"]], boot, 1)
    cluster = Cluster(spec, (Machine(0, builder["InstanceId"], builder["PrivateIpAddress"], machines.DATA_MOUNT),),
                      f"s3://{bucket}/{folder}", 0, "", BUILD_LOGS, machines.MACHINE_PYTHON)
    command = [cluster.python, "-m", "trainer", "sync", url, f"{machines.DATA_MOUNT}/{options.dataset_folder}",
               "--sizes", *map(str, sizes)]
    backend.launch(cluster, {0: command}, COPY_JOB)
    while not (status := backend.status(cluster, COPY_JOB)).done:
        time.sleep(poll_seconds)
    if status.failed:
        log_tail = backend.read_storage(cluster, f"logs/{COPY_JOB}-0.log")[-3000:].decode(errors="replace")
        said = "".join(f"{cause}\n" for cause in status.causes.values())  # a script that never ran the copy
        raise BackendError(f"copying {url} onto the builder's volume failed:\n{said}{log_tail}")
    # A snapshot holds what is on the volume, not what the builder's OS still caches: a clean stop writes it all.
    ec2.stop_instances(InstanceIds=[builder["InstanceId"]])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[builder["InstanceId"]], WaiterConfig=waiter_config())
    # The builder run's until it is completed (hours, for a big dataset), so that a build that fails or is stopped
    # meanwhile leaves no snapshot behind: its teardown, or the cleanup's once the build's max hours are over,
    # deletes it. Then it is the dataset's.
    dataset_tags = {tags.DATASET_SOURCE: url, tags.DATASET_FOLDER: options.dataset_folder,
                    tags.DATASET_SIZES: " ".join(map(str, sorted(sizes)))}
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"], Description=name, TagSpecifications=tags.tag_specs(
        "snapshot", tags.tag_list(spec.run_id, spec.expires_at, name, **dataset_tags)))
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot["SnapshotId"]],
                                              WaiterConfig=waiter_config(max(60.0, spec.hours_left * 3600)))
    _delete_twins(ec2, spec.run_id, snapshot["SnapshotId"])
    ec2.delete_tags(Resources=[snapshot["SnapshotId"]], Tags=[{"Key": tags.RUN}, {"Key": tags.EXPIRES}])
    log.info("snapshot %s (%s, %d GiB) made from %s", snapshot["SnapshotId"], name, size_gb, url)
    return snapshot["SnapshotId"]


def _delete_twins(ec2, run_id: str, ours: str) -> None:
    """The build's snapshots but `ours`: CreateSnapshot takes no idempotency token, so where EC2 made one and its
    answer was lost, botocore's retry made a twin, which would complete under the run's tag (past any teardown:
    a completed snapshot is the dataset's) and make the dataset's name match two snapshots."""
    for twin in ec2.describe_snapshots(OwnerIds=["self"], Filters=tags.run_filter(run_id))["Snapshots"]:
        if twin["SnapshotId"] != ours:
            log.warning("deleting snapshot %s, a twin of %s made by a retried CreateSnapshot", twin["SnapshotId"], ours)
            ec2.delete_snapshot(SnapshotId=twin["SnapshotId"])
