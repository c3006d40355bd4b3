"""A run's network: VPC, subnet, internet gateway and route (or the user's subnet), a security group open only
within itself and, for ssh, to the caller's CIDR, a key pair saved 0600, and a cluster placement group.
Each is looked up by the run's tag before it is created, so a retried provision creates nothing twice."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from tasks.backends.aws import pools, tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.waiting import until
from tasks.backends.base import ClusterSpec, InputError

VPC_CIDR = "10.18.0.0/16"
SUBNET_PREFIX = 20  # 4,096 addresses per zone the run uses
PLACEMENT_GROUP_WAIT_S = 300.0  # for a new placement group to be available (Terraform's AWS provider waits as long)


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnet_id: str
    zone: str
    security_group_id: str
    key_name: str
    key_path: str
    placement_group: str
    public_addresses: bool  # the machines reach out through their own public address, not a NAT


def resource_name(spec: ClusterSpec) -> str:
    return f"imagenet18-{spec.run_id}"


def ensure_network(clients: Clients, spec: ClusterSpec, zone: str, subnet_id: str | None, ssh_cidr: str | None,
                   key_folder: Path, parallel: int = 1) -> Network:
    """What needs no VPC starts at once: the key pair, the placement group, the internet gateway, and the
    lookups of what the run has already (a retry reuses it). What needs the VPC (the gateway's attachment,
    DNS settings, security group, route table, subnet) starts when it exists; the default route waits for the
    attached gateway, the table's association for the subnet. The longest chain is 4 calls: the VPC's lookup
    and creation, then the subnet and the route table, then their association and the route."""
    ec2 = clients.ec2
    run_tags = tags.tag_list(spec.run_id, spec.expires_at, resource_name(spec))
    run_filter = tags.run_filter(spec.run_id)
    with pools.pool(parallel, 8) as pool:
        key = pool.submit(_ensure_key_pair, ec2, spec, key_folder, run_tags)
        placement_group = pool.submit(_ensure_placement_group, ec2, spec, run_tags)
        groups = pool.submit(lambda: ec2.describe_security_groups(Filters=run_filter)["SecurityGroups"])
        if subnet_id:
            [subnet] = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
            vpc_id, public = subnet["VpcId"], bool(subnet.get("MapPublicIpOnLaunch"))
            group_id = _ensure_security_group(ec2, spec, vpc_id, ssh_cidr, run_tags, groups.result())
        else:
            subnets = pool.submit(lambda: ec2.describe_subnets(Filters=run_filter)["Subnets"])
            tables = pool.submit(lambda: ec2.describe_route_tables(Filters=run_filter)["RouteTables"])
            gateway = pool.submit(_ensure_gateway, ec2, spec, run_tags)
            vpc_id = _ensure_vpc(ec2, spec, run_tags)
            attached = pool.submit(_attach_gateway, ec2, gateway, vpc_id)  # after `gateway`
            dns = pool.submit(_enable_dns, ec2, vpc_id)
            group = pool.submit(_ensure_security_group, ec2, spec, vpc_id, ssh_cidr, run_tags, groups.result())
            table = pool.submit(_ensure_route_table, ec2, vpc_id, tables.result(), run_tags)
            route = pool.submit(_ensure_default_route, ec2, table, attached)  # after `table` and `attached`
            subnet_id = _ensure_subnet(ec2, spec, vpc_id, zone, run_tags, subnets.result())
            mapped = pool.submit(ec2.modify_subnet_attribute, SubnetId=subnet_id,
                                 MapPublicIpOnLaunch={"Value": True})
            _associate(ec2, table.result(), subnet_id)
            for done in (mapped, dns, route):
                done.result()
            group_id, public = group.result(), True
        key_name, key_path = key.result()
        return Network(vpc_id, subnet_id, zone, group_id, key_name, key_path, placement_group.result(), public)


def check_way_out(ec2, subnet: dict) -> str | None:
    """A user's subnet must let the machines out and resolve names, as the run's own network does: they install
    the project from PyPI at boot, reach S3 and SSM, and mount EFS by its DNS name, which needs both DNS
    attributes of the VPC (https://docs.aws.amazon.com/vpc/latest/userguide/vpc-dns.html). Returns what may yet
    keep the machines from EFS's name (resolver_doubt), or None."""
    subnet_id, vpc_id = subnet["SubnetId"], subnet["VpcId"]
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])[
        "RouteTables"] or ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                             {"Name": "association.main", "Values": ["true"]}])[
        "RouteTables"]  # a subnet without a table of its own uses its VPC's main table
    out = [r for t in tables for r in t.get("Routes", [])
           if r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("State", "active") == "active"]
    public = subnet.get("MapPublicIpOnLaunch") and any(r.get("GatewayId", "").startswith("igw-") for r in out)
    beside = any(r.get("NatGatewayId") or r.get("TransitGatewayId") or r.get("NetworkInterfaceId") for r in out)
    if not public and not beside:
        raise InputError(f"subnet {subnet_id} has no way out to the internet (a 0.0.0.0/0 route through a NAT "
                         "gateway, or through an internet gateway with public addresses on launch): the machines "
                         "install the project from PyPI and reach S3, SSM and EFS; add one, or leave "
                         "aws.subnet_id unset and the run makes its own network")
    check_public_access(ec2, subnet, out, bool(public))
    for attribute, answer in (("enableDnsSupport", "EnableDnsSupport"), ("enableDnsHostnames", "EnableDnsHostnames")):
        if not ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute=attribute)[answer]["Value"]:
            raise InputError(f"{attribute} is off in {vpc_id}, the VPC of subnet {subnet_id}: the machines mount "
                             f"EFS by its DNS name; turn it on: `aws ec2 modify-vpc-attribute --vpc-id {vpc_id} "
                             f"--{_kebab(attribute)}`")
    return resolver_doubt(ec2, vpc_id)


