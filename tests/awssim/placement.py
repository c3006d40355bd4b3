"""EC2 placement groups, which moto 5.2.5 lacks: create, describe, delete, and their use by RunInstances, with a
record of each launch into a group (its machines and the network interfaces it asked for, which moto drops). A new
group is pending a while before it is available (its states: pending, available, deleting, deleted), and a launch
into it meanwhile finds no such group; a deleted one is deleting a while, its name still taken."""

import fnmatch
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from . import backends
from .calls import AwsCall
from .errors import Response, error_response, xml_response
from .network import interfaces_of

ACTIONS = frozenset({"CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup"})
STRATEGIES = ("cluster", "spread", "partition")
FILTERS = ("group-name", "group-id", "strategy", "state", "tag-key")  # and tag:KEY
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
# How long a group is pending after its creation, and deleting after its deletion.
CHANGING_S = float(os.environ.get("AWSSIM_PLACEMENT_CHANGING_S", "0.3"))


@dataclass
class PlacementGroup:
    name: str
    group_id: str
    strategy: str
    arn: str
    tags: dict[str, str]
    partition_count: str | None = None
    spread_level: str | None = None
    members: set[str] = field(default_factory=set)  # instance ids launched into it
    launches: list[dict] = field(default_factory=list)  # per RunInstances into it: instances, interfaces
    available_at: float = 0.0  # time.monotonic()
    deleted_at: float | None = None  # from then on, deleted; deleting before, since DeletePlacementGroup

    @property
    def state(self) -> str:
        if self.deleted_at is not None:
            return "deleting" if time.monotonic() < self.deleted_at else "deleted"
        return "pending" if time.monotonic() < self.available_at else "available"

    def filter_values(self, name: str) -> list[str]:
        """The values an EC2 filter (one of FILTERS or tag:KEY) sees on this group."""
        if name.startswith("tag:"):
            return [self.tags[name[4:]]] if name[4:] in self.tags else []
        return {
            "group-name": [self.name],
            "group-id": [self.group_id],
            "strategy": [self.strategy],
            "state": [self.state],
            "tag-key": list(self.tags),
        }[name]

    def xml(self) -> str:
        tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in self.tags.items())
        extra = f"<partitionCount>{self.partition_count}</partitionCount>" if self.partition_count else ""
        extra += f"<spreadLevel>{escape(self.spread_level)}</spreadLevel>" if self.spread_level else ""
        return (
            f"<groupName>{escape(self.name)}</groupName><groupId>{self.group_id}</groupId>"
            f"<groupArn>{escape(self.arn)}</groupArn><strategy>{self.strategy}</strategy><state>{self.state}</state>"
            f"{extra}<tagSet>{tags}</tagSet>"
        )


def _ec2_response(action: str, inner: str) -> Response:
    return xml_response(
        f'<{action}Response xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>'
    )


def _unknown(name: str) -> Response:
    return error_response("ec2", "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")


