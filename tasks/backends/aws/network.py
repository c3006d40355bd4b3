"""A run's network: VPC, subnet, internet gateway and route (or the user's subnet), a security group open only
within itself and, for ssh, to the caller's CIDR, a key pair saved 0600, and a cluster placement group.
Each is looked up by the run's tag before it is created, so a retried provision creates nothing twice."""

from __future__ import annotations

import ipaddress
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from tasks.backends.aws import pools, tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.base import ClusterSpec

VPC_CIDR = "10.18.0.0/16"
SUBNET_PREFIX = 20  # 4,096 addresses per zone the run uses


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnet_id: str
    zone: str
    security_group_id: str
    key_name: str
    key_path: str
    placement_group: str


def resource_name(spec: ClusterSpec) -> str:
    return f"imagenet18-{spec.run_id}"


def ensure_network(clients: Clients, spec: ClusterSpec, zone: str, subnet_id: str | None, ssh_cidr: str | None,
                   key_folder: Path, parallel: int = 1) -> Network:
    """What depends on nothing starts at once (key pair, placement group); what needs only the VPC (gateway,
    DNS settings, security group, route table) starts when it exists, beside the subnet; the table's route
    waits for the gateway, and its association for the subnet. The longest chain is 5 calls: the VPC's
    lookup and creation, the subnet's, and the association."""
    ec2 = clients.ec2
    run_tags = tags.tag_list(spec.run_id, spec.expires_at, resource_name(spec))
    with pools.pool(parallel, 6) as pool:
        key = pool.submit(_ensure_key_pair, ec2, spec, key_folder, run_tags)
        placement_group = pool.submit(_ensure_placement_group, ec2, spec, run_tags)
        if subnet_id:
            vpc_id = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["VpcId"]
            group_id = _ensure_security_group(ec2, spec, vpc_id, ssh_cidr, run_tags)
        else:
            vpc_id = _ensure_vpc(ec2, spec, run_tags)
            gateway = pool.submit(_ensure_gateway, ec2, spec, vpc_id, run_tags)
            dns = pool.submit(_enable_dns, ec2, vpc_id)
            group = pool.submit(_ensure_security_group, ec2, spec, vpc_id, ssh_cidr, run_tags)
            table = pool.submit(_ensure_route_table, ec2, spec, vpc_id, gateway, run_tags)  # after `gateway`
            subnet_id = _ensure_subnet(ec2, spec, vpc_id, zone, run_tags)
            public = pool.submit(ec2.modify_subnet_attribute, SubnetId=subnet_id,
                                 MapPublicIpOnLaunch={"Value": True})
            _associate(ec2, table.result(), subnet_id)
            for done in (public, dns):
                done.result()
            group_id = group.result()
        key_name, key_path = key.result()
        return Network(vpc_id, subnet_id, zone, group_id, key_name, key_path, placement_group.result())


def _first(items: list[dict], key: str) -> str | None:
    return items[0][key] if items else None


def _ensure_vpc(ec2, spec: ClusterSpec, run_tags: list[dict]) -> str:
    found = ec2.describe_vpcs(Filters=tags.run_filter(spec.run_id))["Vpcs"]
    vpc_id = _first(found, "VpcId")
    if vpc_id is None:
        vpc = ec2.create_vpc(CidrBlock=VPC_CIDR, TagSpecifications=tags.tag_specs("vpc", run_tags))["Vpc"]
        vpc_id = vpc["VpcId"]
        if vpc.get("State") != "available":
            ec2.get_waiter("vpc_available").wait(VpcIds=[vpc_id])
    return vpc_id


def _enable_dns(ec2, vpc_id: str) -> None:
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})  # EFS mounts by DNS name


def _ensure_gateway(ec2, spec: ClusterSpec, vpc_id: str, run_tags: list[dict]) -> str:
    gateways = ec2.describe_internet_gateways(Filters=tags.run_filter(spec.run_id))["InternetGateways"]
    if not gateways:
        gateway_id = ec2.create_internet_gateway(
            TagSpecifications=tags.tag_specs("internet-gateway", run_tags))["InternetGateway"]["InternetGatewayId"]
        gateways = [{"InternetGatewayId": gateway_id, "Attachments": []}]
    gateway = gateways[0]
    if not any(a.get("VpcId") == vpc_id for a in gateway.get("Attachments", [])):
        ec2.attach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc_id)
    return gateway["InternetGatewayId"]


