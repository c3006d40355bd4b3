"""EC2's eventual consistency: a call naming a resource made moments ago may be answered that the resource does
not exist ("if you run a command to modify or describe the resource that you just created, its ID might not have
propagated throughout the system", https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
Each EC2 client records the ids its creations answer; a NotFound naming one made in the last few minutes is
asked again, backing off, for up to about two minutes. A NotFound naming anything older is an answer (a teardown
meets gone resources)."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# What each creating action makes: the keys of its answer that name the new resources.
MADE = {"CreateVpc": ("VpcId",), "CreateSubnet": ("SubnetId",), "CreateInternetGateway": ("InternetGatewayId",),
        "CreateRouteTable": ("RouteTableId",), "CreateSecurityGroup": ("GroupId",),
        "AllocateAddress": ("AllocationId",), "CreateVolume": ("VolumeId",), "CreateSnapshot": ("SnapshotId",),
        "RunInstances": ("InstanceId", "NetworkInterfaceId"), "CreateNetworkInterface": ("NetworkInterfaceId",)}
# What each deleting action deletes: a NotFound naming it after that is the answer. (A terminated machine stays
# describable a while, so TerminateInstances is not one.)
DELETED = {"DeleteVpc": "VpcId", "DeleteSubnet": "SubnetId", "DeleteInternetGateway": "InternetGatewayId",
           "DeleteRouteTable": "RouteTableId", "DeleteSecurityGroup": "GroupId", "ReleaseAddress": "AllocationId",
           "DeleteVolume": "VolumeId", "DeleteSnapshot": "SnapshotId", "DeleteNetworkInterface": "NetworkInterfaceId"}
NOT_FOUND = frozenset({"InvalidVpcID.NotFound", "InvalidSubnetID.NotFound", "InvalidInternetGatewayID.NotFound",
                       "InvalidGatewayID.NotFound", "InvalidRouteTableID.NotFound", "InvalidGroup.NotFound",
                       "InvalidAllocationID.NotFound", "InvalidVolume.NotFound", "InvalidSnapshot.NotFound",
                       "InvalidInstanceID.NotFound", "InvalidNetworkInterfaceID.NotFound"})
ID = re.compile(r"[a-z]+-[0-9a-f]{8,17}")  # what EC2's ids look like: vpc-0a1b2c3d4e5f60718
YOUNG_S = 300.0  # how long after its creation a resource's NotFound is taken for propagation
MAX_ATTEMPTS = 16  # 0.5, 1, 2, 4, 8, then 10 s apart: about two minutes

_made: dict[str, float] = {}  # resource id -> time.monotonic() of its creation, for every client of the process
_lock = threading.Lock()


def watch(client: Any) -> None:
    """Record what `client`'s creations make (and forget what its deletions delete) and ask again a call that
    the propagation of a new resource failed."""
    client.meta.events.register("after-call.ec2", _record)
    client.meta.events.register("needs-retry.ec2", _delay)


def _record(parsed: dict, model: Any, **_: Any) -> None:
    keys = MADE.get(model.name)
    if keys and "Error" not in parsed:
        now = time.monotonic()
        with _lock:
            for old in [made for made, at in _made.items() if now - at >= YOUNG_S]:
                del _made[old]
            _made.update((made, now) for made in _values(parsed, keys))


def _values(answer: Any, keys: tuple[str, ...]) -> list[str]:
    if isinstance(answer, dict):
        return [v for k, v in answer.items() if k in keys and isinstance(v, str)] + [
            found for v in answer.values() for found in _values(v, keys)]
    if isinstance(answer, list):
        return [found for item in answer for found in _values(item, keys)]
    return []


def _delay(response: tuple | None = None, attempts: int = 0, request_dict: dict | None = None,
           **_: Any) -> float | None:
    """Seconds to wait before asking again, or None to let the answer stand (botocore's needs-retry, called after
    every answer)."""
    if response is None:
        return None
    body = (request_dict or {}).get("body", {})
    error = response[1].get("Error") or {}
    with _lock:
        if not error and body.get("Action") in DELETED:  # gone: a NotFound naming it now is the answer
            _made.pop(body.get(DELETED[body["Action"]]), None)
        if error.get("Code") not in NOT_FOUND or attempts >= MAX_ATTEMPTS:
            return None
        named = [v for k, v in body.items() if not k.startswith("Filter.") and isinstance(v, str) and ID.fullmatch(v)]
        # EC2 names the id it does not know; where it does not, any young id the call names may be it.
        unknown = [v for v in named if v in (error.get("Message") or "")] or named  # a Message may be None
        now = time.monotonic()
        young = [v for v in unknown if v in _made and now - _made[v] < YOUNG_S]
    if not young:
        return None
    if attempts == 1:
        log.info("EC2 does not know %s yet (%s): asking again", young[0], error["Code"])
    return min(0.25 * 2 ** attempts, 10.0)
