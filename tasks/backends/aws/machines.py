"""The run's machines: one instance per index, all in one launch request, on-demand or spot, with EFA where
their type has it, IMDSv2 only, encrypted root disk, terminating on shutdown, with user-data that mounts the
dataset volume and EFS and installs the project; volume i is attached to machine i."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from string import Template

import botocore.exceptions

from tasks.backends.aws import addresses, catalog, health, pools, quotas, tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.network import Network
from tasks.backends.aws.once import answer_lost
from tasks.backends.aws.waiting import until, waiter_config
from tasks.backends.base import BackendError, ClusterSpec, InputError, Resource

# The Deep Learning Base AMI (NVIDIA driver, CUDA, EFA) through its public SSM parameter.
SUPPORTED_UBUNTU = "22.04"
DEFAULT_AMI_PARAMETER = ("/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-"
                         f"{SUPPORTED_UBUNTU}/latest/ami-id")
DATA_DEVICE = "/dev/sdf"
DATA_MOUNT = "/mnt/data"  # where user-data mounts the machine's dataset volume
EFS_MOUNT = "/mnt/efs"  # and the run's shared file system
MACHINE_PYTHON = "/opt/imagenet18/.venv/bin/python"  # user-data installs the project there
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
CAPACITY_ERRORS = ("InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow",
                   "InsufficientFreeAddressesInSubnet")
# The state reason of machines EC2 ends as they start, for lack of capacity, after it accepted their launch.
ENDED_FOR_CAPACITY = "Server.InsufficientInstanceCapacity"
LIMIT_ERRORS = ("VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded")
# EC2 refuses a new account's launches in a region (PendingVerification) until AWS has verified it: "normally
# resolved within minutes, please allow up to 4 hours", it answers. The run's replicas exist by the launch, so it
# asks again for a while before it gives up.
VERIFICATION_WAIT_S = 15 * 60.0
VERIFICATION_POLL_S = 30.0
# EC2 counts a machine let go against its vCPU quota while it shuts down, and "for a while after" it is terminated
# (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html): a launch refused over the quota where
# such machines were let go and the account's pending and running ones leave room is asked again (a replacement
# beside the machine it replaces, a run just after another's teardown; quotas.fits_once_let_go).
RELEASE_WAIT_S = 10 * 60.0
RELEASE_POLL_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootConfig:
    """What user-data needs besides the machine's own volume."""
    file_system_id: str | None  # None: no shared file system (the snapshot builder)
    region: str
    code_url: str
    max_hours: float
    format_volume: bool = False  # only the snapshot builder's empty volume


def resolve_ami(clients: Clients, ami: str | None) -> dict:
    ec2 = clients.ec2
    if ami is None:
        try:
            ami = clients.client("ssm").get_parameter(Name=DEFAULT_AMI_PARAMETER)["Parameter"]["Value"]
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"could not look up the Deep Learning Base AMI in {clients.region} ({exc}); "
                             "give one with aws.ami") from None
    try:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
    except Exception as exc:  # noqa: BLE001 - InvalidAMIID.*
        raise InputError(f"AMI {ami} not found in {clients.region}: {exc}") from None
    if not images:
        raise InputError(f"AMI {ami} not found in {clients.region}")
    return images[0]


def check_image_release(image: dict) -> None:
    """The machines' boot (user_data.sh) is made for the Deep Learning Base AMI on Ubuntu 22.04, its Python 3.11
    from the deadsnakes PPA for that release: an image whose name or description says it is another system is
    refused. One that says nothing (an image of the user's own) is left to its boot, which reports what it
    misses."""
    said = f"{image.get('Name', '')} {image.get('Description', '')}"
    release = re.search(r"\bUbuntu[ -]?(\d\d\.\d\d)", said, re.IGNORECASE)
    other = re.search(r"\b(Amazon Linux|AL2023|Red Hat|RHEL|Rocky|Debian|SUSE|Windows)\b", said, re.IGNORECASE)
    if (release and release.group(1) != SUPPORTED_UBUNTU) or (other and not release):
        system = f"Ubuntu {release.group(1)}" if release else other.group(1)
        raise InputError(f"AMI {image['ImageId']} ({image.get('Name') or 'unnamed'}) is {system}: the machines' boot "
                         f"is made for Ubuntu {SUPPORTED_UBUNTU}; use a Deep Learning Base AMI for Ubuntu "
                         f"{SUPPORTED_UBUNTU} (the default, without aws.ami)")


