"""Everything that carries a run's tag, across the services a run uses: what teardown deletes and verifies,
and what the cleanup flow sweeps. Nothing without our tag is ever listed, so nothing else is ever touched, but
for what GuardDuty put in a VPC of the run's (GUARDDUTY_TAG)."""

from __future__ import annotations

import logging
import time

import botocore.exceptions

from tasks.backends.aws import consistency, efs, iam, machines, secrets, tags, volumes
from tasks.backends.aws.clients import REFUSALS, Clients, error_code
from tasks.backends.base import Resource

log = logging.getLogger(__name__)
# The order teardown deletes in: what holds a dependency goes before what it depends on, and once the machines are
# gone, what costs most (the replicas) first.
TEARDOWN_ORDER = ("machine", "spot-request", "replica", "volume", "snapshot", "address", "file-system",
                  "vpc-endpoint", "guardduty-group", "placement-group", "security-group", "key-pair",
                  "instance-profile", "parameter", "route-table", "subnet", "internet-gateway", "vpc")
# What must be gone before a kind can be deleted (AWS refuses it, or holds it "in use", while one remains): a kind
# not named here needs nothing else gone.
NEEDS_GONE = {
    "replica": {"machine"}, "volume": {"machine"}, "address": {"machine"}, "placement-group": {"machine"},
    "security-group": {"machine", "file-system"},  # the machines' interfaces, the EFS mount targets'
    "vpc-endpoint": {"machine"},  # GuardDuty's agent on a machine that would not go uses it
    "guardduty-group": {"vpc-endpoint"},
    "route-table": {"machine", "file-system"}, "subnet": {"machine", "file-system", "vpc-endpoint"},
    "internet-gateway": {"machine"},  # not detached while a machine in the VPC has a public address
    "vpc": {"machine", "file-system", "vpc-endpoint", "guardduty-group", "security-group", "route-table", "subnet",
            "internet-gateway"},
}
# GuardDuty Runtime Monitoring, with its agent managed for EC2, gives each VPC where a machine runs an interface
# endpoint for its agent and a security group for that (tagged GuardDutyManaged=true), which it deletes only when
# Runtime Monitoring is turned off: while they are there, EC2 refuses to delete the run's subnet and VPC
# (https://docs.aws.amazon.com/guardduty/latest/ug/using-iac-with-gdu-automated-agents-runtime-monitoring.html).
# Those in the run's own VPC are the run's to delete; a user's VPC is never the run's, so never looked in.
GUARDDUTY_TAG = {"Name": "tag:GuardDutyManaged", "Values": ["true"]}
GUARDDUTY_KINDS = ("vpc-endpoint", "guardduty-group")
ENDED_ENDPOINT_STATES = ("deleting", "deleted")

# A snapshot build's snapshot while it is the build's: until it completes (then it is the dataset's, and untagged).
UNFINISHED = [{"Name": "status", "Values": ["pending", "error"]}]


def _ec2_resources(clients: Clients, run_id: str | None) -> list[Resource]:
    ec2, where = clients.ec2, tags.run_filter(run_id)
    found: list[Resource] = [machines.as_resource(i) for i in machines.instances(clients, run_id)]
    found += volumes.replicas(clients, run_id)
    replica_ids = {r.id for r in found}
    listings = (
        ("spot-request", ec2.describe_spot_instance_requests(
            Filters=where + [{"Name": "state", "Values": ["open", "active"]}])["SpotInstanceRequests"],
         "SpotInstanceRequestId"),
        ("volume", [v for v in ec2.describe_volumes(Filters=where)["Volumes"] if v["VolumeId"] not in replica_ids],
         "VolumeId"),
        # Only the builder's own (tagged with where the dataset came from), never one a backup service copied a
        # run's tags onto. Not a second tag-key filter: with no run given, `where` is one already.
        ("snapshot", [s for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=where + UNFINISHED)["Snapshots"]
                      if tags.DATASET_SOURCE in tags.as_dict(s.get("Tags"))], "SnapshotId"),
        ("address", ec2.describe_addresses(Filters=where)["Addresses"], "AllocationId"),
        ("placement-group", ec2.describe_placement_groups(  # not those deleting: they are on their way
            Filters=where + [{"Name": "state", "Values": ["pending", "available"]}])["PlacementGroups"], "GroupName"),
        ("security-group", ec2.describe_security_groups(Filters=where)["SecurityGroups"], "GroupId"),
        ("key-pair", ec2.describe_key_pairs(Filters=where)["KeyPairs"], "KeyName"),
        ("route-table", ec2.describe_route_tables(Filters=where)["RouteTables"], "RouteTableId"),
        ("subnet", ec2.describe_subnets(Filters=where)["Subnets"], "SubnetId"),
        ("internet-gateway", ec2.describe_internet_gateways(Filters=where)["InternetGateways"], "InternetGatewayId"),
        ("vpc", ec2.describe_vpcs(Filters=where)["Vpcs"], "VpcId"),
    )
    for kind, items, key in listings:
        for item in items:
            item_tags = tags.as_dict(item.get("Tags"))
            found.append(Resource(kind, item[key], item_tags[tags.RUN], tags.expires(item_tags), {"raw": item}))
    return found + _guardduty_resources(clients, [r for r in found if r.kind == "vpc"])