def check_public_access(ec2, subnet: dict | None = None, routes: Sequence[dict] = (), public: bool = False) -> None:
    """VPC Block Public Access (the account's, or its organization's, setting in the region) blocks traffic through
    internet gateways in every VPC and subnet but those an exclusion exempts
    (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_VpcBlockPublicAccessOptions.html): the run's own
    network's way out (`subnet` None: no exclusion names a VPC not made yet), or each of a user's subnet's `routes`
    out (`public`: its machines get public addresses). Blocked, the machines install nothing and their SSM agents
    never register, found once the replicas and machines are paid for."""
    options = ec2.describe_vpc_block_public_access_options()["VpcBlockPublicAccessOptions"]
    mode = options.get("InternetGatewayBlockMode", "off")
    if mode == "off" or any(_gets_past(ec2, subnet, route, public, mode) for route in routes):
        return
    where = f"subnet {subnet['SubnetId']}'s" if subnet else "the run's own network's"
    allowed = options.get("ExclusionsAllowed") != "not-allowed"
    exclude = "(`aws ec2 create-vpc-block-public-access-exclusion --vpc-id VPC --internet-gateway-exclusion-mode " + (
        "allow-bidirectional`)" if mode == "block-ingress" else "allow-egress`)")
    no_exclusion = "this account may make no exclusion (its organization's setting)"
    if mode == "block-ingress":
        advice = ("name a subnet (aws.subnet_id) behind a NAT gateway" +
                  (f", or in a VPC or subnet excluded from it {exclude}" if allowed else f"; {no_exclusion}"))
    else:
        advice = (f"name a subnet (aws.subnet_id) in a VPC or subnet excluded from it, its NAT gateway's too "
                  f"{exclude}" if allowed else f"{no_exclusion}, so no subnet of it in this region has a way out: "
                  "run in another region")
    raise InputError(f"VPC Block Public Access is on in {ec2.meta.region_name} ({mode}): it blocks {where} way out, "
                     f"through an internet gateway, so the machines could not install the project nor reach SSM: "
                     f"{advice}")


def _gets_past(ec2, subnet: dict | None, route: dict, public: bool, mode: str) -> bool:
    """Whether a route out gets past the block: a transit gateway's way out is another VPC's, not seen from here; a
    NAT gateway's goes through its own subnet's internet gateway, blocked only both ways; an interface's (a NAT
    instance's) through its subnet's, with an address of its own; the subnet's own gateway with public addresses."""
    if route.get("TransitGatewayId"):
        return True
    if nat := route.get("NatGatewayId"):
        [gateway] = ec2.describe_nat_gateways(NatGatewayIds=[nat])["NatGateways"]
        return mode == "block-ingress" or _exempt(ec2, gateway, mode)
    if interface := route.get("NetworkInterfaceId"):
        [found] = ec2.describe_network_interfaces(NetworkInterfaceIds=[interface])["NetworkInterfaces"]
        return _exempt(ec2, found, mode)
    return bool(subnet and public and route.get("GatewayId", "").startswith("igw-") and _exempt(ec2, subnet, mode))


