"""EC2's eventual consistency, which moto lacks: for a while after a resource is made, a call naming its id may be
answered that it does not exist ("if you run a command to modify or describe the resource that you just created,
its ID might not have propagated throughout the system, and you will get an error responding that the resource
does not exist": https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html), and a listing
may leave it out ("the result of an API command you run that affects your Amazon EC2 resources might not be
immediately visible to all subsequent commands you run", the same page). Off until a test sets a window; then every
EC2 call that names (other than in a filter) a resource made less than that long ago is answered so, and every
listing leaves such a resource out: the worst that AWS allows."""

import re
import threading
import time
import xml.etree.ElementTree as ET

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
# A route's target (CreateRoute's GatewayId) is a gateway of any kind to EC2.
GATEWAY_NOT_FOUND = ("InvalidGatewayID.NotFound", "The gateway ID '{}' does not exist")


class Consistency:
    def __init__(self) -> None:
        self.window_s = 0.0
        self._made: dict[str, float] = {}  # id -> time.time() of its creation, while a window is set
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.window_s = 0.0
            self._made.clear()

    def refusal(self, call: AwsCall) -> Response | None:
        """NotFound for an EC2 call naming a resource made within the window; None otherwise."""
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

    def listed(self, call: AwsCall, body: bytes) -> bytes:
        """A listing's answer without the resources made within the window (and without a reservation left with
        no machine)."""
        own = LISTED.get(call.action) if call.service == "ec2" and self.window_s else None
        now = time.time()
        with self._lock:
            young = {made for made, at in self._made.items() if now - at < self.window_s}
        if not own or not young or not any(made.encode() in body for made in young):
            return body
        root = ET.fromstring(body)
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        listings = (root.findall(f"{ns}reservationSet/{ns}item/{ns}instancesSet") if call.action == "DescribeInstances"
                    else list(root))  # only the items listed, not those an item refers to (a group's rules)
        for listing in listings:
            for item in listing.findall(f"{ns}item"):
                if item.findtext(f"{ns}{own}") in young:
                    listing.remove(item)
        for reservations in root.findall(f"{ns}reservationSet"):
            for reservation in reservations.findall(f"{ns}item"):
                if not reservation.findall(f"{ns}instancesSet/{ns}item"):
                    reservations.remove(reservation)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def record(self, call: AwsCall, body: bytes) -> None:
        """The ids a creating call's answer names, made now."""
        tags = MADE.get(call.action) if call.service == "ec2" and self.window_s else None
        if tags:
            made = [found for tag in tags for found in re.findall(rf"<{tag}>([^<]+)</{tag}>", body.decode())]
            with self._lock:
                self._made.update(dict.fromkeys(made, time.time()))
