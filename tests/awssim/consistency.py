"""EC2's eventual consistency, which moto lacks: for a while after a resource is made, a call naming its id may be
answered that it does not exist ("if you run a command to modify or describe the resource that you just created,
its ID might not have propagated throughout the system, and you will get an error responding that the resource
does not exist": https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html), and a listing
may leave it out ("the result of an API command you run that affects your Amazon EC2 resources might not be
immediately visible to all subsequent commands you run", the same page). Off until a test sets a window; then every
EC2 call that names (other than in a filter) a resource made less than that long ago is answered so, and every
listing leaves such a resource out, and describes a machine told to change state within the window as it was
before (a machine terminated while pending is described pending), a filter on machines' states matching the state
described (moto's filters the state it has now): the worst that AWS allows.

IAM's changes reach EC2 a while later too ("changes that I make are not always immediately visible",
https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html): a launch naming an instance profile
made (or given its role) less than `profile_propagation_s` ago is refused as one naming no such profile, with
EC2's InvalidParameterValue (moto answers IAM's NoSuchEntity for an unknown one). On by default, briefly, so that
every run's first dry run of its launch naming the profile meets it. IAM's own calls likewise: one naming a role or
instance profile made less than `iam_propagation_s` ago (to give it a policy or a role, to read it or its tags, or to
take it apart and delete it) is answered NoSuchEntity, as adding a new role to a profile is ("NoSuchEntity: The role
with name X cannot be found.", hashicorp/terraform-provider-aws#6079), while IAM's listings show it (the worst for
a teardown, which finds a run's role by listing), and a profile given its role is read without it for as long;
on by default, briefly, so that every run meets it."""

import io
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

from moto.iam.models import iam_backends

from .calls import AwsCall
from .errors import Response, error_response

# The creating actions, and the tags of their answers that name what they made.
MADE = {"CreateVpc": ("vpcId",), "CreateSubnet": ("subnetId",), "CreateInternetGateway": ("internetGatewayId",),
        "CreateRouteTable": ("routeTableId",), "CreateSecurityGroup": ("groupId",),
        "AllocateAddress": ("allocationId",), "CreateVolume": ("volumeId",), "CreateSnapshot": ("snapshotId",),
        "RunInstances": ("instanceId", "networkInterfaceId"), "CreateNetworkInterface": ("networkInterfaceId",)}
# EC2's answer for an id it does not know, by the id's prefix.
NOT_FOUND = {"vpc": ("InvalidVpcID.NotFound", "The vpc ID '{}' does not exist"),
             "subnet": ("InvalidSubnetID.NotFound", "The subnet ID '{}' does not exist"),
             "igw": ("InvalidInternetGatewayID.NotFound", "The internetGateway ID '{}' does not exist"),
             "rtb": ("InvalidRouteTableID.NotFound", "The routeTable ID '{}' does not exist"),
             "sg": ("InvalidGroup.NotFound", "The security group '{}' does not exist"),
             "eipalloc": ("InvalidAllocationID.NotFound", "The allocation ID '{}' does not exist"),
             "vol": ("InvalidVolume.NotFound", "The volume '{}' does not exist."),
             "snap": ("InvalidSnapshot.NotFound", "The snapshot '{}' does not exist."),
             "i": ("InvalidInstanceID.NotFound", "The instance ID '{}' does not exist"),
             "eni": ("InvalidNetworkInterfaceID.NotFound", "The networkInterface ID '{}' does not exist")}
# Each listing, and the tag of its items that names the resource an item is (not those it refers to).
LISTED = {"DescribeVpcs": "vpcId", "DescribeSubnets": "subnetId", "DescribeInternetGateways": "internetGatewayId",
          "DescribeRouteTables": "routeTableId", "DescribeSecurityGroups": "groupId",
          "DescribeAddresses": "allocationId", "DescribeVolumes": "volumeId", "DescribeSnapshots": "snapshotId",
          "DescribeInstances": "instanceId", "DescribeNetworkInterfaces": "networkInterfaceId"}
# The calls that change machines' states, whose answers say each one's state before.
STATE_CHANGES = ("TerminateInstances", "StopInstances", "StartInstances")
# DescribeInstances' filters on a machine's state, and the element of its instanceState each one reads.
STATE_FILTERS = {"instance-state-name": "name", "instance-state-code": "code"}
# A route's target (CreateRoute's GatewayId) is a gateway of any kind to EC2.
GATEWAY_NOT_FOUND = ("InvalidGatewayID.NotFound", "The gateway ID '{}' does not exist")
# The IAM calls after which EC2 does not know an instance profile as it is for a while.
PROFILE_CHANGES = ("CreateInstanceProfile", "AddRoleToInstanceProfile")
PROFILE_PROPAGATION_S = float(os.environ.get("AWSSIM_PROFILE_PROPAGATION_S", "0.3"))
# IAM's calls that make a role or an instance profile (and the parameter naming it), the calls that use one, and
# IAM's answer to a use of one it does not know yet.
IAM_MADE = {"CreateRole": "RoleName", "CreateInstanceProfile": "InstanceProfileName"}
IAM_USES = ("AttachRolePolicy", "PutRolePolicy", "AddRoleToInstanceProfile", "GetInstanceProfile", "GetRole",
            "ListRoleTags", "ListAttachedRolePolicies", "ListRolePolicies", "DetachRolePolicy", "DeleteRolePolicy",
            "RemoveRoleFromInstanceProfile", "DeleteInstanceProfile", "DeleteRole")