def _exempt(ec2, where: dict, mode: str) -> bool:
    """Whether an exclusion lets internet gateway traffic of `where` (a subnet, NAT gateway or interface: its
    SubnetId and VpcId) out: one that allows it both ways, or one that allows egress where the block is both ways
    (it applies to nothing else)."""
    ours = {f"vpc/{where['VpcId']}", f"subnet/{where['SubnetId']}"}
    modes = {"allow-bidirectional"} | ({"allow-egress"} if mode == "block-bidirectional" else set())
    page: dict = {}
    while True:  # boto3 has no paginator for it
        page = ec2.describe_vpc_block_public_access_exclusions(**({"NextToken": page["NextToken"]} if page else {}))
        if any(e["ResourceArn"].split(":")[-1] in ours and e.get("InternetGatewayExclusionMode") in modes
               and e.get("State") in ("create-complete", "update-complete")
               for e in page.get("VpcBlockPublicAccessExclusions", [])):
            return True
        if not page.get("NextToken"):
            return False


def resolver_doubt(ec2, vpc_id: str) -> str | None:
    """Where the VPC's DHCP options give the machines DNS servers of their own, without AmazonProvidedDNS (a
    company's, often): EFS's names are known to the VPC's own resolver only, so those servers must forward
    amazonaws.com names to it, which cannot be seen from here. None where the machines ask the VPC's resolver."""
    [vpc] = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    options_id = vpc.get("DhcpOptionsId", "default")
    if options_id == "default":
        return None
    [options] = ec2.describe_dhcp_options(DhcpOptionsIds=[options_id])["DhcpOptions"]
    servers = [value["Value"] for config in options.get("DhcpConfigurations", [])
               if config["Key"] == "domain-name-servers" for value in config.get("Values", [])]
    # The resolver by name, or by its addresses: the VPC's base plus two, and 169.254.169.253 (vpc-dns.html)
    amazons = {"AmazonProvidedDNS", str(ipaddress.ip_network(vpc["CidrBlock"])[2]), "169.254.169.253"}
    if not servers or amazons & set(servers):
        return None
    return (f"the DHCP options of {vpc_id} ({options_id}) give the machines the DNS servers {', '.join(servers)}, "
            "without AmazonProvidedDNS: the machines mount EFS by its DNS name, which only the VPC's resolver "
            "knows, so unless those servers forward amazonaws.com names to it, every machine's boot fails at its "
            "mount once the run's replicas and machines are paid for")


def _kebab(attribute: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in attribute)


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


def _ensure_gateway(ec2, spec: ClusterSpec, run_tags: list[dict]) -> dict:
    gateways = ec2.describe_internet_gateways(Filters=tags.run_filter(spec.run_id))["InternetGateways"]
    if gateways:
        return gateways[0]
    gateway_id = ec2.create_internet_gateway(
        TagSpecifications=tags.tag_specs("internet-gateway", run_tags))["InternetGateway"]["InternetGatewayId"]
    return {"InternetGatewayId": gateway_id, "Attachments": []}


def _attach_gateway(ec2, gateway: Future, vpc_id: str) -> str:
    found = gateway.result()
    if not any(a.get("VpcId") == vpc_id for a in found.get("Attachments", [])):
        ec2.attach_internet_gateway(InternetGatewayId=found["InternetGatewayId"], VpcId=vpc_id)
    return found["InternetGatewayId"]


def _ensure_subnet(ec2, spec: ClusterSpec, vpc_id: str, zone: str, run_tags: list[dict], subnets: list[dict]) -> str:
    """The run's subnet in `zone` (`subnets`: the run's, in every zone; a run moved to another zone has one in
    each)."""
    subnet_id = _first([s for s in subnets if s["AvailabilityZone"] == zone], "SubnetId")
    if subnet_id is None:
        subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=_free_cidr(subnets), AvailabilityZone=zone,
                                      TagSpecifications=tags.tag_specs("subnet", run_tags))["Subnet"]["SubnetId"]
    return subnet_id