def user_data(spec: ClusterSpec, volume_ids: list[str], boot: BootConfig) -> str:
    """One script for every machine of one launch request: each finds its own volume by its launch index."""
    template = Template(resources.files("tasks.backends.aws").joinpath("user_data.sh").read_text())
    mount_efs = ("# The run's shared file system (its mount target may still be coming up: machines start meanwhile);\n"
                 "# its security group admits only the run's machines. AWS's options for EFS; _netdev: a boot mounts\n"
                 "# it once the network is up.\n"
                 f"echo '{boot.file_system_id}.efs.{boot.region}.amazonaws.com:/ {EFS_MOUNT} nfs4 nfsvers=4.1,"
                 "rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,_netdev,nofail 0 0' >>/etc/fstab\n"
                 f"for _ in $(seq 1 60); do mount {EFS_MOUNT} && break; sleep 10; done\n"
                 f"mountpoint -q {EFS_MOUNT}") if boot.file_system_id else ""
    builder = boot.format_volume
    return template.substitute(
        run_id=spec.run_id, shutdown_minutes=max(1, round(boot.max_hours * 60)),
        volume_serials=" ".join(v.replace("-", "") for v in volume_ids), code_url=boot.code_url,
        mount_efs=mount_efs, mount_options="noatime" if builder else "ro,noatime",
        format_volume='blkid "$device" || mkfs.ext4 -q -L imagenet18 "$device"' if builder else "")


def run_machines(clients: Clients, spec: ClusterSpec, network: Network, image: dict, profile: str,
                 volume_ids: list[str], boot: BootConfig, parallel: int) -> list[dict]:
    """One instance per volume, those this run lacks in one launch request; those it already has are reused.
    Returns them running, with volume i attached to machine i."""
    live = [i for i in instances(clients, spec.run_id, states=["pending", "running"])
            if i["InstanceType"] == spec.instance_type]
    broken = health.impaired(clients, [i["InstanceId"] for i in live])
    if broken:  # described running, but of no use: replaced, as lost machines are
        log.warning("replacing %s", "; ".join(f"{machine} ({why})" for machine, why in broken.items()))
        clients.ec2.terminate_instances(InstanceIds=list(broken))
        # Until EC2 lists them let go: a launch at the vCPU quota is asked again only for machines listed so.
        until("the failed machine(s) to shut down", lambda: not {i["InstanceId"] for i in instances(
            clients, spec.run_id, states=["pending", "running"])} & set(broken), timeout=RELEASE_WAIT_S,
            poll=RELEASE_POLL_S)
        live = [i for i in live if i["InstanceId"] not in broken]
    existing = {tags.as_dict(i.get("Tags")).get(tags.INDEX): i for i in live}
    unnamed = [i["InstanceId"] for i in live if tags.INDEX not in tags.as_dict(i.get("Tags"))]
    if unnamed:  # launched by a try that stopped before it tagged them: no volume is theirs
        clients.ec2.terminate_instances(InstanceIds=unnamed)

    missing = [i for i in range(len(volume_ids)) if str(i) not in existing]
    launched = _run_all(clients, spec, network, image, profile, missing, [volume_ids[i] for i in missing], boot,
                        parallel) if missing else {}
    started = [existing.get(str(i)) or launched[i] for i in range(len(volume_ids))]
    ids = [i["InstanceId"] for i in started]
    ec2 = clients.ec2
    # The volumes are read while the machines boot, and the machines (running by then, so with their
    # addresses) while the volumes attach.
    with pools.pool(parallel, 2) as pool:
        volumes = pool.submit(ec2.describe_volumes, VolumeIds=volume_ids)
        _wait_running(clients, spec, network, ids)
        if needs_elastic_ips(spec.instance_type, network.public_addresses):
            # EC2 refuses one on a pending machine's interface; the boot waits for its way out meanwhile.
            addresses.attach(clients, spec, started, parallel)
        by_id = {v["VolumeId"]: v for v in volumes.result()["Volumes"]}
        attach_all(clients, [by_id[v] for v in volume_ids], ids, parallel)
        described = pool.submit(describe, clients, ids)
        ec2.get_waiter("volume_in_use").wait(VolumeIds=volume_ids, WaiterConfig=waiter_config())
        return described.result()


