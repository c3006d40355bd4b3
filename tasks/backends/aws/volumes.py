"""Dataset replicas: N volumes made from the dataset snapshot (the seed's tools/replicate_imagenet.py), in the
cluster's zone, encrypted, with provisioned IOPS, named like the seed's and tagged with the run."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.backends.aws import consistency, pools, secrets, tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.encryption import EBS
from tasks.backends.aws.waiting import until, waiter_config
from tasks.backends.base import POOL_OWNER, BackendError, ClusterSpec, InputError, Resource, pool_lock_expiry

log = logging.getLogger(__name__)

KIND = "imagenet18:kind"
REPLICA = "replica"
POOL_INDEX = "imagenet18:pool-index"  # on a pool replica a run claimed: its place and time in the pool
POOL_EXPIRES = "imagenet18:pool-expires"
# Provisioned IOPS per GiB AWS allows, and each type's IOPS ceiling.
IOPS_PER_GB = {"io1": 50, "io2": 1000, "gp3": 500}
MAX_IOPS = {"io1": 64_000, "io2": 256_000, "gp3": 16_000}
MIN_SIZE_GB = {"io1": 4, "io2": 4, "gp3": 1}
GP3_BASELINE_IOPS = 3000  # whatever the size
GP3_MIBPS_PER_IOPS = 0.25  # the throughput a gp3 volume may have beyond its 125 MiB/s baseline, per IOPS
BROKEN_STATES = ("error", "deleting", "deleted")
VOLUME_POLL_S = 2.0
LOCK_ATTEMPTS = 3  # of a lock SSM answers TooManyUpdates (`_lock`)
CLAIM_SETTLED_S = 30.0  # a run tags a pool replica as its own as soon as it has locked it, or unlocks it once back
VANISHED_AFTER_S = 10.0  # missing from listings that long after being in one: gone, not a listing's lag
FILTER_VALUES = 200  # the most values an EC2 filter takes
INITIALIZED = 100  # DescribeVolumeStatus's initialization progress, in percent, once every block is on the volume
INITIALIZATION_REPORT_S = 360.0  # EBS reports a new volume's initialization within 5 minutes of making it


@dataclass(frozen=True)
class VolumeSettings:
    """How each replica is made. A volume made from a snapshot fetches each block from S3 on its first read
    unless initialized first; `initialization_mibps` is the rate EBS initializes it at, 100 to 300 MiB/s, so a
    replica is warm after a known time (https://docs.aws.amazon.com/ebs/latest/userguide/initalize-volume.html)."""
    volume_type: str
    iops: int
    throughput_mbps: int
    initialization_mibps: int

    def warmup_seconds(self, snapshot_gb: int) -> float:
        """How long EBS takes to fetch the snapshot's blocks at the rate: the snapshot's size bounds its data."""
        return snapshot_gb * 1024 / self.initialization_mibps


def find_snapshot(clients: Clients, dataset: str, owner: str, parallel: int = 1) -> dict:
    """Exactly one completed snapshot: by id, or by Name tag or description (the seed's was found by
    description, `imagenet18-backup`; EC2 ANDs filters, so the two are two lookups, made at once)."""
    ec2 = clients.ec2
    if dataset.startswith("snap-"):
        try:
            found = ec2.describe_snapshots(SnapshotIds=[dataset])["Snapshots"]
        except Exception as exc:  # noqa: BLE001 - InvalidSnapshot.NotFound and malformed ids alike
            raise InputError(f"dataset snapshot {dataset} not found in {clients.region}: {exc}") from None
    else:
        with pools.pool(parallel, 2) as pool:
            lookups = [pool.submit(ec2.describe_snapshots, Filters=[{"Name": field, "Values": [dataset]}],
                                   OwnerIds=[owner]) for field in ("tag:Name", "description")]
            found = list({s["SnapshotId"]: s for lookup in lookups for s in lookup.result()["Snapshots"]}.values())
    if not found:
        raise InputError(f"no snapshot named or described {dataset!r} (owner {owner}) in {clients.region}; make "
                         "one with `imagenet18 snapshot --from URL --name NAME`, or give a snapshot id")
    if len(found) > 1:
        raise InputError(f"{dataset!r} matches {len(found)} snapshots ({', '.join(s['SnapshotId'] for s in found)})"
                         "; give the snapshot id")
    snapshot = found[0]
    if snapshot["State"] != "completed":
        raise InputError(f"snapshot {snapshot['SnapshotId']} is {snapshot['State']}, not completed yet")
    return snapshot


def check_snapshot_holds(snapshot: dict, reads: Sequence[str], folder: str) -> None:
    """Refuse a snapshot whose dataset is not in `folder` on its volume (aws.dataset_folder), or without a resized
    copy (-sz/<px>) the schedule reads, where its tags say what it holds (`imagenet18 snapshot` writes them); a
    snapshot made by hand says nothing, and the trainer checks on start."""
    found = tags.as_dict(snapshot.get("Tags"))
    if found.get(tags.DATASET_FOLDER, folder) != folder:
        raise InputError(f"snapshot {snapshot['SnapshotId']} holds its dataset in the folder "
                         f"{found[tags.DATASET_FOLDER]!r} on its volume, not {folder!r}: set aws.dataset_folder to "
                         f"{found[tags.DATASET_FOLDER]!r}")
    if tags.DATASET_SIZES not in found:
        log.warning("snapshot %s does not say which resized copies it holds (it was not made by `imagenet18 "
                    "snapshot`); the trainer checks the folders the schedule reads when it starts",
                    snapshot["SnapshotId"])
        return
    held = set(found[tags.DATASET_SIZES].split())
    missing = [trndir for trndir in reads if trndir and trndir.removeprefix("-sz/") not in held]
    if missing:
        sizes = sorted({int(size) for size in held} | {int(trndir.removeprefix("-sz/")) for trndir in missing})
        holds = ", ".join(f"-sz/{size}" for size in sorted(held, key=int)) or "none"
        source = found.get(tags.DATASET_SOURCE, "s3://BUCKET/DATASET")
        raise InputError(f"snapshot {snapshot['SnapshotId']} has no {', '.join(missing)} copy of its dataset, which "
                         f"the schedule reads (it holds {holds}); make a snapshot that does: `imagenet18 snapshot "
                         f"--from {source} --sizes {' '.join(map(str, sizes))}`")


def check_volume_settings(volume_type: str, iops: int, throughput_mbps: int) -> None:
    if iops > MAX_IOPS[volume_type]:
        raise InputError(f"{volume_type} volumes allow at most {MAX_IOPS[volume_type]:,} IOPS, not {iops:,}")
    if volume_type == "gp3" and throughput_mbps > GP3_MIBPS_PER_IOPS * iops:
        needed, allowed = math.ceil(throughput_mbps / GP3_MIBPS_PER_IOPS), int(GP3_MIBPS_PER_IOPS * iops)
        raise InputError(f"gp3 volumes allow at most {GP3_MIBPS_PER_IOPS} MiB/s of throughput per IOPS: "
                         f"aws.throughput_mbps={throughput_mbps} needs aws.iops={needed} or more, and "
                         f"aws.iops={iops} allows aws.throughput_mbps={allowed} at most (`--iops`, `--throughput`)")


def volume_size_gb(volume_type: str, iops: int, snapshot_gb: int) -> int:
    """The snapshot's size, or more where AWS needs more GiB for the IOPS asked (e.g. 50 IOPS per GiB on io1)."""
    needed = -(-iops // IOPS_PER_GB[volume_type]) if volume_type != "gp3" or iops > GP3_BASELINE_IOPS else 1
    return max(snapshot_gb, MIN_SIZE_GB[volume_type], needed)


def replica_name(zone: str, index: int) -> str:
    return f"imagenet_{zone[-2:]}_{index:02d}"


def run_volumes(clients: Clients, run_id: str) -> dict[int, dict]:
    """The run's replicas that are or will be usable (its own and those it claimed), by machine index."""
    return {int(tags.as_dict(v.get("Tags"))[tags.INDEX]): v for v in clients.ec2.describe_volumes(
        Filters=tags.run_filter(run_id) + [{"Name": f"tag:{KIND}", "Values": [REPLICA]},
                                           {"Name": "status", "Values": ["creating", "available", "in-use"]}]
    )["Volumes"]}


def replicate(clients: Clients, spec: ClusterSpec, snapshot: dict, zone: str, indices: Sequence[int],
              settings: VolumeSettings, parallel: int, existing: dict[int, dict] | None = None) -> list[Resource]:
    """A volume for each of `indices` (a run's machines, or places in the pool), all at once; the ones held already
    (`existing`, the run's own looked up when not given) are reused; returns when all are available and
    initialized, so no block is fetched from S3 once training runs."""
    if existing is None:
        existing = run_volumes(clients, spec.run_id)

    def one(index: int) -> dict:
        return existing.get(index) or _create_replica(clients, spec, snapshot, zone, index, settings)

    with pools.pool(parallel, len(indices)) as pool:
        made = list(pool.map(one, indices))
    wait_available(clients, made, seen_before=[v["VolumeId"] for v in existing.values()])
    ids = [v["VolumeId"] for v in made]
    wait_initialized(clients, ids, 2 * settings.warmup_seconds(snapshot["VolumeSize"]) + 300)
    return [_as_resource(volume, spec.run_id) for volume in made]


def wait_available(clients: Clients, volumes: list[dict], seen_before: Sequence[str] = ()) -> None:
    """Until the volumes (CreateVolume's answers, or as described) are available. They are looked for in a listing,
    which may leave a new one out for a while but answers no NotFound (that a call naming one would be asked again,
    for minutes: consistency.py). One missing from it for VANISHED_AFTER_S after being listed (here, or before:
    `seen_before`, such as a retry's own replicas and claimed pool replicas), or never listed in
    consistency.LISTING_WAIT_S, is gone. EBS deletes a volume it cannot encrypt moments after accepting it ("AWS
    authenticates the KMS key asynchronously": CreateVolume's KmsKeyId)."""
    ids = [v["VolumeId"] for v in volumes]
    last = {v["VolumeId"]: v for v in volumes}  # each volume as last answered
    listed_once = set(seen_before)
    missing_since: dict[str, float] = {}
    began = time.monotonic()

    def available() -> bool:
        listed = _as_listed(clients, ids)
        now = time.monotonic()
        for volume_id in ids:
            if volume_id in listed:
                listed_once.add(volume_id)
                missing_since.pop(volume_id, None)
            else:
                missing_since.setdefault(volume_id, now)
        if gone := sorted(i for i, since in missing_since.items() if now - since >= VANISHED_AFTER_S
                          and (i in listed_once or now - began >= consistency.LISTING_WAIT_S)):
            consistency.vanished(gone)
            _raise_gone(gone, last)
        last.update(listed)
        if broken := sorted(f"{i} ({v['State']})" for i, v in listed.items() if v["State"] in BROKEN_STATES):
            raise BackendError(f"volume(s) {', '.join(broken)} will never be available")
        # One in use is past available: a retry's own replica attached already, a kept pool replica a run claimed.
        return len(listed) == len(ids) and all(v["State"] in ("available", "in-use") for v in listed.values())

    until(f"{len(ids)} volume(s) available", available, poll=VOLUME_POLL_S)


def _as_listed(clients: Clients, volume_ids: Sequence[str]) -> dict[str, dict]:
    """The volumes as a listing by id describes them now: one gone (or not listed yet) is left out, not a NotFound."""
    listed: dict[str, dict] = {}
    for chunk in [volume_ids[i:i + FILTER_VALUES] for i in range(0, len(volume_ids), FILTER_VALUES)]:
        pages = clients.ec2.get_paginator("describe_volumes").paginate(Filters=[{"Name": "volume-id", "Values": chunk}])
        listed.update((v["VolumeId"], v) for page in pages for v in page["Volumes"])
    return listed


def _raise_gone(gone: list[str], last: dict[str, dict]) -> None:
    if all(last[i].get("State") == "creating" and last[i].get("Encrypted") for i in gone):
        keys = ", ".join(sorted({last[i].get("KmsKeyId", "") for i in gone} - {""})) \
            or "the account's default for EBS: `aws ec2 get-ebs-default-kms-key-id`"
        raise InputError(f"EBS deleted volume(s) {', '.join(gone)} moments after accepting them, as it does with a "
                         f"volume it cannot encrypt: their KMS key ({keys}) is disabled or pending deletion, or these "
                         f"credentials may not use it; they need {EBS.actions} on it, from its key policy or theirs")
    said = ", ".join(f"{i} (last {last[i].get('State', 'not listed')})" for i in gone)
    raise BackendError(f"volume(s) {said} went away while the run waited for them: deleted by someone else?")


def wait_initialized(clients: Clients, volume_ids: list[str], timeout: float) -> None:
    """Until EBS reports the initialization of each of these volumes (made from a snapshot) complete. EBS reports
    none for a while after it made a volume ("up to 5 minutes", VolumeStatusItem's docs): one still reporting none
    after INITIALIZATION_REPORT_S is taken as initialized, with a warning."""
    since, warned = time.monotonic(), False

    def warm() -> bool:
        nonlocal warned
        statuses = clients.ec2.describe_volume_status(VolumeIds=volume_ids)["VolumeStatuses"]
        unreported = [s["VolumeId"] for s in statuses if "InitializationStatusDetails" not in s]
        if unreported and time.monotonic() - since < INITIALIZATION_REPORT_S:
            return False
        if unreported and not warned:
            log.warning("EBS reports no initialization for %s after %.0f s: going on without waiting for them, whose "
                        "first reads may fetch blocks from S3", ", ".join(unreported), INITIALIZATION_REPORT_S)
            warned = True
        return all(s["InitializationStatusDetails"]["Progress"] >= INITIALIZED for s in statuses
                   if "InitializationStatusDetails" in s)

    until(f"{len(volume_ids)} dataset replica(s) initialized", warm, timeout + INITIALIZATION_REPORT_S, poll=5.0)


def _create_replica(clients: Clients, spec: ClusterSpec, snapshot: dict, zone: str, index: int,
                    settings: VolumeSettings) -> dict:
    name = replica_name(zone, index)
    kind, iops = settings.volume_type, settings.iops
    performance = {"Iops": iops} if kind in ("io1", "io2") else {"Iops": iops, "Throughput": settings.throughput_mbps}
    run_tags = tags.tag_list(spec.run_id, spec.expires_at, name, **{tags.INDEX: str(index), KIND: REPLICA})
    return clients.ec2.create_volume(SnapshotId=snapshot["SnapshotId"], AvailabilityZone=zone, Encrypted=True,
                                     Size=volume_size_gb(kind, iops, snapshot["VolumeSize"]), VolumeType=kind,
                                     VolumeInitializationRate=settings.initialization_mibps,
                                     TagSpecifications=tags.tag_specs("volume", run_tags), **performance)


def pool_volumes(clients: Clients, states: Sequence[str] = ("available",)) -> list[dict]:
    """The pool's unexpired replicas in `states` (by default those a run could claim now), in their order in the
    pool."""
    found = clients.ec2.describe_volumes(Filters=tags.run_filter(POOL_OWNER) + [
        {"Name": f"tag:{KIND}", "Values": [REPLICA]}, {"Name": "status", "Values": list(states)}])["Volumes"]
    return sorted((v for v in found if not _as_resource(v, POOL_OWNER).expired),
                  key=lambda v: _as_resource(v, POOL_OWNER).details["index"])


def unused_pool_indices(clients: Clients, count: int) -> list[int]:
    """`count` places in the pool after those its replicas hold, the ones runs hold included: a pool may hold
    replicas of several datasets and zones, each replica named after its place."""
    held = replicas(clients, None)
    used = [r.details["pool_index"] if "pool_index" in r.details else r.details["index"]
            for r in held if r.run_id == POOL_OWNER or "pool_index" in r.details]
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


def keep(clients: Clients, pool: list[dict], expires_at: dt.datetime, count: int) -> dict[int, dict]:
    """Up to `count` of the pool replicas `pool` (`servable`), by their place in the pool, each kept until
    `expires_at` where its own expiry is sooner. Each is locked meanwhile, as a run claims one (`claim`): one a run
    is claiming is the run's, and one deleted meanwhile is passed over."""
    kept: dict[int, dict] = {}
    for listed in pool:
        if len(kept) == count:
            break
        if not _lock(clients, POOL_OWNER, pool_lock_expiry(), listed["VolumeId"]):
            continue
        try:
            volume = _in_pool_now(clients, [listed["VolumeId"]]).get(listed["VolumeId"])
            replica = volume and _as_resource(volume, POOL_OWNER)
            if (not replica or volume["State"] not in ("creating", "available") or replica.expired
                    or replica.details["index"] in kept):  # two pool makers at once
                continue
            if expires_at > replica.expires_at:
                later = [{"Key": tags.EXPIRES, "Value": tags.stamp(expires_at)}]
                clients.ec2.create_tags(Resources=[replica.id], Tags=later)
                volume = {**volume, "Tags": [*volume["Tags"], *later]}  # the later key wins in as_dict
        finally:
            secrets.delete(clients, [_claim_name(listed["VolumeId"])])
        kept[replica.details["index"]] = volume
    return kept


def _in_pool_now(clients: Clients, volume_ids: Sequence[str]) -> dict[str, dict]:
    """Those of the pool replicas that are the pool's still, now that they are locked (not deleted, nor a run's,
    since they were listed); with their tags as they are now (another process may have kept one longer)."""
    return {i: v for i, v in _as_listed(clients, volume_ids).items()
            if v["State"] not in BROKEN_STATES and tags.as_dict(v.get("Tags")).get(tags.RUN) == POOL_OWNER}


def claim(clients: Clients, spec: ClusterSpec, pool: list[dict], indices: list[int]) -> dict[int, dict]:
    """Pool replicas (`servable`) for the run's machines at `indices`. An SSM parameter per volume, which AWS
    creates only where none exists, is the lock two runs cannot both win; the volume is then tagged as the run's,
    keeping its place and time in the pool for when the run gives it back."""
    claimed: dict[int, dict] = {}
    for listed in pool:
        if len(claimed) == len(indices):
            break
        if not _lock(clients, spec.run_id, spec.expires_at, listed["VolumeId"]):
            continue
        volume = _in_pool_now(clients, [listed["VolumeId"]]).get(listed["VolumeId"])
        if volume is None or volume["State"] != "available" or _as_resource(volume, POOL_OWNER).expired:
            secrets.delete(clients, [_claim_name(listed["VolumeId"])])
            continue
        index, pool_tags = indices[len(claimed)], tags.as_dict(volume.get("Tags"))
        run_tags = tags.tag_list(spec.run_id, spec.expires_at, **{
            tags.INDEX: str(index), POOL_INDEX: pool_tags[tags.INDEX], POOL_EXPIRES: pool_tags[tags.EXPIRES]})
        clients.ec2.create_tags(Resources=[volume["VolumeId"]], Tags=run_tags)
        consistency.moved(clients.journals, POOL_OWNER, [volume["VolumeId"]])
        claimed[index] = {**volume, "Tags": [*volume["Tags"], *run_tags]}  # the later key wins in as_dict
    return claimed


def servable(pool: list[dict], snapshot: dict, zone: str, settings: VolumeSettings) -> list[dict]:
    """The pool replicas (`pool_volumes`) a run of `snapshot` in `zone` with these settings would claim."""
    return [v for v in pool if v["SnapshotId"] == snapshot["SnapshotId"] and v["AvailabilityZone"] == zone
            and _serves(v, settings)]


def _serves(volume: dict, settings: VolumeSettings) -> bool:
    """Whether a pool replica is the run's volume type with at least its IOPS (and gp3 throughput): a run asking
    for faster disks than the pool was made with makes its own rather than train on slower ones."""
    return (volume["VolumeType"] == settings.volume_type and volume.get("Iops", 0) >= settings.iops
            and (settings.volume_type != "gp3" or volume.get("Throughput", 0) >= settings.throughput_mbps))


def _lock(clients: Clients, owner: str, expires_at: dt.datetime, volume_id: str) -> bool:
    """Whether this call made the volume's lock. SSM answers TooManyUpdates (which botocore does not retry) to a
    PutParameter racing another's of the same name, or made again moments after it was deleted (a lock just
    given back): asked again a few times, then not won, as the lock another holds."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            clients.client("ssm").put_parameter(Name=_claim_name(volume_id), Value=owner, Type="String",
                                                Tags=tags.tag_list(owner, expires_at))
            return True
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) == "ParameterAlreadyExists":
                return False
            if error_code(exc) != "TooManyUpdates":
                raise
            if attempt + 1 < LOCK_ATTEMPTS:
                time.sleep(1.0 + attempt)
    return False


def _claim_name(volume_id: str) -> str:
    return f"{secrets.ROOT}/claims/{volume_id}"


def give_back(clients: Clients, replica: Resource) -> None:
    """A claimed replica back in the pool, as it was there (deleted instead once the pool's time is up, as it is
    now: the pool may have been deleted since the run's teardown listed it), then its lock. Its run's machines must
    be gone."""
    if found := _as_listed(clients, [replica.id]).get(replica.id):
        pool_expires = dt.datetime.fromisoformat(tags.as_dict(found.get("Tags")).get(
            POOL_EXPIRES, replica.details["pool_expires"]))
        if pool_expires <= dt.datetime.now(dt.timezone.utc):
            delete(clients, [replica.id])
        else:
            clients.ec2.create_tags(Resources=[replica.id], Tags=tags.tag_list(
                POOL_OWNER, pool_expires, **{tags.INDEX: str(replica.details["pool_index"])}))
            clients.ec2.delete_tags(Resources=[replica.id], Tags=[{"Key": POOL_INDEX}, {"Key": POOL_EXPIRES}])
    secrets.delete(clients, [_claim_name(replica.id)])


def delete_pool(clients: Clients, expired_only: bool = False) -> list[Resource]:
    """The pool's replicas (`expired_only`: those whose time is up), deleted but those runs hold, which are marked
    to be deleted when their runs give them back (a run gives back an expired one deleted already). Each is locked
    first, as a run claims one (`claim`): one a run claims meanwhile is the run's, and marked once the run has
    tagged it as its own; one a run is giving back is locked again once its lock is gone."""
    deleted: list[Resource] = []
    if not expired_only:  # first too: one a run holds now may be given back before the pool's are listed
        retire_claimed(clients)
    deadline = time.monotonic() + CLAIM_SETTLED_S
    while True:
        locked, lost = [], []
        try:
            for replica in replicas(clients, POOL_OWNER):
                if expired_only and not replica.expired:
                    continue
                (locked if _lock(clients, POOL_OWNER, pool_lock_expiry(), replica.id) else lost).append(replica)
            # As they are now that they are locked: another process may have kept one longer, or deleted it.
            now = {i: _as_resource(v, POOL_OWNER) for i, v in _in_pool_now(clients, [r.id for r in locked]).items()}
            doomed = [now[r.id] for r in locked if r.id in now and (not expired_only or now[r.id].expired)]
            delete(clients, [r.id for r in doomed])
            deleted += doomed
        finally:
            secrets.delete(clients, [_claim_name(r.id) for r in locked])
        if not lost:
            break
        if time.monotonic() > deadline:
            log.warning("pool replica(s) %s stay locked, by a run claiming them or a deletion elsewhere: the "
                        "scheduled cleanup deletes them once they have expired and are free",
                        ", ".join(r.id for r in lost))
            break
        time.sleep(VOLUME_POLL_S)
    if not expired_only:  # and last: one a run claimed meanwhile
        retire_claimed(clients)
    return deleted


def sweep_pool(clients: Clients) -> list[Resource]:
    """The pool's expired replicas, each on its own expiry (`imagenet18 replicate` may have added some with a later
    one), after its stale locks (`pool_lock_expiry`), which would keep a replica from ever being deleted."""
    stale = [r for r in secrets.parameters(clients, POOL_OWNER) if r.expired]
    secrets.delete(clients, [r.id for r in stale])
    return stale + delete_pool(clients, expired_only=True)


def retire_claimed(clients: Clients) -> list[Resource]:
    """The pool replicas runs hold now, marked to be deleted, not kept, when their runs give them back."""
    held = [r for r in replicas(clients, None) if "pool_index" in r.details]
    now = tags.stamp(dt.datetime.now(dt.timezone.utc))
    for replica in held:  # one at a time: a run may delete its own (given back expired) meanwhile
        try:
            clients.ec2.create_tags(Resources=[replica.id], Tags=[{"Key": POOL_EXPIRES, "Value": now}])
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) != "InvalidVolume.NotFound":
                raise
    return held


def move(clients: Clients, spec: ClusterSpec, replicas: list[Resource], zone: str, settings: VolumeSettings,
         parallel: int) -> list[Resource]:
    """As many replicas, made anew in `zone` from the same snapshot (a volume cannot leave its zone). The run's
    old ones are deleted first, and those it claimed from a pool given back: the run pays for one set and stays
    within its volume quota."""
    ec2 = clients.ec2
    [volume] = ec2.describe_volumes(VolumeIds=[replicas[0].id])["Volumes"]
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[volume["SnapshotId"]])["Snapshots"]
    for replica in replicas:
        if "pool_index" in replica.details:
            give_back(clients, replica)
    delete(clients, [r.id for r in replicas if "pool_index" not in r.details])
    return replicate(clients, spec, snapshot, zone, range(len(replicas)), settings, parallel)


def replicas(clients: Clients, run_id: str | None) -> list[Resource]:
    found = clients.ec2.describe_volumes(Filters=tags.run_filter(run_id) + [{"Name": f"tag:{KIND}",
                                                                             "Values": [REPLICA]}])["Volumes"]
    return sorted((_as_resource(v, tags.as_dict(v.get("Tags"))[tags.RUN]) for v in found),
                  key=lambda r: (r.run_id, r.details["index"]))


def delete(clients: Clients, volume_ids: list[str]) -> None:
    """Delete and wait until gone. A volume still attached to a machine is an error: tear the run down first.
    EC2 deletes only an available volume, so one still creating (a teardown moments after the replicas were asked
    for) is waited for first; one EBS could not make goes by itself, and one already deleting is left to go."""
    ec2 = clients.ec2
    if not volume_ids:
        return
    for volume in ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]:
        attached = [a["InstanceId"] for a in volume.get("Attachments", []) if a["State"] in ("attaching", "attached")]
        if attached:
            raise BackendError(f"volume {volume['VolumeId']} is attached to {', '.join(attached)}; terminate the "
                               "machine first (`imagenet18 cleanup`)")
        if volume["State"] != "deleting":
            until(f"volume {volume['VolumeId']} deleted once made", lambda v=volume["VolumeId"]: _delete_made(ec2, v))
    ec2.get_waiter("volume_deleted").wait(VolumeIds=volume_ids, WaiterConfig=waiter_config())


def _delete_made(ec2, volume_id: str) -> bool:
    """DeleteVolume; False while EC2 refuses it as the volume is still creating (IncorrectState), True once asked
    or once EBS dropped the volume (one it could not encrypt)."""
    try:
        ec2.delete_volume(VolumeId=volume_id)
    except Exception as exc:  # noqa: BLE001 - botocore's ClientError
        if error_code(exc) == "IncorrectState":
            return False
        if error_code(exc) != "InvalidVolume.NotFound":
            raise
    return True


def _as_resource(volume: dict, run_id: str) -> Resource:
    volume_tags = tags.as_dict(volume.get("Tags"))
    pool = {"pool_index": int(volume_tags[POOL_INDEX]), "pool_expires": volume_tags[POOL_EXPIRES]} \
        if POOL_INDEX in volume_tags else {}
    return Resource("replica", volume["VolumeId"], run_id, tags.expires(volume_tags),
                    {"index": int(volume_tags.get(tags.INDEX, -1)), "name": volume_tags.get("Name", ""),
                     "zone": volume["AvailabilityZone"], "size_gb": volume["Size"], **pool})
