"""What a run has in the world, asked of the world itself: every service of the AWS simulator a run touches
(through plain boto3 clients), /proc, and the files on disk. Never the backend's own inventory
(`backend.resources()`): a leak check must not share the code it checks.

Each thing is found by the run's tag (`imagenet18:run` on AWS, IMAGENET18_RUN in a process's environment), or by
the run's id in its path (replica and registry folders, claims, key files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.awssim import AwsSim
from tests.awssim.player import INSTANCE_ENV
from tests.processes import environments

RUN_TAG = "imagenet18:run"
RUN_ENV = "IMAGENET18_RUN"
WORKER_ENV = "PYTEST_XDIST_WORKER"  # set by pytest-xdist in each worker, inherited by what it starts


@dataclass(frozen=True)
class Found:
    kind: str
    id: str
    run_id: str


def by_kind(found: list[Found]) -> dict[str, list[str]]:
    """kind -> ids: {} when nothing was found, and a readable assertion message when something was."""
    kinds: dict[str, list[str]] = {}
    for thing in sorted(found, key=lambda f: (f.kind, f.id)):
        kinds.setdefault(thing.kind, []).append(thing.id)
    return kinds


def aws_leftovers(aws: AwsSim, run_id: str | None = None, home: Path | None = None) -> dict[str, list[str]]:
    """What the simulator, this machine's processes and (given the flow's IMAGENET18_HOME) its key files still
    hold of the run (of every run, when run_id is None)."""
    return by_kind(aws_resources(aws, run_id, home))


def aws_leftovers_by_run(aws: AwsSim) -> dict[str, dict[str, list[str]]]:
    """run id -> what the simulator and the machines' processes hold of it, for every run tagged there."""
    runs: dict[str, list[Found]] = {}
    for thing in aws_resources(aws):
        runs.setdefault(thing.run_id, []).append(thing)
    return {run_id: by_kind(found) for run_id, found in runs.items()}


def local_leftovers(home: Path, run_id: str | None = None) -> dict[str, list[str]]:
    return by_kind(local_resources(home, run_id))


def aws_resources(aws: AwsSim, run_id: str | None = None, home: Path | None = None) -> list[Found]:
    """Everything tagged with the run (with every run's tag, when run_id is None), in every region."""
    found = [*aws_machines_and_storage(aws, run_id), *_iam(aws, run_id)]
    found += [thing for region in regions(aws) for thing in _parameters(aws, run_id, region)]
    if home is not None:
        found += [Found("key file", str(path), run_id or path.stem)
                  for path in (home / "aws" / "keys").glob(f"*{run_id or ''}.pem")]
    return found


def aws_machines_and_storage(aws: AwsSim, run_id: str | None = None) -> list[Found]:
    """EC2, EFS and the machines' processes in every region: what can be listed by tag without naming any run's
    resource (IAM and SSM are asked for each role's and parameter's tags by its name, which carries the run's id)."""
    return [thing for region in regions(aws) for listing in (_ec2, _file_systems, _machine_processes)
            for thing in listing(aws, run_id, region)]


def regions(aws: AwsSim) -> list[str]:
    """The simulator's default region, and every other that holds anything tagged with a run (asking all of an
    account's regions each time would take seconds)."""
    return sorted({aws.region, *aws.tagged_regions()})


def aws_names(aws: AwsSim) -> list[str]:
    """The names of every IAM role and instance profile, and of every SSM parameter in each region `regions` looks
    in, listed without asking after any one of them (a run's id is in the names of its own)."""
    iam = aws.client("iam")
    roles = [r["RoleName"] for page in iam.get_paginator("list_roles").paginate() for r in page["Roles"]]
    profiles = [p["InstanceProfileName"] for page in iam.get_paginator("list_instance_profiles").paginate()
                for p in page["InstanceProfiles"]]
    parameters = [p["Name"] for region in regions(aws)
                  for page in aws.client("ssm", region=region).get_paginator("describe_parameters").paginate()
                  for p in page["Parameters"]]
    return roles + profiles + parameters


def _ec2_filter(run_id: str | None) -> list[dict]:
    if run_id is None:
        return [{"Name": "tag-key", "Values": [RUN_TAG]}]
    return [{"Name": f"tag:{RUN_TAG}", "Values": [run_id]}]


def _tag(item: dict) -> str:
    return next(t["Value"] for t in item.get("Tags", []) if t["Key"] == RUN_TAG)