def with_guardduty_now(clients: Clients, found: list[Resource]) -> list[Resource]:
    """`found`, with what GuardDuty has in its VPCs now: when GuardDuty gets to a new VPC is not documented, and may
    be after `found` was listed."""
    return [r for r in found if r.kind not in GUARDDUTY_KINDS] + _guardduty_resources(
        clients, [r for r in found if r.kind == "vpc"])


def _guardduty_resources(clients: Clients, vpcs: list[Resource]) -> list[Resource]:
    """GuardDuty's endpoint and security group in each of the runs' VPCs, as resources of the VPC's run."""
    if not vpcs:
        return []
    by_id, ec2 = {vpc.id: vpc for vpc in vpcs}, clients.ec2
    theirs = [{"Name": "vpc-id", "Values": sorted(by_id)}, GUARDDUTY_TAG]
    try:
        endpoints = ec2.describe_vpc_endpoints(Filters=theirs)["VpcEndpoints"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) not in REFUSALS:
            raise
        log.warning("may not list VPC endpoints (ec2:DescribeVpcEndpoints, in user_policy.json): GuardDuty's, where "
                    "it put one in a run's VPC, would keep the VPC from being deleted")
        return []
    groups = ec2.describe_security_groups(Filters=theirs)["SecurityGroups"]
    found = [("vpc-endpoint", e["VpcEndpointId"], e) for e in endpoints
             if e["State"].lower() not in ENDED_ENDPOINT_STATES]
    found += [("guardduty-group", g["GroupId"], g) for g in groups]
    return [Resource(kind, resource_id, by_id[item["VpcId"]].run_id, by_id[item["VpcId"]].expires_at, {"raw": item})
            for kind, resource_id, item in found]


def find(clients: Clients, run_id: str | None = None, identities: bool = True) -> list[Resource]:
    """The run's resources in the clients' region (every run's, when run_id is None) and, with `identities`, its
    IAM roles and instance profiles, which are global: the same from every region. Listed again, backing off, while
    EC2 leaves out what this process, or another that wrote the run's journal, made for the run moments ago
    (consistency.py)."""
    found, attempt = _listed(clients, run_id, identities), 0
    while awaited := _awaited(clients, run_id, found):
        if attempt == 0:
            log.info("EC2 does not list %s yet: listing again", ", ".join(awaited))
        time.sleep(min(0.5 * 2 ** attempt, 10.0))
        found, attempt = _listed(clients, run_id, identities), attempt + 1
    return found


def _awaited(clients: Clients, run_id: str | None, found: list[Resource]) -> list[str]:
    """What this process, or another that wrote the run's journal, made for the run that EC2 does not list yet. A
    machine that AWS ended (a spot interruption, a launch whose root volume could not be made) is listed as
    terminated, not among the run's."""
    seen = {r.id for r in found}
    awaited = consistency.unlisted(clients.region, run_id, seen, clients.journals)
    if any(made.startswith("i-") for made in awaited):
        seen |= {i["InstanceId"] for i in machines.instances(clients, run_id, ["terminated"])}
        awaited = consistency.unlisted(clients.region, run_id, seen, clients.journals)
    return awaited


def _listed(clients: Clients, run_id: str | None, identities: bool) -> list[Resource]:
    found = _ec2_resources(clients, run_id)
    for system in efs.file_systems(clients, run_id):
        system_tags = tags.as_dict(system.get("Tags"))
        found.append(Resource("file-system", system["FileSystemId"], system_tags[tags.RUN],
                              tags.expires(system_tags)))
    for identity in iam.run_identities(clients, run_id) if identities else ():  # a role, its profile, or both
        found.append(Resource("instance-profile", identity["RoleName"], identity["Tags"][tags.RUN],
                              tags.expires(identity["Tags"])))
    found += secrets.parameters(clients, run_id)
    return sorted(found, key=lambda r: (r.run_id, TEARDOWN_ORDER.index(r.kind), r.id))
