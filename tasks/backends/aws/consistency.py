"""EC2's eventual consistency: a call naming a resource made moments ago may be answered that the resource does
not exist ("if you run a command to modify or describe the resource that you just created, its ID might not have
propagated throughout the system", https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
Each EC2 client records the ids its creations answer; a NotFound naming one made in the last few minutes is
asked again, backing off, for up to about two minutes. A NotFound naming anything older is an answer (a teardown
meets gone resources). Listings lag the same way ("the result of an API command ... might not be immediately
visible to all subsequent commands", the same page): what a run made is awaited in its listings (`unlisted`),
so that a teardown moments after a failed provision does not miss it. Another process may tear the run down (a
served run's cancel hook runs in its runner, after the flow process was killed): what each process makes for a run,
and deletes, is written to the run's journal in the home (journal.py), which the others read."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from tasks.backends.aws import journal, tags

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
# What of MADE a run's inventory lists, and awaits there: not a snapshot build's snapshot (untagged once it is
# complete, the dataset's), nor the interfaces that go with the machines.
LISTED = frozenset({"VpcId", "SubnetId", "InternetGatewayId", "RouteTableId", "GroupId", "AllocationId", "VolumeId",
                    "InstanceId"})
# Actions after which a resource is listed no more (a terminated machine is not among a run's live ones).
UNLISTING = frozenset(DELETED) | {"TerminateInstances"}
ID = re.compile(r"[a-z]+-[0-9a-f]{8,17}")  # what EC2's ids look like: vpc-0a1b2c3d4e5f60718
YOUNG_S = 300.0  # how long after its creation a resource's NotFound is taken for propagation
MAX_ATTEMPTS = 16  # 0.5, 1, 2, 4, 8, then 10 s apart: about two minutes
LISTING_WAIT_S = 120.0  # how long after its creation a resource missing from a listing is awaited there

_made: dict[str, float] = {}  # resource id -> time.monotonic() of its creation, for every client of the process

_unlisted: dict[str, tuple[str, str, float]] = {}  # resource id -> (region, run id, time.monotonic() of creation)
# resource id -> (journals' folder, run id, time.monotonic() of creation): what to write "gone" for when deleted
_journaled: dict[str, tuple[Path, str, float]] = {}
_journals_read: set[tuple[Path, str]] = set()
_lock = threading.Lock()


def watch(client: Any, journals: Path | None = None) -> None:
    """Record what `client`'s creations make, and for which run (forget what its deletions delete), also in the
    run's journal in the folder `journals` (none where None), and ask again a call that the propagation of a new
    resource failed."""
    client.meta.events.register("before-call.ec2", functools.partial(_note_run, journals=journals))
    client.meta.events.register("after-call.ec2", _record)
    client.meta.events.register("needs-retry.ec2", _delay)


def unlisted(region: str, run_id: str | None, listed: set[str], journals: Path | None = None) -> list[str]:
    """What this process, or another that wrote the run's journal in the folder `journals`, made for the run (for
    any run this process made something for, when None) in `region` in the last LISTING_WAIT_S that is not in
    `listed` and not deleted since: what EC2 does not list yet. What is in `listed` is awaited no more."""
    now = time.monotonic()
    with _lock:
        if journals is not None and run_id is not None and (journals, run_id) not in _journals_read:
            _journals_read.add((journals, run_id))  # once: what is made later is this process's or found by tag
            for made, where, age in journal.others_made(journals, run_id, LISTING_WAIT_S):
                _unlisted.setdefault(made, (where, run_id, now - age))
                _journaled.setdefault(made, (journals, run_id, now - age))
        for made in [made for made, (_, _, at) in _unlisted.items() if made in listed or now - at >= LISTING_WAIT_S]:
            del _unlisted[made]
        return sorted(made for made, (where, run, _) in _unlisted.items()
                      if where == region and run_id in (None, run))


def settled(journals: Path, run_id: str) -> None:
    """The run's journal is needed no more: nothing of the run is left."""
    with _lock:
        journal.remove(journals, run_id)


def vanished(ids: list[str]) -> None:
    """EC2 deleted these itself (EBS deletes a volume it cannot encrypt): awaited in listings no more, and a NotFound
    naming one is an answer."""
    with _lock:
        _forget_unlisted(ids)
        for made in ids:
            _made.pop(made, None)


def moved(journals: Path | None, run_id: str, ids: list[str]) -> None:
    """These carry another run's tag now (pool replicas a run claimed): awaited in the run's listings no more, by
    this process nor, through its journal in the folder `journals`, by the others."""
    with _lock:
        for made in ids:
            _unlisted.pop(made, None)
            _journaled.pop(made, None)
    if journals is not None:
        journal.gone(journals, run_id, ids)


def forget_all() -> None:
    """Await nothing more: for a process whose account was emptied behind its back (the tests' simulator reset)."""
    with _lock:
        _unlisted.clear()
        _journaled.clear()
        _journals_read.clear()


def _note_run(params: dict, context: dict, journals: Path | None, **_: Any) -> None:
    """The run a creating call tags what it makes with (its TagSpecification.N.Tag.M), for `_record`."""
    body = params.get("body") or {}
    context["imagenet18_run"] = next((body.get(key[:-len("Key")] + "Value") for key, value in body.items()
                                      if key.endswith(".Key") and value == tags.RUN), None)
    context["imagenet18_journals"] = journals


def _record(parsed: dict, model: Any, context: dict, **_: Any) -> None:
    keys = MADE.get(model.name)
    if keys and "Error" not in parsed:
        now = time.monotonic()
        run, journals = context.get("imagenet18_run"), context.get("imagenet18_journals")
        region = context.get("client_region", "")
        with _lock:
            for old in [made for made, at in _made.items() if now - at >= YOUNG_S]:
                del _made[old]
            _made.update((made, now) for made in _values(parsed, keys))
            listed = _values(parsed, tuple(LISTED.intersection(keys)))
            if run and listed:
                _unlisted.update((made, (region, run, now)) for made in listed)
                if journals is not None:
                    _journaled.update((made, (journals, run, now)) for made in listed)
                    journal.prune(journals, LISTING_WAIT_S)
                    journal.made(journals, run, region, listed)


def _forget_unlisted(ids) -> None:
    now = time.monotonic()
    for made in ids:
        _unlisted.pop(made, None)
        if (entry := _journaled.pop(made, None)) and now - entry[2] < LISTING_WAIT_S:
            journal.gone(entry[0], entry[1], [made])
    for old in [made for made, (_, _, at) in _journaled.items() if now - at >= LISTING_WAIT_S]:
        del _journaled[old]


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
        if not error and body.get("Action") in UNLISTING:
            _forget_unlisted(body.values())
        if error.get("Code") not in NOT_FOUND:
            return None
        named = [v for k, v in body.items() if not k.startswith("Filter.") and isinstance(v, str) and ID.fullmatch(v)]
        # EC2 names the id it does not know; where it does not, any young id the call names may be it.
        unknown = [v for v in named if v in (error.get("Message") or "")] or named  # a Message may be None
        now = time.monotonic()
        young = [v for v in unknown if v in _made and now - _made[v] < YOUNG_S] if attempts < MAX_ATTEMPTS else []
        if not young and body.get("Action") in UNLISTING:  # gone before this deletion: not to be listed again
            _forget_unlisted(unknown)
    if not young:
        return None
    if attempts == 1:
        log.info("EC2 does not know %s yet (%s): asking again", young[0], error["Code"])
    return min(0.25 * 2 ** attempts, 10.0)