IAM_UNKNOWN = {"RoleName": "The role with name {} cannot be found.",
               "InstanceProfileName": "Instance Profile {} cannot be found."}
IAM_PROPAGATION_S = float(os.environ.get("AWSSIM_IAM_PROPAGATION_S", "0.3"))


class Consistency:
    def __init__(self) -> None:
        self.window_s = 0.0
        self.profile_propagation_s = PROFILE_PROPAGATION_S
        self._made: dict[str, float] = {}  # id -> time.time() of its creation, while a window is set
        # machine id -> (its instanceState element before its last state change, time.time() of the change)
        self._before: dict[str, tuple[ET.Element, float]] = {}
        self._profiles_changed: dict[tuple[str, str], float] = {}  # (account, profile) -> time.time() of its change
        self.iam_propagation_s = IAM_PROPAGATION_S
        self._iam_made: dict[tuple[str, str, str], float] = {}  # (account, parameter, name) -> time.time() made
        self._roles_added: dict[tuple[str, str], float] = {}  # (account, profile) -> time.time() a role was added
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.window_s = 0.0
            self.profile_propagation_s = PROFILE_PROPAGATION_S
            self._made.clear()
            self._before.clear()
            self._profiles_changed.clear()
            self.iam_propagation_s = IAM_PROPAGATION_S
            self._iam_made.clear()
            self._roles_added.clear()

    def refusal(self, call: AwsCall) -> Response | None:
        """NotFound for an EC2 call naming a resource made within the window, InvalidParameterValue for a launch
        naming an instance profile EC2 does not know (yet), NoSuchEntity for an IAM call using a role or profile
        IAM does not know yet; None otherwise."""
        if call.service == "iam" and call.action in IAM_USES:
            return self._unknown_to_iam(call)
        if call.service == "ec2" and call.action == "RunInstances" and "IamInstanceProfile.Name" in call.params:
            unknown = self._unknown_profile(call, call.params["IamInstanceProfile.Name"])
            if unknown is not None:
                return unknown
        if call.service != "ec2" or not self.window_s:
            return None
        now = time.time()
        with self._lock:
            young = [(key, value) for key, value in call.params.items() if not key.startswith("Filter.")
                     and now - self._made.get(value, -self.window_s) < self.window_s]
        if not young:
            return None
        key, value = young[0]
        code, message = GATEWAY_NOT_FOUND if key == "GatewayId" else NOT_FOUND[value.split("-", 1)[0]]
        return error_response("ec2", code, message.format(value))

    def defer_state_filters(self, call: AwsCall, environ: dict) -> dict[str, set[str]]:
        """Within a window, DescribeInstances' filters on machines' states, taken out of the request that moto
        reads (`listed` applies them to the states it describes); {} otherwise."""
        if call.service != "ec2" or call.action != "DescribeInstances" or not self.window_s:
            return {}
        filters: dict[str, tuple[str, list[str]]] = {}  # "Filter.N" -> (name, values)
        for key, value in call.params.items():
            if re.fullmatch(r"Filter\.\d+\.Name", key):
                number = key.rsplit(".", 1)[0]
                filters[number] = (value, call.list_param(f"{number}.Value"))
        deferred = {name: set(values) for name, values in filters.values() if name in STATE_FILTERS}
        if deferred:
            kept = [(name, values) for name, values in filters.values() if name not in STATE_FILTERS]
            params = {key: value for key, value in call.params.items() if not key.startswith("Filter.")}
            for number, (name, values) in enumerate(kept, 1):
                params[f"Filter.{number}.Name"] = name
                params.update({f"Filter.{number}.Value.{i}": value for i, value in enumerate(values, 1)})
            body = urlencode({"Action": call.action, **params}).encode()
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        return deferred

    def listed(self, call: AwsCall, body: bytes, state_filters: dict[str, set[str]]) -> bytes:
        """A listing's answer without the resources made within the window (and without a reservation left with
        no machine), its machines told to change state within the window as they were before, and only those
        whose state described matches `state_filters` (the request's, deferred)."""
        own = LISTED.get(call.action) if call.service == "ec2" and self.window_s else None
        now = time.time()
        with self._lock:
            young = {made for made, at in self._made.items() if now - at < self.window_s}
            before = {machine: state for machine, (state, at) in self._before.items() if now - at < self.window_s}
        if not own or not state_filters and (not (young | before.keys())
                                             or not any(i.encode() in body for i in young | before.keys())):
            return body
        root = ET.fromstring(body)
        ns = _namespace(root)
        for machine in root.iter(f"{ns}item") if call.action == "DescribeInstances" else ():
            state = machine.find(f"{ns}instanceState")
            if machine.findtext(f"{ns}instanceId") in before and state is not None:
                state[:] = list(before[machine.findtext(f"{ns}instanceId")])
        listings = (root.findall(f"{ns}reservationSet/{ns}item/{ns}instancesSet") if call.action == "DescribeInstances"
                    else list(root))  # only the items listed, not those an item refers to (a group's rules)
        for listing in listings:
            for item in listing.findall(f"{ns}item"):
                described = {name: item.findtext(f"{ns}instanceState/{ns}{part}")
                             for name, part in STATE_FILTERS.items()}
                if item.findtext(f"{ns}{own}") in young or any(described[name] not in values
                                                               for name, values in state_filters.items()):
                    listing.remove(item)
        for reservations in root.findall(f"{ns}reservationSet"):
            for reservation in reservations.findall(f"{ns}item"):
                if not reservation.findall(f"{ns}instancesSet/{ns}item"):
                    reservations.remove(reservation)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def read_before_roles_added(self, call: AwsCall, body: bytes) -> bytes:
        """GetInstanceProfile's answer without the roles given to the profile less than `iam_propagation_s` ago:
        a read IAM serves from before the change (adding the role again is then refused, LimitExceeded)."""
        if call.service != "iam" or call.action != "GetInstanceProfile":
            return body
        with self._lock:
            added = self._roles_added.get((call.account, call.params.get("InstanceProfileName", "")))
        if added is None or time.time() - added >= self.iam_propagation_s:
            return body
        root = ET.fromstring(body)
        ns = _namespace(root)
        for roles in root.iter(f"{ns}Roles"):
            roles[:] = []
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def _unknown_profile(self, call: AwsCall, name: str) -> Response | None:
        changed = self._profiles_changed.get((call.account, name))
        exists = any(profile.name == name for profile in list(iam_backends[call.account]["aws"].instance_profiles
                                                             .values()))
        if exists and (changed is None or time.time() - changed >= self.profile_propagation_s):
            return None
        return error_response("ec2", "InvalidParameterValue", f"Value ({name}) for parameter iamInstanceProfile.name "
                              "is invalid. Invalid IAM Instance Profile name")

    def _unknown_to_iam(self, call: AwsCall) -> Response | None:
        now = time.time()
        with self._lock:
            young = [(parameter, name) for parameter, name in call.params.items() if parameter in IAM_UNKNOWN
                     and now - self._iam_made.get((call.account, parameter, name), 0.0) < self.iam_propagation_s]
        if not young:
            return None
        parameter, name = young[0]
        return error_response("iam", "NoSuchEntity", IAM_UNKNOWN[parameter].format(name), status=404)

    def record(self, call: AwsCall, body: bytes) -> None:
        """The ids a creating call's answer names, made now; the instance profile an IAM call changed, now; the
        role or profile an IAM call made, now."""
        if call.service == "iam" and call.action in PROFILE_CHANGES:
            with self._lock:
                self._profiles_changed[call.account, call.params["InstanceProfileName"]] = time.time()
        if call.service == "iam" and call.action == "AddRoleToInstanceProfile":
            with self._lock:
                self._roles_added[call.account, call.params["InstanceProfileName"]] = time.time()
        if call.service == "iam" and call.action in IAM_MADE:
            parameter = IAM_MADE[call.action]
            with self._lock:
                self._iam_made[call.account, parameter, call.params[parameter]] = time.time()
        if call.service == "ec2" and self.window_s and call.action in STATE_CHANGES:
            root = ET.fromstring(body)
            ns = _namespace(root)
            with self._lock:
                for change in root.iter(f"{ns}item"):
                    if change.find(f"{ns}previousState") is not None:
                        self._before[change.findtext(f"{ns}instanceId")] = (change.find(f"{ns}previousState"),
                                                                            time.time())
        tags = MADE.get(call.action) if call.service == "ec2" and self.window_s else None
        if tags:
            made = [found for tag in tags for found in re.findall(rf"<{tag}>([^<]+)</{tag}>", body.decode())]
            with self._lock:
                self._made.update(dict.fromkeys(made, time.time()))


def _namespace(root: ET.Element) -> str:
    return root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