class PlacementGroups:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], dict[str, PlacementGroup]] = {}  # (account, region) -> name -> group
        self.changing_s = CHANGING_S

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()
            self.changing_s = CHANGING_S

    def _of(self, call: AwsCall) -> dict[str, PlacementGroup]:
        """The region's groups, less those deleted."""
        groups = self._groups.setdefault((call.account, call.region), {})
        for name in [name for name, group in groups.items() if group.state == "deleted"]:
            del groups[name]
        return groups

    def handle(self, call: AwsCall) -> Response:
        with self._lock:
            groups = self._of(call)
            if call.action == "CreatePlacementGroup":
                return self._create(call, groups)
            if call.action == "DescribePlacementGroups":
                return self._describe(call, groups)
            return self._delete(call, groups)

    def _create(self, call: AwsCall, groups: dict[str, PlacementGroup]) -> Response:
        name, strategy = call.params.get("GroupName"), call.params.get("Strategy", "")
        if not name:
            return error_response("ec2", "MissingParameter", "The request must contain the parameter groupName")
        if strategy not in STRATEGIES:
            message = f"Value ({strategy}) for parameter strategy is invalid."
            return error_response("ec2", "InvalidParameterValue", message)
        if name in groups:
            return error_response(
                "ec2", "InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists."
            )
        group = PlacementGroup(
            name=name,
            group_id=f"pg-{uuid.uuid4().hex[:17]}",
            strategy=strategy,
            arn=f"arn:aws:ec2:{call.region}:{call.account}:placement-group/{name}",
            tags=_tags(call, "placement-group"),
            partition_count=call.params.get("PartitionCount"),
            spread_level=call.params.get("SpreadLevel"),
            available_at=time.monotonic() + self.changing_s,
        )
        groups[name] = group
        return _ec2_response(call.action, f"<placementGroup>{group.xml()}</placementGroup>")

    def _describe(self, call: AwsCall, groups: dict[str, PlacementGroup]) -> Response:
        names, ids = call.list_param("GroupName"), call.list_param("GroupId")
        by_id = {group.group_id: group for group in groups.values()}
        missing = [n for n in names if n not in groups] + [i for i in ids if i not in by_id]
        if missing:
            return _unknown(missing[0])
        chosen = [g for g in groups.values() if (not names or g.name in names) and (not ids or g.group_id in ids)]
        for index in range(1, 100):
            filter_name = call.params.get(f"Filter.{index}.Name")
            if filter_name is None:
                break
            patterns = call.list_param(f"Filter.{index}.Value")
            if filter_name not in FILTERS and not filter_name.startswith("tag:"):
                return error_response("ec2", "InvalidParameterValue", f"The filter '{filter_name}' is invalid")
            chosen = [
                g for g in chosen
                if any(fnmatch.fnmatchcase(v, p) for v in g.filter_values(filter_name) for p in patterns)
            ]
        items = "".join(f"<item>{g.xml()}</item>" for g in chosen)
        return _ec2_response(call.action, f"<placementGroupSet>{items}</placementGroupSet>")

    def _delete(self, call: AwsCall, groups: dict[str, PlacementGroup]) -> Response:
        name = call.params.get("GroupName", "")
        if name not in groups or groups[name].state == "deleting":
            return _unknown(name)
        ec2 = backends.ec2(call.account, call.region)
        live = [i for i in backends.instances(ec2) if i.id in groups[name].members and i.state != "terminated"]
        if live:
            return error_response(
                "ec2", "InvalidPlacementGroup.InUse", f"The placement group '{name}' is in use and may not be deleted."
            )
        groups[name].deleted_at = time.monotonic() + self.changing_s
        return _ec2_response(call.action, "<return>true</return>")

    def launch_error(self, call: AwsCall) -> Response | None:
        """RunInstances into a placement group that is not available (none, pending, deleting) fails as on AWS."""
        name, group_id = call.params.get("Placement.GroupName"), call.params.get("Placement.GroupId")
        with self._lock:
            available = [g for g in self._of(call).values() if g.state == "available"]
            if name is not None and name not in {g.name for g in available}:
                return _unknown(name)
            if group_id is not None and group_id not in {g.group_id for g in available}:
                return _unknown(group_id)
        return None

    def record_launch(self, call: AwsCall, response_body: bytes) -> None:
        """Remember which instances a successful RunInstances put into a group (for DeletePlacementGroup's InUse)."""
        name, group_id = call.params.get("Placement.GroupName"), call.params.get("Placement.GroupId")
        instance_ids = set(re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", response_body.decode()))
        launch = {"instances": sorted(instance_ids), "interfaces": interfaces_of(call)}
        with self._lock:
            for group in self._of(call).values():
                if group.name == name or group.group_id == group_id:
                    group.members |= instance_ids
                    group.launches.append(launch)

    def launches(self) -> list[dict]:
        """Each launch into a group: the group's name, its instance ids, the interfaces it asked for."""
        with self._lock:
            return [{"group": g.name, **launch} for groups in self._groups.values() for g in groups.values()
                    for launch in g.launches]


def _tags(call: AwsCall, resource_type: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for spec in range(1, 100):
        kind = call.params.get(f"TagSpecification.{spec}.ResourceType")
        if kind is None:
            break
        if kind != resource_type:
            continue
        for tag in range(1, 100):
            key = call.params.get(f"TagSpecification.{spec}.Tag.{tag}.Key")
            if key is None:
                break
            tags[key] = call.params.get(f"TagSpecification.{spec}.Tag.{tag}.Value", "")
    return tags