def _wait_running(clients: Clients, spec: ClusterSpec, network: Network, ids: list[str]) -> None:
    """Until the machines run. EC2 may end those of a launch it accepted as they start (API_StateReason): for lack
    of capacity, which is a CapacityError as a refused launch's would be, or otherwise, said with EC2's reason."""
    try:
        clients.ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=waiter_config())
    except botocore.exceptions.WaiterError as exc:
        seen = [i for r in (exc.last_response or {}).get("Reservations", []) for i in r["Instances"]]
        ended = {i["InstanceId"]: i.get("StateReason", {}) for i in seen or describe(clients, ids)
                 if i["State"]["Name"] in ("shutting-down", "terminated")}
        if any(reason.get("Code") == ENDED_FOR_CAPACITY for reason in ended.values()):
            raise CapacityError(ENDED_FOR_CAPACITY, spec.instance_type, network.zone) from exc
        if not ended:
            raise
        said = "; ".join(sorted({reason.get("Message") or reason.get("Code", "?") for reason in ended.values()}))
        hint = ("; often the KMS key of the machines' encrypted disks cannot be used: the account's default EBS key "
                "(`aws ec2 get-ebs-default-kms-key-id`) disabled, deleted, or one these credentials may not use"
                if "Client.InternalError" in said else "")
        raise BackendError(f"machine(s) {', '.join(sorted(ended))} of run {spec.run_id} ended before they all ran "
                           f"({said}){hint}") from exc


def attach_all(clients: Clients, volumes: list[dict], instance_ids: list[str], parallel: int) -> None:
    """Volume i (as read before the machines ran) to machine i, all at once; one that is already there is left;
    a stale attachment (to a machine this run replaced) is detached first, as the seed did; a lost machine's is
    waited for while the machine shuts down (minutes: EC2 neither detaches nor attaches the volume meanwhile).
    Returns when each attach is asked for."""
    ec2 = clients.ec2

    def one(volume: dict, instance_id: str) -> None:
        volume_id = volume["VolumeId"]
        if volume.get("Attachments"):  # read again: a replaced machine may have let go of it meanwhile
            [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        attachments = [a for a in volume.get("Attachments", []) if a["State"] in ("attaching", "attached")]
        if any(a["InstanceId"] == instance_id for a in attachments):
            return
        for stale in attachments:
            try:
                ec2.detach_volume(VolumeId=volume_id, InstanceId=stale["InstanceId"], Force=True)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) != "IncorrectInstanceState":
                    raise
                [machine] = describe(clients, [stale["InstanceId"]])
                if machine["State"]["Name"] not in ("shutting-down", "terminated"):  # going, with the volume
                    raise
        if volume.get("Attachments"):
            ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=waiter_config())
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=DATA_DEVICE)

    with pools.pool(parallel, len(instance_ids)) as pool:
        list(pool.map(one, volumes, instance_ids))


