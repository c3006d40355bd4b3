"""What the AWS tests share: the options and cluster specs they run with, an account's network and KMS keys as a user
may have them, a capacity fault in a zone, and waiting for a job."""

from __future__ import annotations

import datetime as dt
import time

from tasks.backends.aws import AwsBackend, AwsOptions, tags, volumes
from tasks.backends.base import ClusterSpec, JobStatus
from tests.awssim.images import UBUNTU_2204

DATASET = "imagenet18-backup"  # the description of the AWS tests' dataset snapshot, as the seed's was
AMI = UBUNTU_2204.image_id  # the simulator's Deep Learning Base AMI: its boot is checked against the AMI's facts
BUCKET = "imagenet18-test-results"


def options(**overrides) -> AwsOptions:
    return AwsOptions(**{"ami": AMI, "bucket": BUCKET, "dataset_folder": "demo", **overrides})


def cluster_spec(run_id: str, machines: int, instance_type: str = "p4d.24xlarge", spot: bool = False,
                 hours: float = 2.0) -> ClusterSpec:
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
    return ClusterSpec(run_id, f"test-{run_id}", machines, instance_type, spot, expires)


def dataset_in_s3(aws) -> None:
    """s3://datasets/imagenet, with its -sz/160 copy: a snapshot builder's source."""
    s3 = aws.make_bucket("datasets")
    for folder in ("imagenet", "imagenet-sz/160"):
        s3.put_object(Bucket="datasets", Key=f"{folder}/train/n01440764/a.JPEG", Body=b"jpeg")


def customer_managed_key(aws, state: str = "Enabled", ebs_default: bool = False) -> str:
    """A customer managed KMS key in `state` (Enabled, Disabled or PendingDeletion), the account's default for EBS
    if asked; returns its ARN."""
    kms, key = aws.client("kms"), aws.client("kms").create_key()["KeyMetadata"]
    if ebs_default:
        aws.client("ec2").modify_ebs_default_kms_key_id(KmsKeyId=key["Arn"])
    if state == "Disabled":
        kms.disable_key(KeyId=key["KeyId"])
    elif state == "PendingDeletion":
        kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    return key["Arn"]


def bucket_under_key(aws, bucket: str, key: str | None, region: str = "us-east-1") -> None:
    """A bucket whose default encryption is SSE-KMS under `key` (None: the AWS managed key aws/s3), as a team's
    bucket often is."""
    s3 = aws.make_bucket(bucket, region)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                **({"KMSMasterKeyID": key} if key else {})}}]})


def owned_encrypted_snapshot(aws, description: str, key: str | None = None) -> dict:
    """A snapshot of the account's own, encrypted with `key` (default: the account's default EBS key), as the
    snapshot builder's are; its volume is deleted. Returns the snapshot as CreateSnapshot answered."""
    ec2 = aws.client("ec2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True,
                               **({"KmsKeyId": key} if key else {}))["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume, Description=description)
    aws.delete_volume_once_made(volume)
    return snapshot


def delete_default_vpc(aws) -> None:
    """An account without a default VPC: some never had one, some owners delete it."""
    ec2 = aws.client("ec2")
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])[
            "InternetGateways"]:
        ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc["VpcId"])
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    ec2.delete_vpc(VpcId=vpc["VpcId"])


def users_subnet(aws, way_out: bool = True, public: bool = True, dns_hostnames: bool = True,
                 through_nat: bool = False, target_gone: bool = False, dns_servers: tuple[str, ...] = ()) -> str:
    """A subnet in us-east-1a of a VPC of the user's own, by default as the machines need it: a route out through
    an internet gateway (or, through_nat, a NAT gateway in another subnet), public addresses on launch, both DNS
    attributes on. target_gone: the route stays, its gateway detached (its NAT gateway deleted). dns_servers: the
    VPC's DHCP options name these (a company's resolvers, say)."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.0.0/20", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    if way_out:
        gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        if through_nat:
            outer = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.16.0/20")["Subnet"]["SubnetId"]
            address = ec2.allocate_address(Domain="vpc")["AllocationId"]
            nat = ec2.create_nat_gateway(SubnetId=outer, AllocationId=address)["NatGateway"]["NatGatewayId"]
            ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
        else:
            ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
        if target_gone and through_nat:
            ec2.delete_nat_gateway(NatGatewayId=nat)
        elif target_gone:
            ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": public})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": dns_hostnames})
    if dns_servers:
        options = ec2.create_dhcp_options(DhcpConfigurations=[
            {"Key": "domain-name-servers", "Values": list(dns_servers)}])["DhcpOptions"]["DhcpOptionsId"]
        ec2.associate_dhcp_options(DhcpOptionsId=options, VpcId=vpc)
    return subnet


def agents_online(ssm, *instance_ids: str) -> bool:
    """Whether SSM lists the agent of each machine, Online."""
    found = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": list(instance_ids)}])
    return sorted(i["InstanceId"] for i in found["InstanceInformationList"] if i["PingStatus"] == "Online") == sorted(
        instance_ids)


def finished(backend: AwsBackend, cluster, job: str, timeout_s: float = 120.0) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while not (status := backend.status(cluster, job)).done:
        assert time.monotonic() < deadline, f"{job} still running after {timeout_s:.0f} s: {status}"
        time.sleep(1)
    return status


def no_capacity_in(aws, zone: str) -> None:
    aws.add_fault("ec2", "RunInstances", "InsufficientInstanceCapacity",
                  match={"Placement.AvailabilityZone": zone})


def run_zones(aws, run_id: str) -> dict[str, list[str]]:
    """The zones of the run's live machines and of its dataset replicas, asked directly."""
    ec2, where = aws.client("ec2"), tags.run_filter(run_id)
    live = [i for r in ec2.describe_instances(Filters=where)["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] in ("pending", "running")]
    replicas = ec2.describe_volumes(Filters=where + [{"Name": f"tag:{volumes.KIND}", "Values": [volumes.REPLICA]}])
    return {"machines": sorted(i["Placement"]["AvailabilityZone"] for i in live),
            "replicas": sorted(v["AvailabilityZone"] for v in replicas["Volumes"])}