def _ensure_route_table(ec2, vpc_id: str, tables: list[dict], run_tags: list[dict]) -> dict:
    """The run's route table (`tables`: the run's, found earlier)."""
    if tables:
        return tables[0]
    return ec2.create_route_table(VpcId=vpc_id, TagSpecifications=tags.tag_specs("route-table", run_tags))[
        "RouteTable"]


def _ensure_default_route(ec2, table: Future, gateway: Future) -> None:
    """A default route through the gateway (machines install the project from PyPI at boot: they need a public
    address, which the subnet gives them, and a route out); it needs the gateway attached to the VPC."""
    found = table.result()
    if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in found.get("Routes", [])):
        ec2.create_route(RouteTableId=found["RouteTableId"], DestinationCidrBlock="0.0.0.0/0",
                         GatewayId=gateway.result())


def _associate(ec2, table: dict, subnet_id: str) -> None:
    if not any(a.get("SubnetId") == subnet_id for a in table.get("Associations", [])):
        ec2.associate_route_table(RouteTableId=table["RouteTableId"], SubnetId=subnet_id)


def _free_cidr(subnets: list[dict]) -> str:
    """The first block of the run's VPC that none of its subnets uses (10.18.0.0/20 for the first)."""
    used = {s["CidrBlock"] for s in subnets}
    blocks = (str(b) for b in ipaddress.ip_network(VPC_CIDR).subnets(new_prefix=SUBNET_PREFIX))
    return next(b for b in blocks if b not in used)


def _ensure_security_group(ec2, spec: ClusterSpec, vpc_id: str, ssh_cidr: str | None, run_tags: list[dict],
                           found: list[dict]) -> str:
    """The run's security group (`found`: the run's, looked up earlier), made if missing, with its rules: those
    of a group found are added again (AWS answers a rule it has with InvalidPermission.Duplicate), since an
    attempt that stopped after making the group left it without them."""
    group_id = found[0]["GroupId"] if found else ec2.create_security_group(
        GroupName=resource_name(spec), VpcId=vpc_id, TagSpecifications=tags.tag_specs("security-group", run_tags),
        Description="imagenet18 run: all traffic within the group (NCCL, EFS), ssh only from the caller")["GroupId"]
    rules = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
    if ssh_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": ssh_cidr, "Description": "ssh from the caller"}]})
    # EFA's traffic needs a rule to the group itself besides the default one to 0.0.0.0/0
    # (https://docs.aws.amazon.com/pcs/latest/userguide/working-with_networking_efa_create-sg.html).
    for authorize, rule in [*((ec2.authorize_security_group_ingress, r) for r in rules),
                            (ec2.authorize_security_group_egress, rules[0])]:
        _tolerate_duplicate(authorize, group_id, rule)
    return group_id


def _tolerate_duplicate(authorize, group_id: str, rule: dict) -> None:
    try:
        authorize(GroupId=group_id, IpPermissions=[rule])
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "InvalidPermission.Duplicate":
            raise


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
    """The run's cluster placement group, available: a new one is pending a while, and a launch into it meanwhile
    is refused (its states: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_PlacementGroup.html)."""
    name = resource_name(spec)

    def available() -> bool:
        state = _placement_group_state(ec2, name)
        if state in (None, "deleting", "deleted"):  # an earlier try's, going: the name is free once it has gone
            _create_placement_group(ec2, name, run_tags)  # (None, a new one EC2 does not know yet: Duplicate)
        return state == "available"

    _create_placement_group(ec2, name, run_tags)
    until(f"placement group {name} available", available, timeout=PLACEMENT_GROUP_WAIT_S, poll=1.0)
    return name


def _create_placement_group(ec2, name: str, run_tags: list[dict]) -> None:
    try:
        ec2.create_placement_group(GroupName=name, Strategy="cluster",
                                   TagSpecifications=tags.tag_specs("placement-group", run_tags))
    except Exception as exc:  # noqa: BLE001 - only "it exists already" is fine
        if error_code(exc) != "InvalidPlacementGroup.Duplicate":
            raise


def _placement_group_state(ec2, name: str) -> str | None:
    """The group's state (the most alive, where EC2 lists a deleted one beside a new one); None while EC2 does
    not know it yet (a group made moments ago)."""
    try:
        states = {g["State"] for g in ec2.describe_placement_groups(GroupNames=[name])["PlacementGroups"]}
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "InvalidPlacementGroup.Unknown":
            raise
        return None
    return next((state for state in ("available", "pending", "deleting", "deleted") if state in states), None)