def _ec2(aws: AwsSim, run_id: str | None, region: str) -> Iterator[Found]:
    ec2, where = aws.client("ec2", region=region), _ec2_filter(run_id)
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "shutting-down", "stopping", "stopped"]}]
    listings = (
        ("instance", [i for r in ec2.describe_instances(Filters=where + live)["Reservations"] for i in r["Instances"]],
         "InstanceId"),
        ("spot request", ec2.describe_spot_instance_requests(
            Filters=where + [{"Name": "state", "Values": ["open", "active"]}])["SpotInstanceRequests"],
         "SpotInstanceRequestId"),
        ("volume", ec2.describe_volumes(Filters=where)["Volumes"], "VolumeId"),
        ("snapshot", ec2.describe_snapshots(OwnerIds=["self"], Filters=where)["Snapshots"], "SnapshotId"),
        ("elastic ip", ec2.describe_addresses(Filters=where)["Addresses"], "AllocationId"),
        ("placement group", ec2.describe_placement_groups(  # one deleting was deleted: EC2 takes it from there
            Filters=where + [{"Name": "state", "Values": ["pending", "available"]}])["PlacementGroups"], "GroupName"),
        ("security group", ec2.describe_security_groups(Filters=where)["SecurityGroups"], "GroupId"),
        ("key pair", ec2.describe_key_pairs(Filters=where)["KeyPairs"], "KeyName"),
        ("route table", ec2.describe_route_tables(Filters=where)["RouteTables"], "RouteTableId"),
        ("subnet", ec2.describe_subnets(Filters=where)["Subnets"], "SubnetId"),
        ("internet gateway", ec2.describe_internet_gateways(Filters=where)["InternetGateways"], "InternetGatewayId"),
        ("vpc", ec2.describe_vpcs(Filters=where)["Vpcs"], "VpcId"),
    )
    for kind, items, key in listings:
        yield from (Found(kind, item[key], _tag(item)) for item in items)


def _file_systems(aws: AwsSim, run_id: str | None, region: str) -> Iterator[Found]:
    for system in aws.client("efs", region=region).describe_file_systems()["FileSystems"]:
        owner = _owner(system.get("Tags", []), run_id)
        if owner:
            yield Found("file system", system["FileSystemId"], owner)


def _owner(tags: list[dict], run_id: str | None) -> str | None:
    tagged = {t["Key"]: t["Value"] for t in tags}.get(RUN_TAG)
    return tagged if tagged and run_id in (None, tagged) else None


def _iam(aws: AwsSim, run_id: str | None) -> Iterator[Found]:
    iam = aws.client("iam")
    for role in (r for page in iam.get_paginator("list_roles").paginate() for r in page["Roles"]):
        name = role["RoleName"]
        owner = _owner(iam.list_role_tags(RoleName=name)["Tags"], run_id)
        if owner:
            yield Found("role", name, owner)
    for profile in (p for page in iam.get_paginator("list_instance_profiles").paginate()
                    for p in page["InstanceProfiles"]):
        name = profile["InstanceProfileName"]  # listings carry no tags on AWS: asked of the profile itself
        owner = _owner(iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"].get("Tags", []), run_id)
        if owner:
            yield Found("instance profile", name, owner)


def _parameters(aws: AwsSim, run_id: str | None, region: str) -> Iterator[Found]:
    ssm = aws.client("ssm", region=region)
    for parameter in (p for page in ssm.get_paginator("describe_parameters").paginate() for p in page["Parameters"]):
        name = parameter["Name"]
        owner = _owner(ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"], run_id)
        if owner:
            yield Found("ssm parameter", name, owner)


def _machine_processes(aws: AwsSim, run_id: str | None, region: str) -> Iterator[Found]:
    """Processes the player runs for the run's machines, in any state (a command still running on a machine
    that is gone would be one left behind)."""
    ec2 = aws.client("ec2", region=region)
    machines = {i["InstanceId"]: _tag(i) for r in ec2.describe_instances(Filters=_ec2_filter(run_id))["Reservations"]
                for i in r["Instances"]}
    for pid, environ in environments(INSTANCE_ENV):
        if environ[INSTANCE_ENV] in machines:
            yield Found("machine process", f"{environ[INSTANCE_ENV]}/{pid}", machines[environ[INSTANCE_ENV]])


def local_resources(home: Path, run_id: str | None = None) -> list[Found]:
    """The run's processes (whatever home they carry), replica folders, registry records and claims. Every run's,
    when run_id is None: those of this test worker's runs (pytest -n runs other workers' beside it)."""
    found = [Found("process", str(pid), environ[RUN_ENV]) for pid, environ in environments(RUN_ENV)
             if run_id in (None, environ[RUN_ENV]) and INSTANCE_ENV not in environ
             and (run_id is not None or environ.get(WORKER_ENV) == os.environ.get(WORKER_ENV))]
    local = home / "local"
    for kind, folder in (("replica", local / "replicas"), ("record", local / "registry")):
        for run_folder in folder.glob(run_id or "*"):
            found.append(Found(f"{kind} folder", str(run_folder), run_folder.name))
            found += [Found(kind, str(entry), run_folder.name) for entry in run_folder.iterdir()]
    for claim in (local / "claims").glob("*"):
        owner = _claim_owner(claim)
        if owner and run_id in (None, owner):
            found.append(Found("claim", str(claim), owner))
    return found


def _claim_owner(claim: Path) -> str | None:
    """A claim file's run: its record's, or, for one still being written (NAME.json.RUN), its suffix's."""
    if claim.suffix != ".json":
        return claim.suffix.removeprefix(".")
    try:
        return json.loads(claim.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None