def _ensure_subnet(ec2, spec: ClusterSpec, vpc_id: str, zone: str, run_tags: list[dict]) -> str:
    """The run's subnet in `zone`: a run moved to another zone has one in each."""
    subnets = ec2.describe_subnets(Filters=tags.run_filter(spec.run_id))["Subnets"]
    subnet_id = _first([s for s in subnets if s["AvailabilityZone"] == zone], "SubnetId")
    if subnet_id is None:
        subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=_free_cidr(subnets), AvailabilityZone=zone,
                                      TagSpecifications=tags.tag_specs("subnet", run_tags))["Subnet"]["SubnetId"]
    return subnet_id


def _ensure_route_table(ec2, spec: ClusterSpec, vpc_id: str, gateway: Future, run_tags: list[dict]) -> dict:
    """The run's route table with a default route through the gateway (machines install the project from
    PyPI at boot: they need a public address, which the subnet gives them, and a route out)."""
    tables = ec2.describe_route_tables(Filters=tags.run_filter(spec.run_id))["RouteTables"]
    if tables:
        table = tables[0]
    else:
        table = ec2.create_route_table(VpcId=vpc_id, TagSpecifications=tags.tag_specs("route-table", run_tags))
        table = table["RouteTable"]
    if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table.get("Routes", [])):
        ec2.create_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0",
                         GatewayId=gateway.result())
    return table


def _associate(ec2, table: dict, subnet_id: str) -> None:
    if not any(a.get("SubnetId") == subnet_id for a in table.get("Associations", [])):
        ec2.associate_route_table(RouteTableId=table["RouteTableId"], SubnetId=subnet_id)


def _free_cidr(subnets: list[dict]) -> str:
    """The first block of the run's VPC that none of its subnets uses (10.18.0.0/20 for the first)."""
    used = {s["CidrBlock"] for s in subnets}
    blocks = (str(b) for b in ipaddress.ip_network(VPC_CIDR).subnets(new_prefix=SUBNET_PREFIX))
    return next(b for b in blocks if b not in used)


def _ensure_security_group(ec2, spec: ClusterSpec, vpc_id: str, ssh_cidr: str | None,
                           run_tags: list[dict]) -> str:
    found = ec2.describe_security_groups(Filters=tags.run_filter(spec.run_id))["SecurityGroups"]
    if found:
        return found[0]["GroupId"]
    group_id = ec2.create_security_group(
        GroupName=resource_name(spec), VpcId=vpc_id, TagSpecifications=tags.tag_specs("security-group", run_tags),
        Description="imagenet18 run: all traffic within the group (NCCL, EFS), ssh only from the caller")["GroupId"]
    rules = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
    if ssh_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": ssh_cidr, "Description": "ssh from the caller"}]})
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules)
    return group_id


def key_path(key_folder: Path, spec_or_run_id: ClusterSpec | str) -> Path:
    run_id = spec_or_run_id if isinstance(spec_or_run_id, str) else spec_or_run_id.run_id
    return key_folder / f"imagenet18-{run_id}.pem"


def _ensure_key_pair(ec2, spec: ClusterSpec, key_folder: Path, run_tags: list[dict]) -> tuple[str, str]:
    name, path = resource_name(spec), key_path(key_folder, spec)
    found = ec2.describe_key_pairs(Filters=tags.run_filter(spec.run_id))["KeyPairs"]
    if found and path.exists():
        return name, str(path)
    if found:  # the private key was lost with a crashed attempt: a new pair, since AWS keeps no copy
        ec2.delete_key_pair(KeyName=name)
    material = ec2.create_key_pair(KeyName=name, KeyType="ed25519",
                                   TagSpecifications=tags.tag_specs("key-pair", run_tags))["KeyMaterial"]
    key_folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(material)
    return name, str(path)


def _ensure_placement_group(ec2, spec: ClusterSpec, run_tags: list[dict]) -> str:
    name = resource_name(spec)
    try:
        ec2.create_placement_group(GroupName=name, Strategy="cluster",
                                   TagSpecifications=tags.tag_specs("placement-group", run_tags))
    except Exception as exc:  # noqa: BLE001 - only "it exists already" is fine
        if error_code(exc) != "InvalidPlacementGroup.Duplicate":
            raise
    return name
