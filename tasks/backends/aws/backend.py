"""The AWS backend: the seed's cluster (replicated dataset volumes, EFS, a placement group, N GPU machines)
made with boto3, everything tagged with the run and deleted by tag."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from tasks.backends.aws import (
    addresses,
    catalog,
    efs,
    encryption,
    health,
    iam,
    inventory,
    jobs,
    machines,
    network,
    network_quotas,
    pools,
    prices,
    quotas,
    secrets,
    storage,
    tags,
    volume_quotas,
    volumes,
)
from tasks.backends.aws.clients import REFUSALS, Clients, error_code
from tasks.backends.aws.machines import DATA_MOUNT, EFS_MOUNT
from tasks.backends.aws.options import AwsOptions
from tasks.backends.aws.teardown import teardown
from tasks.backends.base import (
    POOL_OWNER,
    BackendError,
    Cluster,
    ClusterSpec,
    CostPlan,
    Devices,
    InputError,
    JobStatus,
    LineItem,
    Machine,
    RemoteTensorBoard,
    Resource,
    RunsFolder,
    Warmup,
)
from tasks.backends.sweeps import Sweep
from trainer.schedule import AUTO, builtin_names, names_a_file

log = logging.getLogger(__name__)
DEFAULT_DATASET = "imagenet18-backup"  # the seed's snapshot description
IMAGENET_TRAIN_IMAGES = 1_281_167  # what the snapshots are taken to hold: the seed's dataset
RENDEZVOUS_PORT = 29500  # torchrun's default; the run's security group admits itself on every port
TEARDOWN_TIME = dt.timedelta(minutes=30)  # what a teardown after the run's max hours may take, at worst
PROFILE_PROPAGATION_S = 60.0  # how long a new instance profile may stay unknown to EC2
PROFILE_PROPAGATION_POLL_S = 1.0  # a dry run costs nothing


@dataclass(frozen=True)
class ClusterParts:
    """What `prepare` made for the machines: everything they need but their replicas."""
    network: network.Network
    file_system: str
    image: dict
    profile: str
    bucket: str
    folder: str  # the run's folder, in the bucket and on the file system

    def __str__(self) -> str:
        return (f"subnet {self.network.subnet_id} of {self.network.vpc_id} in {self.network.zone}, file system "
                f"{self.file_system}, instance profile {self.profile}, image {self.image['ImageId']}, code in "
                f"{code_url(self.bucket, self.folder)}")


def run_folder(spec: ClusterSpec) -> str:
    """The run's folder in the bucket and on the file system."""
    return f"runs/{spec.run_name}-{spec.run_id[:8]}"


def code_url(bucket: str, folder: str) -> str:
    return f"s3://{bucket}/{folder}/code/imagenet18.tar.gz"


def _check_instance_type(name: str, option: str | None = None) -> None:
    """A type of the catalogue that the machines' torch build runs on; `option` names where it came from."""
    try:
        catalog.runnable_instance_type(name)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}" if option else str(exc)) from None