def _run_all(clients: Clients, spec: ClusterSpec, network: Network, image: dict, profile: str, indices: list[int],
             volume_ids: list[str], boot: BootConfig, parallel: int) -> dict[int, dict]:
    """Machines `indices` in one request for all of them, all or none: AWS recommends one launch request for a
    cluster placement group, as capacity for a later request may be gone
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/placement-strategies.html#placement-groups-cluster).
    The request's k-th machine (its AmiLaunchIndex) is machine indices[k], and is tagged so."""
    # One token for every try: a try whose answer was lost (a 5xx, a dropped connection) is asked again, and EC2
    # answers with the machines it launched (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).
    request = {**launch_request(spec, network, image, profile, len(indices), volume_ids, boot),
               "ClientToken": uuid.uuid4().hex}
    ec2 = clients.client("ec2", retries=False)
    attempt, waiting_since = 0, {}
    while True:
        try:
            launched = ec2.run_instances(**request)["Instances"]
            break
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            if code in CAPACITY_ERRORS:
                raise CapacityError(code, spec.instance_type, network.zone) from exc
            if (patience := _patience(clients, spec, code, len(indices))) is not None:
                wait_s, poll_s, why = patience
                if code not in waiting_since:
                    waiting_since[code] = time.monotonic()
                    log.warning("%s (%s): the launch is asked again every %.0f s for up to %.0f min, the run's "
                                "replicas paid meanwhile", why, code, poll_s, wait_s / 60)
                if time.monotonic() - waiting_since[code] >= wait_s:
                    raise
                time.sleep(poll_s)
                continue
            # throttling and lost answers are retried here since this client has botocore's retries off
            attempt += 1
            retriable = profile_propagating(exc) or answer_lost(exc) or code in (
                "RequestLimitExceeded", "Throttling", "ThrottlingException")
            if not retriable or attempt >= 8:
                raise
            time.sleep(min(2 ** attempt * 0.25, 10))
    by_index = {indices[i["AmiLaunchIndex"]]: i for i in launched}

    def name(index: int) -> None:
        instance_id = by_index[index]["InstanceId"]
        clients.ec2.create_tags(Resources=[instance_id], Tags=[
            {"Key": "Name", "Value": f"{index}.{spec.run_name}"}, {"Key": tags.INDEX, "Value": str(index)}])

    with pools.pool(parallel, len(indices)) as pool:
        list(pool.map(name, indices))
    return by_index


def _patience(clients: Clients, spec: ClusterSpec, code: str, machines: int) -> tuple[float, float, str] | None:
    """For a launch refusal that time may lift: how long to ask again, how often, and why; None for any other."""
    if code == "PendingVerification":
        return VERIFICATION_WAIT_S, VERIFICATION_POLL_S, f"AWS is verifying this account's access to {clients.region}"
    if code in LIMIT_ERRORS and quotas.fits_once_let_go(clients, spec.instance_type, machines, spec.spot):
        return RELEASE_WAIT_S, RELEASE_POLL_S, ("EC2 still counts machines let go moments ago against the quota "
                                                "that the account's running machines leave room for")
    return None


def profile_propagating(exc: BaseException) -> bool:
    """EC2 does not know a new instance profile yet: it takes seconds to be usable ("Invalid IAM Instance Profile
    name"), so a launch naming it is asked again."""
    return error_code(exc) == "InvalidParameterValue" and "iamInstanceProfile" in str(exc)


class CapacityError(BackendError):
    def __init__(self, code: str, instance_type: str, zone: str):
        super().__init__(f"{code}: AWS has no {instance_type} capacity in {zone} right now")
        self.code, self.instance_type, self.zone = code, instance_type, zone


def launch_request(spec: ClusterSpec, network: Network, image: dict, profile: str, count: int,
                   volume_ids: list[str], boot: BootConfig) -> dict:
    return {
        **launch_options(spec, image, tags.tag_list(spec.run_id, spec.expires_at)), "MinCount": count,
        "MaxCount": count, "KeyName": network.key_name, **placement_in(network, spec.instance_type),
        "Placement": {"AvailabilityZone": network.zone, "GroupName": network.placement_group},
        "IamInstanceProfile": {"Name": profile},
        "UserData": user_data(spec, volume_ids, boot),
    }


def efa_cards(instance_type: str) -> int:
    """The network cards that get an EFA interface (see `placement_in`): every one the type has."""
    kind = catalog.INSTANCE_TYPES.get(instance_type)  # the snapshot builder's CPU type is not in the catalogue
    return kind.efa_interfaces if kind else 0