class AwsBackend:
    name = "aws"
    poll_seconds = 2.0  # each poll reads the run's S3 prefix, and the SSM command of each machine still running
    agent_timeout_s = jobs.AGENT_TIMEOUT_S
    default_instance_type = catalog.DEFAULT_INSTANCE_TYPE
    default_machines = 16  # the seed's

    def __init__(self, options: AwsOptions | None = None, home: Path | None = None):
        from tasks.backends.local import default_home

        self.options = options or AwsOptions()
        home = home or default_home()
        self.clients = Clients(self.options.region, journals=home / "aws" / "made")
        self.key_folder = home / "aws" / "keys"

    # -- defaults and what a run's stages and reports ask ---------------------------------------------
    @classmethod
    def default_dataset(cls) -> str:
        return DEFAULT_DATASET

    @classmethod
    def dataset_location(cls, dataset: str) -> str:
        return dataset  # a snapshot's id or name

    @staticmethod
    def retry_may_pass(error: BaseException) -> bool:
        return error_code(error) not in REFUSALS

    @classmethod
    def default_schedule(cls, machines: int, dataset_given: bool) -> str:
        return f"seed-{machines}"

    @classmethod
    def schedule_location(cls, schedule: str) -> str:
        if schedule == AUTO:
            raise InputError("schedule auto is derived from the dataset's images, read on this machine, and an AWS "
                             f"run's dataset is a snapshot: name a schedule ({', '.join(builtin_names())})")
        if names_a_file(schedule):
            raise InputError(f"schedule file {schedule}: the machines install this checkout, and read the schedules "
                             f"in its trainer/schedules/ ({', '.join(builtin_names())}); put it there and give its "
                             "name")
        return schedule

    def ensure_default_dataset(self) -> None:
        """Nothing to make: the default is a snapshot the user made (`imagenet18 snapshot`)."""

    def train_images(self, dataset: str) -> int:
        return IMAGENET_TRAIN_IMAGES

    def describe(self, spec: ClusterSpec) -> str:
        return f"{spec.machines} machine(s) of {spec.instance_type} on aws{' (spot)' if spec.spot else ''}"

    def rendezvous_port(self) -> int:
        return RENDEZVOUS_PORT

    def node_flags(self, machines: int) -> list[str]:
        return []

    def tensorboard_options(self) -> list[str]:
        return ["--backend", "aws", "--region", self.options.region] + (
            ["--bucket", self.options.bucket] if self.options.bucket else [])

    def runs_folder(self, logdir: str | None = None) -> RunsFolder:
        region = {"AWS_REGION": self.options.region, "AWS_DEFAULT_REGION": self.options.region}
        return RunsFolder(logdir or f"s3://{self.results_bucket}/runs",
                          {**os.environ, **region})

    def running_heads(self) -> tuple[str, dict[str, RemoteTensorBoard]]:
        from tasks.backends.aws import tensorboard as remote

        self.clients.check_credentials()
        served = {head.folder: remote.HeadTensorBoard(self.clients, head, self.key_folder)
                  for head in remote.heads(self.clients)}
        return f"{self.clients.region} with machine 0 running", served

    # -- validate and plan ----------------------------------------------------------------------------
    def check(self, spec: ClusterSpec, dataset: str, reads: Sequence[str] = ("",)) -> None:
        if spec.hours_left > jobs.MAX_COMMAND_HOURS:
            raise InputError(f"max_hours={spec.hours_left:.4g} is over the {jobs.MAX_COMMAND_HOURS} h that SSM lets a "
                             f"job's command run on AWS; ask for at most {jobs.MAX_COMMAND_HOURS}")
        self.clients.check_region()
        account = self.clients.check_credentials()
        self.clients.check_credentials_outlast(spec.expires_at + TEARDOWN_TIME)
        _check_instance_type(spec.instance_type)
        zone = self.zone(spec.instance_type)
        for other in self.options.other_instance_types:
            _check_instance_type(other, "aws.other_instance_types")
            if zone not in self.clients.zones_offering(other):
                raise InputError(f"{other} (in aws.other_instance_types) is not offered in {zone}, the run's zone")
        self._check_other_zones(spec.instance_type, zone)
        snapshot = self.snapshot(dataset)
        volumes.check_snapshot_holds(snapshot, reads, self.options.dataset_folder)
        volumes.check_volume_settings(self.options.volume_type, self.options.iops, self.options.throughput_mbps)
        self.check_disk_keys(account, snapshot)
        self.check_bucket(account)
        self._check_volume_quotas(snapshot, spec.machines - self._from_pool(spec, snapshot))  # the pool's are made
        image = machines.resolve_ami(self.clients, self.options.ami)
        machines.check_image_release(image)
        if self.resources(spec.run_id):  # before the quotas, which its machines would count against
            raise InputError(f"run {spec.run_id} already has AWS resources; use another run id, or "
                             "`imagenet18 cleanup` to remove them")
        allowed = tuple(dict.fromkeys((spec.instance_type, *self.options.other_instance_types)))
        for instance_type in allowed:
            quotas.check(self.clients, instance_type, spec.machines, spec.spot)
        if self.options.subnet_id:
            self.check_subnet(zone)
        else:
            network.check_public_access(self.clients.ec2)
            network_quotas.check(self.clients, "the run")
        public = self.public_addresses()
        if any(machines.needs_elastic_ips(instance_type, public) for instance_type in allowed):
            addresses.check_quota(self.clients, spec.machines)
        self.dry_run_instances(spec, image, self.options.subnet_id or self.default_subnet(zone))

    def check_disk_keys(self, account: str, snapshot: dict | None = None, root_disks: bool = True) -> None:
        """encryption.check_keys, with what it could not ask said as a warning."""
        for unchecked in encryption.check_keys(self.clients, account, snapshot, root_disks).unchecked:
            log.warning("%s", unchecked)

    @property
    def results_bucket(self) -> str:
        return storage.bucket_name(self.clients, self.options.bucket)

    def check_bucket(self, account: str) -> None:
        """storage.check_bucket of the results bucket, with what it could not ask said as a warning."""
        for unchecked in storage.check_bucket(self.clients, self.results_bucket, account).unchecked:
            log.warning("%s", unchecked)

    def _check_volume_quotas(self, snapshot: dict, count: int) -> None:
        """`count` new replicas of the snapshot against the region's EBS quotas."""
        o = self.options
        volume_quotas.check(self.clients, o.volume_type, o.iops,
                            volumes.volume_size_gb(o.volume_type, o.iops, snapshot["VolumeSize"]), count)

    def _from_pool(self, spec: ClusterSpec, snapshot: dict) -> int:
        """How many of the run's replicas the pool would serve."""
        servable = volumes.servable(volumes.pool_volumes(self.clients), snapshot, self.zone(spec.instance_type),
                                    self.volume_settings)
        return min(len(servable), spec.machines)

    @functools.cache
    def zone(self, instance_type: str) -> str:
        offering = self.clients.zones_offering(instance_type)
        wanted = self.options.availability_zone
        if wanted:
            self.clients.check_zone(wanted)
            if wanted not in offering:
                raise InputError(f"{instance_type} is not offered in {wanted}; zones offering it: "
                                 f"{', '.join(offering) or 'none in ' + self.options.region}")
            return wanted
        if not offering:
            raise InputError(f"{instance_type} is not offered in {self.options.region}")
        return offering[0]

    def _check_other_zones(self, instance_type: str, zone: str) -> None:
        others = self.options.other_availability_zones
        if not others:
            return
        if self.options.subnet_id:
            raise InputError(f"subnet {self.options.subnet_id} (aws.subnet_id) is bound to its zone, so the run "
                             "cannot move to aws.other_availability_zones; drop one of the two")
        offering = self.clients.zones_offering(instance_type)
        for other in others:
            self.clients.check_zone(other)
            if other == zone:
                raise InputError(f"{other} (in aws.other_availability_zones) is the run's own zone; list only "
                                 "zones to move to")
            if other not in offering:
                raise InputError(f"{instance_type} is not offered in {other} (in aws.other_availability_zones); "
                                 f"zones offering it: {', '.join(offering)}")

    @functools.cache
    def prepare_dataset(self, spec: ClusterSpec, dataset: str, reads: Sequence[str],
                        progress: Callable[[int, int], None] | None = None) -> None:
        """Nothing to make: the snapshot holds its resized copies (`check` refused one that lacks a folder)."""

    def check_replicas(self, dataset: str) -> None:
        volumes.check_volume_settings(self.options.volume_type, self.options.iops, self.options.throughput_mbps)
        self.clients.check_region()
        self.clients.check_credentials()
        self.snapshot(dataset)

    def snapshot(self, dataset: str) -> dict:
        return volumes.find_snapshot(self.clients, dataset, self.options.snapshot_owner, self.options.parallel_calls)

    def check_subnet(self, zone: str) -> str | None:
        """The user's subnet as the machines need it (InputError otherwise); returns, having logged it, what may
        yet keep them from EFS (network.resolver_doubt)."""
        try:
            subnet = self.clients.ec2.describe_subnets(SubnetIds=[self.options.subnet_id])["Subnets"][0]
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"subnet {self.options.subnet_id} not found: {exc}") from None
        if subnet["AvailabilityZone"] != zone:
            raise InputError(f"subnet {self.options.subnet_id} is in {subnet['AvailabilityZone']}, the run's "
                             f"zone is {zone}; set aws.availability_zone to match")
        if doubt := network.check_way_out(self.clients.ec2, subnet):
            log.warning("%s", doubt)
        return doubt

    def default_subnet(self, zone: str) -> str:
        """The subnet EC2 would launch into without one named: the default VPC's in `zone`. The dry run needs a
        subnet (without one, an account with no default VPC answers VPCIdNotSpecified) and the run's own is
        made only after the pre-flight."""
        found = self.clients.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]},
                                                           {"Name": "availability-zone", "Values": [zone]}])
        if not found["Subnets"]:
            raise InputError(f"this account has no default subnet in {zone} (no default VPC in "
                             f"{self.options.region}?), so EC2 cannot check the launch before anything is made: "
                             f"give aws.subnet_id (a subnet in {zone} with a route out), or make the default VPC: "
                             f"`aws ec2 create-default-vpc --region {self.options.region}`")
        return found["Subnets"][0]["SubnetId"]

    def dry_run_instances(self, spec: ClusterSpec, image: dict, subnet_id: str, profile: str | None = None) -> None:
        """EC2's own dry run of the launch, as the launch will ask for it: all machines at once, in the subnet,
        market, disks and tags the launch uses, so it checks these permissions before anything exists. The
        placement group is the run's own, made later, so it cannot name it; the instance profile it names once
        `authorize_launch` has made it (`profile`), and so checks that the role may be passed to EC2."""
        request = machines.launch_options(spec, image, tags.tag_list(spec.run_id, spec.expires_at))
        if profile:
            request["IamInstanceProfile"] = {"Name": profile}
        deadline, waited = time.monotonic() + PROFILE_PROPAGATION_S, False
        while True:
            try:  # retried as other calls are: a dry run asks for no capacity, so only throttling is worth retrying
                self.clients.ec2.run_instances(
                    **request, MinCount=spec.machines, MaxCount=spec.machines, SubnetId=subnet_id, DryRun=True)
            except Exception as exc:  # noqa: BLE001
                code = error_code(exc)
                if code == "DryRunOperation":
                    return
                if profile and machines.profile_propagating(exc) and time.monotonic() < deadline:
                    if not waited:
                        log.info("EC2 does not know the new instance profile %s yet: asking again", profile)
                    waited = True
                    time.sleep(PROFILE_PROPAGATION_POLL_S)
                    continue
                if code in machines.LIMIT_ERRORS:
                    raise InputError(f"{spec.machines} x {spec.instance_type} is over this account's limit ({code}): "
                                     "ask AWS for a quota increase or run fewer machines") from None
                if code == "PendingVerification":
                    raise InputError(f"AWS is still verifying this account's access to {self.clients.region}, and "
                                     "refuses its launches until then (PendingVerification): usually minutes, up to "
                                     f"4 hours; AWS emails when it is done. Run again then. AWS said: {exc}") from None
                if code == "UnauthorizedOperation" and profile:
                    raise InputError(f"these AWS credentials may not pass the machines' role {profile} to EC2 "
                                     f"(iam:PassRole): allow iam:PassRole on arn:aws:iam::*:role/{iam.ROLE_PREFIX}* "
                                     f"for them. AWS said: {exc}") from None
                if code == "UnauthorizedOperation":
                    raise InputError("these AWS credentials may not start instances as the run does (ec2:RunInstances, "
                                     f"ec2:CreateTags on launch). AWS said: {exc}") from None
                raise
            raise InputError("EC2 accepted a dry run as a real launch; refusing to go on")

    def authorize_launch(self, spec: ClusterSpec) -> None:
        """The run's role and instance profile (free; `prepare` finds them, teardown removes them), the account's
        service-linked roles the run needs (EFS's; EC2 Spot's for a spot run), then the launch's dry run naming the
        profile: credentials that may not make the roles or pass one to EC2 are refused here, before any replica is
        paid for, not at the launch or the mount target after them."""
        bucket = self.results_bucket
        try:
            profile = iam.ensure_instance_profile(self.clients, spec, bucket, run_folder(spec),
                                                  secrets.path(spec.run_id), parallel=self.options.parallel_calls)
        except botocore.exceptions.ClientError as exc:
            action = exc.operation_name
            if error_code(exc) in REFUSALS and action in self.clients.client("iam").meta.service_model.operation_names:
                raise InputError(f"these AWS credentials may not make the machines' role {iam.role_name(spec.run_id)} "
                                 f"(iam:{action} was refused): allow iam:{action} on the roles and instance profiles "
                                 f"named {iam.ROLE_PREFIX}* for them. AWS said: {exc}") from None
            raise
        self._ensure_service_linked_role(iam.EFS_SERVICE, "EFS", "the run's file system needs")
        if spec.spot:
            self._ensure_service_linked_role(iam.SPOT_SERVICE, "EC2 Spot", "a spot launch needs", ", or run on-demand")
        image = machines.resolve_ami(self.clients, self.options.ami)
        zone = self.zone(spec.instance_type)
        self.dry_run_instances(spec, image, self.options.subnet_id or self.default_subnet(zone), profile)

    def _ensure_service_linked_role(self, service: str, owner: str, needed_by: str, otherwise: str = "") -> None:
        try:
            iam.ensure_service_linked_role(self.clients, service)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in REFUSALS:
                raise
            raise InputError(
                f"these AWS credentials may not make {owner}'s service-linked role, which {needed_by} once per "
                f"account: allow iam:CreateServiceLinkedRole for {service} (as tasks/backends/aws/user_policy.json "
                f"does), have an administrator run `aws iam create-service-linked-role --aws-service-name {service}`"
                f"{otherwise}. AWS said: {exc}") from None

    def plan(self, spec: ClusterSpec, dataset: str, hours: float) -> CostPlan:
        snapshot = self.snapshot(dataset)
        return self.cost_plan(spec, snapshot["VolumeSize"], hours, from_pool=self._from_pool(spec, snapshot))

    def devices(self, spec: ClusterSpec) -> Devices:
        _check_instance_type(spec.instance_type)  # asked before check(): the auto schedule's world needs it
        kind = catalog.instance_type(spec.instance_type)
        return Devices(kind.gpu, kind.gpus)

    def cost_plan(self, spec: ClusterSpec, snapshot_gb: int, hours: float, from_pool: int = 0) -> CostPlan:
        """The run's machines, disks and file system for `hours`, its replicas made from a snapshot this big but
        `from_pool` of them, which the pool has made, warmed and pays for."""
        kind = catalog.instance_type(spec.instance_type)
        o = self.options
        size = volumes.volume_size_gb(o.volume_type, o.iops, snapshot_gb)
        hourly = self._spot_price(spec.instance_type) if spec.spot else prices.on_demand_usd(self.clients,
                                                                                             spec.instance_type)
        market = "spot" if spec.spot else "on-demand"
        cards = machines.efa_cards(spec.instance_type)
        efa = f", EFA on all {cards} network cards" if cards > 1 else ", EFA" if cards else ", no EFA: NCCL over TCP"
        public = self.public_addresses()
        elastic = " (an Elastic IP: the machine has an interface on each card)" if machines.needs_elastic_ips(
            spec.instance_type, public) else ""
        replica_hourly = catalog.volume_hourly_usd(o.volume_type, size, o.iops, o.throughput_mbps)
        warmup_s = self.volume_settings.warmup_seconds(snapshot_gb)
        made = spec.machines - from_pool
        return CostPlan((
            LineItem(f"{spec.instance_type} ({kind.gpus} x {kind.gpu}{efa}), {market}", spec.machines, hourly),
            LineItem(f"root disk, gp3 {catalog.ROOT_VOLUME_GB} GiB", spec.machines,
                     catalog.volume_hourly_usd("gp3", catalog.ROOT_VOLUME_GB, 3000, 125)),
            *([LineItem(f"dataset replica, {o.volume_type} {size} GiB at {o.iops} IOPS", made, replica_hourly)]
              if made else []),
            *([LineItem("dataset replica from the pool (`imagenet18 replicate`), paid for by the pool", from_pool,
                        0.0)] if from_pool else []),
            LineItem(f"EFS, about {catalog.EFS_EXPECTED_GB} GB", 1,
                     catalog.EFS_GB_MONTH * catalog.EFS_EXPECTED_GB / catalog.HOURS_PER_MONTH),
            *([LineItem(f"public IPv4 address{elastic}", spec.machines, addresses.HOURLY_USD)] if public else []),
        ), hours, Warmup(
            f"{made} dataset replica(s) fetching the {snapshot_gb} GiB snapshot at {o.initialization_mibps} "
            "MiB/s (the replicas' time; EBS's fee for the rate is not included)",
            warmup_s / 60, made * replica_hourly * warmup_s / 3600) if made else None)

    def public_addresses(self) -> bool:
        """Whether the machines will reach out through public addresses: on the run's own network they do."""
        if not self.options.subnet_id:
            return True
        [subnet] = self.clients.ec2.describe_subnets(SubnetIds=[self.options.subnet_id])["Subnets"]
        return bool(subnet.get("MapPublicIpOnLaunch"))

    def _spot_price(self, instance_type: str) -> float:
        """The zone's latest spot price; the on-demand price (spot's ceiling) when the API has none."""
        zone = self.zone(instance_type)
        return self.spot_prices(instance_type, zone).get(zone) or prices.on_demand_usd(self.clients, instance_type)

    def spot_prices(self, instance_type: str, zone: str | None = None) -> dict[str, float]:
        """zone -> the latest Linux spot price of the type, in `zone` or (None) every zone with one. A history
        that starts now holds each zone's price in effect now: AWS adds the last change before StartTime
        (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html)."""
        where = {"AvailabilityZone": zone} if zone else {}
        history = self.clients.ec2.describe_spot_price_history(
            InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"],
            StartTime=dt.datetime.now(dt.timezone.utc), **where)["SpotPriceHistory"]
        prices: dict[str, float] = {}
        for point in history:
            price, at = float(point["SpotPrice"]), point["AvailabilityZone"]
            if price > 0 and zone in (None, at):
                prices[at] = min(price, prices.get(at, price))
        return dict(sorted(prices.items()))

    # -- replicas -------------------------------------------------------------------------------------
    @property
    def volume_settings(self) -> volumes.VolumeSettings:
        o = self.options
        return volumes.VolumeSettings(o.volume_type, o.iops, o.throughput_mbps, o.initialization_mibps)

    def replicate(self, spec: ClusterSpec, dataset: str, count: int, pool: bool = False) -> list[Resource]:
        o = self.options
        if pool:  # a run's pre-flight checked them
            volumes.check_volume_settings(o.volume_type, o.iops, o.throughput_mbps)
        # The lookups go at once: the snapshot, the run's volumes (a retry reuses them), the pool's replicas (a
        # run claims those of its snapshot and zone before it makes any; a pool keeps them), the region's zones
        # beside the zones offering the type (which keeps only the region's available ones). `zone()` waits for
        # that zones lookup rather than repeating it: Python 3.11's cached_property computes under a lock
        # (3.12 dropped it; pyproject pins 3.11).
        with pools.pool(o.parallel_calls, 4) as calls:
            snapshot = calls.submit(self.snapshot, dataset)
            existing = calls.submit(lambda: {} if pool else volumes.run_volumes(self.clients, spec.run_id))
            # A pool's own replicas still creating are a failed try's, which this one goes on with.
            in_pool = calls.submit(volumes.pool_volumes, self.clients, ("creating", "available") if pool else
                                   ("available",))
            calls.submit(lambda: self.clients.zones)
            zone = self.zone(spec.instance_type)
            servable = volumes.servable(in_pool.result(), snapshot.result(), zone, self.volume_settings)
            if pool:  # a run's pre-flight checked its keys; a pool has none
                self.check_disk_keys(self.clients.check_credentials(), snapshot.result(), root_disks=False)
                held = volumes.keep(self.clients, servable, spec.expires_at, count)
                indices = [*held, *volumes.unused_pool_indices(self.clients, count - len(held))]
            else:
                held = existing.result()
                held |= volumes.claim(self.clients, spec, servable, [i for i in range(count) if i not in held])
                indices = list(range(count))
            # Again here: a replica pool has no pre-flight, and a run's retry may come long after its own.
            self._check_volume_quotas(snapshot.result(), count - len(held))
            return volumes.replicate(self.clients, spec, snapshot.result(), zone, indices, self.volume_settings,
                                     o.parallel_calls, held)

    def delete_replicas(self, run_id: str) -> list[Resource]:
        if run_id == POOL_OWNER:
            return volumes.delete_pool(self.clients)
        found = volumes.replicas(self.clients, run_id)
        for claimed in (r for r in found if "pool_index" in r.details):
            volumes.give_back(self.clients, claimed)
        volumes.delete(self.clients, [r.id for r in found if "pool_index" not in r.details])
        return found

    # -- machines -------------------------------------------------------------------------------------
    def prepare(self, spec: ClusterSpec, zone: str | None = None) -> ClusterParts:
        """What the machines need but their replicas, so the flow makes it while the replicas are made: the
        network in the replicas' zone, the results bucket with the code in it, the machines' role, the AMI's
        details and the file system. Its mount target is made by `provision`, beside the machines: it needs the
        subnet, and takes about a minute and a half on AWS, while the machines boot and retry the mount."""
        folder = run_folder(spec)
        bucket = self.results_bucket
        with pools.pool(self.options.parallel_calls, 5) as pool:
            uploaded = pool.submit(storage.upload_project, self.clients, bucket, code_url(bucket, folder))
            profile = pool.submit(iam.ensure_instance_profile, self.clients, spec, bucket, folder,
                                  secrets.path(spec.run_id), parallel=self.options.parallel_calls)
            image = pool.submit(machines.resolve_ami, self.clients, self.options.ami)
            file_system = pool.submit(efs.ensure_file_system, self.clients, spec)
            net = self._network(spec, zone or self.zone(spec.instance_type))
            uploaded.result()
            return ClusterParts(net, file_system.result(), image.result(), profile.result(), bucket, folder)

    def provision(self, spec: ClusterSpec, replicas: list[Resource], prepared: ClusterParts | None = None
                  ) -> Cluster:
        """The machines, replica i attached to machine i, from what `prepare` made: made here when none is given
        (a restart), or when the replicas are no longer in the zone it was made for."""
        replicas = self._replicas_now(spec, replicas)
        zone = replicas[0].details["zone"]
        parts = prepared if prepared and prepared.network.zone == zone else self.prepare(spec, zone)
        boot = machines.BootConfig(parts.file_system, self.options.region, code_url(parts.bucket, parts.folder),
                                   max_hours=spec.hours_left)
        with pools.pool(self.options.parallel_calls, 2) as pool:
            mounted = pool.submit(efs.ensure_mount_target, self.clients, parts.file_system, parts.network.subnet_id,
                                  parts.network.security_group_id)
            spec, started = self._start_machines(spec, parts, replicas, boot)
            mounted.result()
        return self._cluster(spec, dict(enumerate(started)), parts.bucket, parts.folder)

    def cluster(self, run_id: str) -> Cluster:
        """The run's cluster as its machines' tags say, for a process that did not make it: its pending and
        running machines by index (a lost one is missing until a restart replaces it)."""
        found = {int(tags.as_dict(i.get("Tags"))[tags.INDEX]): i
                 for i in machines.instances(self.clients, run_id, ["pending", "running"])}
        if not found:
            raise BackendError(f"run {run_id} has no machine running in {self.options.region}")
        head = found[min(found)]
        head_tags = tags.as_dict(head.get("Tags"))
        run_name = head_tags["Name"].partition(".")[2]  # "<index>.<run name>", as the machines are named
        spec = ClusterSpec(run_id, run_name, max(found) + 1, head["InstanceType"],
                           head.get("InstanceLifecycle") == "spot", tags.expires(head_tags))
        return self._cluster(spec, found, self.results_bucket,
                             run_folder(spec))

    def _cluster(self, spec: ClusterSpec, started: dict[int, dict], bucket: str, folder: str) -> Cluster:
        data_root = f"{DATA_MOUNT}/{self.options.dataset_folder}"
        cluster_machines = tuple(Machine(i, instance["InstanceId"], instance["PrivateIpAddress"], data_root)
                                 for i, instance in sorted(started.items()))
        connect = self._connect(started[min(started)], network.key_path(self.key_folder, spec))
        return Cluster(spec, cluster_machines, f"s3://{bucket}/{folder}",
                       catalog.instance_type(spec.instance_type).gpus, connect,
                       node_storage=f"{EFS_MOUNT}/{folder}", python=machines.MACHINE_PYTHON)

    def _replicas_now(self, spec: ClusterSpec, given: list[Resource]) -> list[Resource]:
        """The run's replicas as they are now, found by tag: a zone move replaced the ones the replicate stage
        returned, which a restart passes again. The given ones when none are the run's (a pool made ahead)."""
        current = volumes.replicas(self.clients, spec.run_id) or given
        if len(current) < spec.machines:
            raise InputError(f"{spec.machines} machines need {spec.machines} replicas, there are {len(current)}")
        return sorted(current, key=lambda r: r.details["index"])

    def _network(self, spec: ClusterSpec, zone: str) -> network.Network:
        return network.ensure_network(self.clients, spec, zone, self.options.subnet_id, self.options.ssh_cidr,
                                      self.key_folder, self.options.parallel_calls)

    def _start_machines(self, spec: ClusterSpec, parts: ClusterParts, replicas: list[Resource],
                        boot: machines.BootConfig) -> tuple[ClusterSpec, list[dict]]:
        """The machines in the replicas' zone or, when AWS has no capacity there for any type the user allowed,
        in the next zone the user allowed; never a mix of types or zones (one DDP job wants identical machines,
        close together)."""
        tried: list[str] = []
        net = parts.network
        for zone in (net.zone, *(z for z in self.options.other_availability_zones if z != net.zone)):
            if zone != net.zone:
                net, replicas = self._move(spec, net, replicas, zone, parts.file_system)
            types = self._types_offered_in(zone, spec.instance_type)
            started = self._start_as_first_with_capacity(spec, types, net, parts.image, parts.profile,
                                                         [r.id for r in replicas[:spec.machines]], boot)
            if started:
                return started
            tried.append(f"{', '.join(types)} in {zone}")
        raise BackendError(f"AWS has no capacity for {'; '.join(tried)} now; try later, or allow other types "
                           "(aws.other_instance_types) or zones (aws.other_availability_zones)")

    def _types_offered_in(self, zone: str, instance_type: str) -> list[str]:
        """The asked type, then the other types the user allowed: those offered in `zone`."""
        allowed = dict.fromkeys((instance_type, *self.options.other_instance_types))
        return [t for t in allowed if zone in self.clients.zones_offering(t)]

    def _start_as_first_with_capacity(self, spec: ClusterSpec, types: list[str], net: network.Network,
                                      image: dict, profile: str, volume_ids: list[str],
                                      boot: machines.BootConfig) -> tuple[ClusterSpec, list[dict]] | None:
        """Every machine as the first of `types` AWS has capacity for in the network's zone; None when none."""
        for instance_type in types:
            attempt = dataclasses.replace(spec, instance_type=instance_type)
            try:
                return attempt, machines.run_machines(self.clients, attempt, net, image, profile, volume_ids, boot,
                                                      self.options.parallel_calls)
            except machines.CapacityError as exc:
                log.warning("%s; terminating this run's %s machines", exc, instance_type)
                machines.terminate(self.clients, spec.run_id)
        return None

    def _move(self, spec: ClusterSpec, net: network.Network, replicas: list[Resource], zone: str,
              fs_id: str) -> tuple[network.Network, list[Resource]]:
        """The run's zone-bound parts made in `zone`: its replicas, and a subnet with a mount target of the
        run's file system (EFS is regional). What stays in the old zone carries the run's tag for teardown."""
        log.warning("AWS has no capacity in %s for any type allowed; moving run %s to %s "
                    "(aws.other_availability_zones)", net.zone, spec.run_id, zone)
        o = self.options
        with pools.pool(o.parallel_calls, 2) as pool:
            moved = pool.submit(volumes.move, self.clients, spec, replicas, zone, self.volume_settings,
                                o.parallel_calls)
            net = self._network(spec, zone)
            efs.ensure_mount_target(self.clients, fs_id, net.subnet_id, net.security_group_id)
            return net, moved.result()

    def _connect(self, head: dict, key: Path) -> str:
        ssm = f"aws ssm start-session --region {self.options.region} --target {head['InstanceId']}"
        if self.options.ssh_cidr and head.get("PublicIpAddress"):
            return f"{ssm}   or   ssh -i {key} ubuntu@{head['PublicIpAddress']}"
        return ssm

    def launch(self, cluster: Cluster, commands: dict[int, list[str]], name: str) -> None:
        stored = secrets.store(self.clients, cluster.spec)
        jobs.wait_for_agents(self.clients, [cluster.machines[i].id for i in sorted(commands)], self.agent_timeout_s)

        def send(index: int) -> str:
            script = jobs.launch_script(cluster, index, commands[index], name, self.options.region, stored)
            return jobs.send(self.clients, cluster.machines[index].id, script, jobs.job_comment(name, index),
                             cluster.spec.hours_left)

        with pools.pool(self.options.parallel_calls, len(commands)) as pool:
            list(pool.map(send, sorted(commands)))

    def stop(self, cluster: Cluster, name: str) -> None:
        running = [i["InstanceId"] for i in machines.instances(self.clients, cluster.spec.run_id, ["running"])]
        # A machine whose status checks failed takes no command (the provision after a stop replaces it).
        alive = set(running) - set(health.impaired(self.clients, running))
        since = dt.datetime.now(dt.timezone.utc)
        sent = {m.id: jobs.send(self.clients, m.id, jobs.stop_script(cluster, m.index, name),
                                f"imagenet18 stop {name} {m.index}", 1.0)
                for m in cluster.machines if m.id in alive}
        jobs.wait_for_commands(self.clients, sent, since)

    def status(self, cluster: Cluster, name: str) -> JobStatus:
        return jobs.status(self.clients, cluster, name)

    def read_storage(self, cluster: Cluster, relative_path: str, offset: int = 0) -> bytes:
        return jobs.read(self.clients, f"{cluster.storage}/{relative_path}", offset)

    # -- find, tear down, sweep -----------------------------------------------------------------------
    def resources(self, run_id: str | None = None) -> list[Resource]:
        return inventory.find(self.clients, run_id)

    def teardown(self, run_id: str) -> list[Resource]:
        return teardown(self.clients, run_id, self.key_folder)

    def sweep(self, finished: Callable[[str], bool]) -> list[Resource]:
        """In every region enabled for the account, not this backend's alone: a run or a replica pool made with
        another region leaves its disks and machines there."""
        if self.clients.session.get_credentials() is None:
            raise BackendError("no AWS credentials here, so no region was looked in")
        sweep = Sweep()
        unseen: dict[str, str] = {}
        for clients, found in self._leftovers_everywhere(unseen):
            by_run: dict[str, list[Resource]] = {}
            for resource in found:
                by_run.setdefault(resource.run_id, []).append(resource)
            for run_id, resources in sorted(by_run.items()):
                pool = run_id == POOL_OWNER  # made ahead of runs, each replica with its own expiry
                if not pool and not any(r.expired for r in resources) and not sweep.finished(run_id, finished):
                    continue
                sweep.tear_down(run_id, functools.partial(volumes.sweep_pool, clients) if pool else
                                functools.partial(teardown, clients, run_id, self.key_folder), f" in {clients.region}")
        not_looked_in = "; ".join(f"{region} ({why})" for region, why in sorted(unseen.items()))
        return sweep.removed(also=[f"the other regions were swept, but not {not_looked_in}: the next cleanup looks "
                                   "again"] if unseen else [])

    def _leftovers_everywhere(self, unseen: dict[str, str]) -> list[tuple[Clients, list[Resource]]]:
        """What carries our tag in each enabled region, looked in at once; this region's with the global IAM
        identities (a run's teardown in its own region removes its identities too, after its machines). A region
        that refuses us (an organization's policy may deny some) is passed over with a warning; one that fails
        otherwise goes into `unseen` (region -> why), and the others are swept all the same."""
        home = self.clients.region

        def look(region: str) -> tuple[Clients, list[Resource]]:
            clients = self.clients if region == home else Clients(region, self.clients.journals)
            try:
                return clients, inventory.find(clients, identities=region == home)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                if error_code(exc) in REFUSALS and region != home:
                    log.warning("did not look for leftovers in %s: AWS refused it (%s)", region, error_code(exc))
                else:
                    log.warning("could not look for leftovers in %s: %s", region, exc)
                    unseen[region] = error_code(exc) or type(exc).__name__
                return clients, []

        try:
            regions = self.clients.enabled_regions()
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in REFUSALS:
                raise
            log.warning("could not list the account's regions (AWS answered %s): only %s was looked in",
                        error_code(exc), home)
            regions = [home]
        with pools.pool(self.options.parallel_calls, len(regions)) as pool:
            return [*pool.map(look, regions[1:]), look(home)]