def needs_elastic_ips(instance_type: str, public_addresses: bool) -> bool:
    """Whether machines of this type, reaching out through public addresses, need Elastic IPs for them: EC2
    gives none at launch to a machine with more than one interface."""
    return public_addresses and efa_cards(instance_type) > 1


def placement_in(network: Network, instance_type: str) -> dict:
    """The subnet and security group, given as the machine's network interfaces where its type has EFA.

    Card 0 carries an EFA with ENA (IP traffic and an EFA device), each further card an EFA-only interface at
    device index 0 (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html). With one
    interface the launch asks for the public address; with more it cannot, and `run_machines` gives each
    machine an Elastic IP instead (see `addresses`)."""
    cards = efa_cards(instance_type)
    if not cards:
        return {"SubnetId": network.subnet_id, "SecurityGroupIds": [network.security_group_id]}
    interfaces = [{"NetworkCardIndex": card, "DeviceIndex": 0, "InterfaceType": "efa" if card == 0 else "efa-only",
                   "SubnetId": network.subnet_id, "Groups": [network.security_group_id], "DeleteOnTermination": True}
                  for card in range(cards)]
    if network.public_addresses and cards == 1:
        interfaces[0]["AssociatePublicIpAddress"] = True
    return {"NetworkInterfaces": interfaces}


def launch_options(spec: ClusterSpec, image: dict, machine_tags: list[dict]) -> dict:
    """What a launch asks of EC2 besides the run's network, role and disk: the pre-flight's dry run asks it too."""
    specs = tags.tag_specs("instance", machine_tags) + tags.tag_specs("volume", machine_tags)
    request = {
        "ImageId": image["ImageId"], "InstanceType": spec.instance_type,
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": image.get("RootDeviceName", "/dev/sda1"), "Ebs": {
            "VolumeSize": catalog.ROOT_VOLUME_GB, "VolumeType": "gp3", "Encrypted": True,
            "DeleteOnTermination": True}}],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": specs,
    }
    if spec.spot:
        request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        request["TagSpecifications"] = specs + tags.tag_specs("spot-instances-request", machine_tags)
    return request


def terminate(clients: Clients, run_id: str) -> None:
    """Every machine of the run, waiting until they are gone (their volumes are free again)."""
    ids = [i["InstanceId"] for i in instances(clients, run_id)]
    if ids:
        clients.ec2.terminate_instances(InstanceIds=ids)
        wait_terminated(clients, ids)


def wait_terminated(clients: Clients, ids: list[str]) -> None:
    """Until EC2 describes every one of these machines terminated. Not botocore's InstanceTerminated waiter, which
    gives up at once on a machine described pending or stopping: EC2 may describe a machine as it was before it
    was told to terminate for a moment, and one terminated while pending was pending."""
    def terminated() -> bool:
        pages = clients.ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
        return all(i["State"]["Name"] == "terminated" for page in pages for reservation in page["Reservations"]
                   for i in reservation["Instances"])

    until(f"machine(s) {', '.join(ids)} to terminate", terminated)


def instances(clients: Clients, run_id: str | None, states: list[str] = LIVE_STATES) -> list[dict]:
    filters = tags.run_filter(run_id) + [{"Name": "instance-state-name", "Values": states}]
    pages = clients.ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]]


def describe(clients: Clients, ids: list[str]) -> list[dict]:
    found = {i["InstanceId"]: i for r in clients.ec2.describe_instances(InstanceIds=ids)["Reservations"]
             for i in r["Instances"]}
    return [found[i] for i in ids]


def as_resource(instance: dict) -> Resource:
    instance_tags = tags.as_dict(instance.get("Tags"))
    return Resource("machine", instance["InstanceId"], instance_tags.get(tags.RUN, ""),
                    tags.expires(instance_tags), {"index": int(instance_tags.get(tags.INDEX, -1)),
                                                  "state": instance["State"]["Name"]})

