"""Replicas made ahead of runs (`imagenet18 replicate`, the seed's replicate_imagenet.py): a run claims what it
needs of them, makes only the rest, and gives them back when it ends; two runs never hold the same one."""

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks.backends.aws import AwsBackend, consistency, tags, volumes
from tasks.backends.base import POOL_OWNER, ClusterSpec, InputError, Resource
from tasks.backends import local
from tasks.backends.local import LocalBackend
from tests.leftovers import aws_leftovers, aws_leftovers_by_run, local_leftovers
from tests.aws_runs import DATASET, cluster_spec, no_capacity_in, options, run_zones
from tests.support import wait_for
from trainer.demo_data import make_demo_dataset
from trainer.layout import check_source
from trainer.prepare import prepare


def pool_spec(count: int, instance_type: str = "p4d.24xlarge", hours: float = 24) -> ClusterSpec:
    return ClusterSpec(POOL_OWNER, POOL_OWNER, count, instance_type, False,
                       dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours))


def claimed(replicas) -> list[str]:
    return [r.id for r in replicas if "pool_index" in r.details]


def pool_as_it_is(backend) -> list[tuple]:
    return [(r.id, r.details["index"], r.expires_at) for r in backend.resources(POOL_OWNER) if r.kind == "replica"]


# -- AWS -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_aws_run_claims_pool_volumes_for_its_first_machines_and_gives_them_back(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    pool = backend.replicate(pool_spec(3), DATASET, 3, pool=True)
    before = pool_as_it_is(backend)
    spec = cluster_spec("run-pooled", 4)

    replicas = backend.replicate(spec, DATASET, 4)
    assert [r.id for r in replicas[:3]] == [r.id for r in pool] and claimed(replicas) == [r.id for r in pool]
    assert [r.details["index"] for r in replicas] == [0, 1, 2, 3]
    assert backend.replicate(spec, DATASET, 4) == replicas, "a retry claims and makes nothing more"
    assert pool_as_it_is(backend) == [], "held by the run, the pool has none to offer"
    cluster = backend.provision(spec, replicas)
    attached = {a["InstanceId"]: v["VolumeId"] for v in aws.client("ec2").describe_volumes(
        VolumeIds=[r.id for r in replicas])["Volumes"] for a in v["Attachments"]}
    assert [attached[m.id] for m in cluster.machines] == [r.id for r in replicas], "machine i has replica i"

    backend.teardown("run-pooled")
    assert aws_leftovers(aws, "run-pooled") == {}
    assert pool_as_it_is(backend) == before, "back in the pool, in their places, until the pool's own expiry"
    assert set(aws_leftovers_by_run(aws)) == {POOL_OWNER}, "no claim is left"
    backend.delete_replicas(POOL_OWNER)


@pytest.mark.slow
def test_an_aws_run_skips_a_pool_volume_another_run_has_locked(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    pool = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    other = cluster_spec("run-other", 1)
    backend.clients.client("ssm").put_parameter(  # locked by a run that has not tagged it yet (or died there)
        Name=f"/imagenet18/claims/{pool[0].id}", Value="run-other", Type="String",
        Tags=tags.tag_list(other.run_id, other.expires_at))
    replicas = backend.replicate(cluster_spec("run-second", 2), DATASET, 2)
    assert claimed(replicas) == [pool[1].id] and pool[0].id not in [r.id for r in replicas]
    for run_id in ("run-second", "run-other"):
        backend.teardown(run_id)
    assert aws_leftovers(aws) == {"volume": sorted(r.id for r in pool)}
    backend.delete_replicas(POOL_OWNER)


@pytest.mark.slow
@pytest.mark.parametrize("answered, claims_it", [(1, True), (None, False)], ids=["once", "on-and-on"])
def test_a_pool_volume_whose_lock_ssm_answers_too_many_updates_is_asked_again_then_passed_over(
        aws, snapshot, tmp_path, answered, claims_it):
    """SSM answers TooManyUpdates to a PutParameter racing another's of the same name, or made again moments after
    it was deleted (a lock just given back)."""
    backend = AwsBackend(options(), home=tmp_path)
    pool = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    aws.add_fault("ssm", "PutParameter", "TooManyUpdates", status=400, times=answered,
                  match={"Name": f".*/claims/{pool[0].id}"})
    replicas = backend.replicate(cluster_spec("run-second", 2), DATASET, 2)
    assert [rule["fired"] for rule in aws.fault_counts()] == [1 if answered else volumes.LOCK_ATTEMPTS]
    assert claimed(replicas) == ([r.id for r in pool] if claims_it else [pool[1].id])
    backend.teardown("run-second")
    assert aws_leftovers(aws) == {"volume": sorted(r.id for r in pool)}
    backend.delete_replicas(POOL_OWNER)


@pytest.mark.slow
def test_deleting_the_pool_leaves_a_run_the_replica_it_is_claiming_and_deletes_it_when_given_back(aws, snapshot,
                                                                                                  tmp_path):
    """`imagenet18 replicate --delete` while a run claims a pool replica (it has locked it, and tags it as its own a
    moment later): the run keeps it, and its teardown deletes it rather than give it back to a pool that is gone."""
    deleter, run = AwsBackend(options(), home=tmp_path), AwsBackend(options(), home=tmp_path)
    pool = deleter.replicate(pool_spec(2), DATASET, 2, pool=True)
    spec, tagging = cluster_spec("run-claiming", 1), threading.Event()

    def held_until_tagging(**_) -> None:  # botocore takes what a before-call handler returns as the call's answer
        tagging.wait(60)

    run.clients.ec2.meta.events.register("before-call.ec2.CreateTags", held_until_tagging)
    with ThreadPoolExecutor(2) as threads:
        claiming = threads.submit(run.replicate, spec, DATASET, 1)
        wait_for(lambda: aws_leftovers_by_run(aws).get(spec.run_id), seconds=30)  # its lock: a claim parameter
        deleting = threads.submit(deleter.delete_replicas, POOL_OWNER)
        time.sleep(1)
        tagging.set()
        assert [r.id for r in deleting.result()] == [pool[1].id]
        assert claimed(claiming.result()) == [pool[0].id]
    run.teardown(spec.run_id)
    assert aws_leftovers(aws) == {}, "given back to a deleted pool: deleted"


def test_deleting_the_pool_deletes_a_replica_a_run_is_giving_back_once_its_lock_is_gone(aws, snapshot, tmp_path):
    """A run gives a replica back by tagging it the pool's again, then deleting its lock: in between, the replica
    is the pool's but locked."""
    backend = AwsBackend(options(), home=tmp_path)
    [replica] = backend.replicate(pool_spec(1), DATASET, 1, pool=True)
    ssm, giving_back, lock = aws.client("ssm"), cluster_spec("run-giving-back", 1), f"/imagenet18/claims/{replica.id}"
    ssm.put_parameter(Name=lock, Value=giving_back.run_id, Type="String",
                      Tags=tags.tag_list(giving_back.run_id, giving_back.expires_at))
    with ThreadPoolExecutor(1) as threads:
        deleting = threads.submit(backend.delete_replicas, POOL_OWNER)
        time.sleep(1)
        ssm.delete_parameter(Name=lock)
        assert [r.id for r in deleting.result()] == [replica.id]
    assert aws_leftovers(aws) == {}


def test_a_run_that_died_holding_more_claims_than_one_ssm_call_deletes_is_torn_down_in_one_go(aws, tmp_path):
    backend, spec = AwsBackend(options(), home=tmp_path), cluster_spec("run-claimer", 11)
    for index in range(11):  # locks taken on a pool of 11 (the default 16 machines would take 16) before it died
        backend.clients.client("ssm").put_parameter(
            Name=f"/imagenet18/claims/vol-{index:017x}", Value=spec.run_id, Type="String",
            Tags=tags.tag_list(spec.run_id, spec.expires_at))
    assert len(backend.teardown(spec.run_id)) == 11
    assert aws_leftovers(aws) == {}


@pytest.mark.slow
def test_two_aws_runs_at_once_never_claim_the_same_pool_volume(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    pool = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    specs = [cluster_spec(f"run-{name}", 2) for name in ("a", "b")]
    with ThreadPoolExecutor(2) as threads:
        a, b = threads.map(lambda spec: backend.replicate(spec, DATASET, 2), specs)
    assert not set(claimed(a)) & set(claimed(b))
    assert sorted(claimed(a) + claimed(b)) == sorted(r.id for r in pool)
    assert len(a) == len(b) == 2
    for spec in specs:
        backend.teardown(spec.run_id)
    assert aws_leftovers(aws) == {"volume": sorted(r.id for r in pool)}
    backend.delete_replicas(POOL_OWNER)


def test_an_aws_plan_prices_only_the_replicas_the_pool_cannot_serve(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-planned", 4)
    alone = backend.plan(spec, DATASET, 2.0)
    backend.replicate(pool_spec(3), DATASET, 3, pool=True)
    served = backend.plan(spec, DATASET, 2.0)
    [made] = [item for item in alone.items if "replica" in item.what]
    assert [(item.what.split(",")[0], item.count, item.hourly_usd) for item in served.items
            if "replica" in item.what] == [("dataset replica", 1, made.hourly_usd),
                                           ("dataset replica from the pool (`imagenet18 replicate`)", 3, 0.0)]
    assert served.total_usd == pytest.approx(alone.total_usd - 3 * made.hourly_usd * 2.0 - alone.warmup.usd * 3 / 4)
    assert "1 dataset replica(s)" in served.warmup.what
    assert backend.plan(cluster_spec("run-small", 2), DATASET, 2.0).warmup is None, "the pool serves all: no wait"
    backend.delete_replicas(POOL_OWNER)


@pytest.mark.parametrize("asked, claims", [
    ({"iops": 8000}, True),  # the pool's disks are faster than asked: the pool pays for them anyway
    ({"iops": 20_000}, False),
    ({"volume_type": "gp3", "iops": 3000, "throughput_mbps": 125}, False),
], ids=["slower-asked", "faster-asked", "other-type"])
def test_an_aws_run_claims_only_pool_volumes_as_fast_as_it_asks(aws, snapshot, tmp_path, asked, claims):
    pool = AwsBackend(options(), home=tmp_path).replicate(pool_spec(1), DATASET, 1, pool=True)
    backend = AwsBackend(options(**asked), home=tmp_path)
    [replica] = backend.replicate(cluster_spec("run-picky", 1), DATASET, 1)
    assert claimed([replica]) == ([pool[0].id] if claims else [])
    [volume] = aws.client("ec2").describe_volumes(VolumeIds=[replica.id])["Volumes"]
    assert volume["VolumeType"] == asked.get("volume_type", "io2") and volume["Iops"] >= asked["iops"]
    backend.teardown("run-picky")
    assert aws_leftovers(aws) == {"volume": [pool[0].id]}
    backend.delete_replicas(POOL_OWNER)


def test_deleting_the_pool_while_a_run_holds_a_volume_deletes_it_when_the_run_ends(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    pool = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    held = backend.replicate(cluster_spec("run-holding", 1), DATASET, 1)
    assert claimed(held) == [pool[0].id]
    assert [r.id for r in backend.delete_replicas(POOL_OWNER)] == [pool[1].id]
    assert [r.id for r in backend.resources("run-holding") if r.kind == "replica"] == [pool[0].id], \
        "the run keeps its replica while it runs"
    backend.teardown("run-holding")
    assert aws_leftovers(aws, home=tmp_path) == {}
    assert aws.client("ec2").describe_volumes(Filters=tags.run_filter(None))["Volumes"] == []


@pytest.mark.slow
def test_a_run_moved_to_another_zone_gives_its_pool_volumes_back(aws, snapshot, tmp_path):
    backend = AwsBackend(options(other_availability_zones=("us-east-1b",)), home=tmp_path)
    backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    before = pool_as_it_is(backend)
    spec = cluster_spec("run-moved", 2)
    no_capacity_in(aws, "us-east-1a")
    backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert run_zones(aws, "run-moved") == {"machines": ["us-east-1b"] * 2, "replicas": ["us-east-1b"] * 2}
    assert pool_as_it_is(backend) == before, "given back in us-east-1a, not deleted"
    backend.teardown("run-moved")
    assert aws_leftovers(aws, "run-moved") == {}
    backend.delete_replicas(POOL_OWNER)


def test_a_pool_of_another_dataset_goes_beside_the_first_and_a_pool_made_again_is_topped_up(aws, snapshot,
                                                                                           tiny_data, tmp_path):
    backend, ec2 = AwsBackend(options(), home=tmp_path), aws.client("ec2")
    first = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    other = aws.make_snapshot(tiny_data.parent, description="other-dataset")
    second = backend.replicate(pool_spec(2), "other-dataset", 2, pool=True)
    assert [r.details["index"] for r in second] == [2, 3] and not {r.id for r in first} & {r.id for r in second}
    assert {v["SnapshotId"] for v in ec2.describe_volumes(VolumeIds=[r.id for r in second])["Volumes"]} == {other}
    assert claimed(backend.replicate(cluster_spec("run-other", 2), "other-dataset", 2)) == [r.id for r in second]
    assert consistency.unlisted(aws.region, POOL_OWNER, {r.id for r in first}) == [], \
        "the run's now: not awaited in the pool's listings"
    journal = (tmp_path / "aws" / "made" / f"{POOL_OWNER}.jsonl").read_text()
    assert all(json.dumps({"gone": r.id}) in journal for r in second), "nor by the processes that read its journal"

    again = backend.replicate(pool_spec(3, hours=48), DATASET, 3, pool=True)
    assert [r.id for r in again[:2]] == [r.id for r in first] and [r.details["index"] for r in again] == [0, 1, 4]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=47)
    assert all(r.expires_at > later for r in again), "kept for as long as asked this time"
    assert all(r.expires_at > later for r in backend.resources(POOL_OWNER) if r.id in {r.id for r in again})
    backend.teardown("run-other")
    backend.delete_replicas(POOL_OWNER)
    assert aws_leftovers(aws) == {}


def test_the_cleanup_deletes_each_pool_replica_on_its_own_expiry(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    [expired] = backend.replicate(pool_spec(1, hours=-1), DATASET, 1, pool=True)
    [kept] = backend.replicate(pool_spec(1, hours=24), DATASET, 1, pool=True)
    backend.clients.client("ssm").put_parameter(  # left by a deletion of the expired replica that died there
        Name=f"/imagenet18/claims/{expired.id}", Value=POOL_OWNER, Type="String",
        Tags=tags.tag_list(POOL_OWNER, expired.expires_at))
    removed = backend.sweep(finished=lambda run_id: False)
    assert sorted(r.kind for r in removed) == ["parameter", "replica"] and expired.id in [r.id for r in removed]
    assert aws_leftovers(aws) == {"volume": [kept.id]}
    assert claimed(backend.replicate(cluster_spec("run-after", 1), DATASET, 1)) == [kept.id]
    backend.teardown("run-after")
    backend.delete_replicas(POOL_OWNER)
    assert aws_leftovers(aws) == {}


def test_a_run_passes_over_a_pool_replica_deleted_since_it_was_listed(aws, snapshot, tmp_path):
    backend, spec = AwsBackend(options(), home=tmp_path), cluster_spec("run-late", 2)
    pool = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    listed = volumes.pool_volumes(backend.clients)
    aws.client("ec2").delete_volume(VolumeId=pool[0].id)  # as `replicate --delete` does once it has locked it
    assert [v["VolumeId"] for v in volumes.claim(backend.clients, spec, listed, [0, 1]).values()] == [pool[1].id]
    assert aws_leftovers_by_run(aws).get(spec.run_id) == {
        "ssm parameter": [f"/imagenet18/claims/{pool[1].id}"], "volume": [pool[1].id]}, "no lock is left on the other"
    backend.teardown(spec.run_id)
    backend.delete_replicas(POOL_OWNER)
    assert aws_leftovers(aws) == {}


def test_pool_replicas_listed_before_another_kept_them_longer_keep_the_longer_expiry(aws, snapshot, tmp_path):
    backend, spec = AwsBackend(options(), home=tmp_path), cluster_spec("run-stale", 1)
    [replica] = backend.replicate(pool_spec(1), DATASET, 1, pool=True)
    listed = volumes.pool_volumes(backend.clients)
    backend.replicate(pool_spec(1, hours=48), DATASET, 1, pool=True)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=47)
    sooner = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=30)
    [kept] = volumes.keep(backend.clients, listed, sooner, 1).values()
    assert tags.expires(tags.as_dict(kept["Tags"])) > later, "kept as long as the longer asked"
    volumes.claim(backend.clients, spec, listed, [0])
    [held] = [r for r in backend.resources(spec.run_id) if r.kind == "replica"]
    assert dt.datetime.fromisoformat(held.details["pool_expires"]) > later, "given back for as long"
    backend.teardown(spec.run_id)
    assert [r.expires_at > later for r in backend.resources(POOL_OWNER) if r.kind == "replica"] == [True]
    backend.delete_replicas(POOL_OWNER)
    assert aws_leftovers(aws) == {}


def test_deleting_the_pool_marks_the_replicas_runs_hold_though_one_goes_meanwhile(aws, snapshot, tmp_path):
    """A run gives back a replica whose pool expired by deleting it: it may go between the listing of the replicas
    runs hold and their marking."""
    backend = AwsBackend(options(), home=tmp_path)
    pool = backend.replicate(pool_spec(2), DATASET, 2, pool=True)
    held = backend.replicate(cluster_spec("run-holding-two", 2), DATASET, 2)
    assert claimed(held) == [r.id for r in pool]

    def gone_first(params, **_) -> None:  # as the run's teardown, giving it back expired, deletes it
        if params.get("Tags", [{}])[0].get("Key") == volumes.POOL_EXPIRES and params["Resources"] == [pool[0].id]:
            backend.clients.ec2.delete_volume(VolumeId=pool[0].id)

    backend.clients.ec2.meta.events.register("before-parameter-build.ec2.CreateTags", gone_first)
    assert backend.delete_replicas(POOL_OWNER) == []
    [marked] = [r for r in backend.resources("run-holding-two") if r.kind == "replica"]
    assert marked.id == pool[1].id and dt.datetime.fromisoformat(marked.details["pool_expires"]) <= \
        dt.datetime.now(dt.timezone.utc)
    backend.teardown("run-holding-two")
    assert aws_leftovers(aws) == {}


def test_the_cleanup_leaves_an_expired_pool_replica_kept_longer_since_it_was_listed(aws, snapshot, tmp_path):
    """`imagenet18 replicate` keeps a replica longer (under its lock) moments before the cleanup locks it."""
    backend = AwsBackend(options(), home=tmp_path)
    [replica] = backend.replicate(pool_spec(1, hours=-1), DATASET, 1, pool=True)
    longer = tags.tag_list(POOL_OWNER, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=24))[1:]

    def kept_first(**_) -> None:
        aws.client("ec2").create_tags(Resources=[replica.id], Tags=longer)

    backend.clients.client("ssm").meta.events.register_first("before-parameter-build.ssm.PutParameter", kept_first)
    assert backend.sweep(finished=lambda run_id: False) == []
    assert aws_leftovers(aws) == {"volume": [replica.id]}
    backend.delete_replicas(POOL_OWNER)
    assert aws_leftovers(aws) == {}


def test_a_replica_given_back_after_the_pool_was_deleted_since_the_teardown_listed_it_is_deleted(aws, snapshot,
                                                                                                 tmp_path):
    """A teardown lists the run's resources, then ends its machines (minutes on AWS), then gives its pool replicas
    back: `replicate --delete` in between marks them to be deleted."""
    run, deleter = AwsBackend(options(), home=tmp_path), AwsBackend(options(), home=tmp_path)
    pool = deleter.replicate(pool_spec(1), DATASET, 1, pool=True)
    assert claimed(run.replicate(cluster_spec("run-slow-teardown", 1), DATASET, 1)) == [pool[0].id]
    deleted = []

    def pool_deleted_after_the_listing(**_) -> None:  # the run's listing asks SSM for its parameters last
        if not deleted:
            deleted.append(deleter.delete_replicas(POOL_OWNER))

    run.clients.client("ssm").meta.events.register("after-call.ssm.DescribeParameters", pool_deleted_after_the_listing)
    run.teardown("run-slow-teardown")
    assert deleted == [[]], "the run held the pool's only replica"
    assert aws_leftovers(aws) == {}


def test_a_replica_given_back_while_the_pool_is_deleted_is_deleted(aws, snapshot, tmp_path):
    """`replicate --delete` lists the pool's replicas, then locks them: a run giving its replica back in between
    puts it where that listing cannot see it."""
    run, deleter = AwsBackend(options(), home=tmp_path), AwsBackend(options(), home=tmp_path)
    pool = deleter.replicate(pool_spec(2), DATASET, 2, pool=True)
    assert claimed(run.replicate(cluster_spec("run-ending", 1), DATASET, 1)) == [pool[0].id]
    ended = []

    def run_ends_first(**_) -> None:  # the deleter's first lock: the pool's replicas are listed
        if not ended:
            ended.append(run.teardown("run-ending"))

    deleter.clients.client("ssm").meta.events.register("before-parameter-build.ssm.PutParameter", run_ends_first)
    assert [r.id for r in deleter.delete_replicas(POOL_OWNER)] == [pool[1].id]
    assert ended and aws_leftovers(aws) == {}


# -- local ---------------------------------------------------------------------------------------------------
def local_spec(run_id: str, machines: int) -> ClusterSpec:
    return dataclasses.replace(cluster_spec(run_id, machines), instance_type="local")


def test_a_local_run_claims_pool_replicas_and_gives_them_back(tiny_data, tmp_path):
    backend = LocalBackend(tmp_path)
    pool = backend.replicate(dataclasses.replace(pool_spec(3), instance_type="local"), str(tiny_data), 3, pool=True)
    before = pool_as_it_is(backend)
    spec = local_spec("run-pooled", 4)
    replicas = backend.replicate(spec, str(tiny_data), 4)
    assert claimed(replicas) == [r.id for r in pool] and [r.details["index"] for r in replicas] == [0, 1, 2, 3]
    assert backend.replicate(spec, str(tiny_data), 4) == replicas, "a retry takes no more"
    assert all(os.path.isdir(r.details["data_root"]) for r in replicas)

    backend.teardown("run-pooled")
    assert pool_as_it_is(backend) == before
    assert all(os.path.isdir(r.details["data_root"]) for r in pool), "the pool's folders are untouched"
    assert not (tmp_path / "local" / "replicas" / "run-pooled").exists()
    assert list((tmp_path / "local" / "claims").glob("*")) == []


def test_a_local_pool_of_a_folder_that_is_no_dataset_is_refused_before_any_replica(tmp_path):
    """Made by the replicate flow (a deployment's run, which the CLI's own check does not see): a record written
    first would hold its place in the pool until it expired."""
    backend, folder = LocalBackend(tmp_path), tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(InputError, match=f"dataset {folder} has no train/ folder"):
        backend.replicate(dataclasses.replace(pool_spec(2), instance_type="local"), str(folder), 2, pool=True)
    assert local_leftovers(tmp_path) == {} and pool_as_it_is(backend) == []


def test_a_local_run_skips_claimed_replicas_and_other_datasets(tiny_data, data_copy, tmp_path):
    home = tmp_path / "home"
    backend = LocalBackend(home)
    pool = backend.replicate(dataclasses.replace(pool_spec(2), instance_type="local"), str(tiny_data), 2, pool=True)
    first = backend.replicate(local_spec("run-first", 1), str(tiny_data), 1)
    crashed = local_spec("run-crashed", 1)  # killed between its claim of replica 1 and taking its record
    (home / "local" / "claims" / "replicas_replica-01.json").write_text(json.dumps(
        {"kind": "claim", "id": pool[1].id, "run_id": crashed.run_id, "expires_at": crashed.expires_at.isoformat(),
         "details": {}}))
    second = backend.replicate(local_spec("run-second", 1), str(tiny_data), 1)
    other_data = backend.replicate(local_spec("run-other-data", 1), str(data_copy), 1)
    assert claimed(first) == [pool[0].id] and claimed(second) == [] and claimed(other_data) == []
    assert [r.kind for r in backend.teardown("run-crashed")] == ["claim"], "its claim is found by its tag"
    third = backend.replicate(local_spec("run-third", 1), str(tiny_data), 1)
    assert claimed(third) == [pool[1].id]

    assert backend.delete_replicas(POOL_OWNER) == [], "every pool replica is held"
    for run_id in ("run-first", "run-second", "run-other-data", "run-third"):
        backend.teardown(run_id)
    assert local_leftovers(home) == {}, "deleted while held: gone once given back"


def test_a_pool_replica_of_a_dataset_changed_since_is_not_claimed_and_is_made_again(data_copy, tmp_path, caplog):
    """Its hard links are the files as they were: an image added (or replaced by another file, or removed) since
    would not be trained on. A run makes its own replica instead; making the pool again replaces it."""
    home = tmp_path / "home"
    backend = LocalBackend(home)
    make_pool = functools.partial(backend.replicate, dataclasses.replace(pool_spec(1), instance_type="local"),
                                  str(data_copy), 1, pool=True)
    [pooled] = make_pool()
    added = data_copy / "train" / "circle" / "added.JPEG"
    shutil.copy(next((data_copy / "train" / "circle").glob("*.JPEG")), added)
    with caplog.at_level(logging.INFO):
        [replica] = backend.replicate(local_spec("run-after-the-change", 1), str(data_copy), 1)
    assert claimed([replica]) == []
    assert (Path(replica.details["data_root"]) / "train" / "circle" / "added.JPEG").exists()
    assert f"pool replica {pooled.id} holds an older demo: not used" in caplog.text
    backend.teardown("run-after-the-change")
    [remade] = make_pool()
    assert (Path(remade.details["data_root"]) / "train" / "circle" / "added.JPEG").exists()
    assert [r.id for r in backend.replicate(local_spec("run-fresh", 1), str(data_copy), 1)] == [remade.id]
    backend.teardown("run-fresh")
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(home) == {}


def test_pool_replicas_made_before_the_resized_copies_get_them_when_a_run_claims_them(tmp_path):
    """`imagenet18 replicate` of a downloaded folder (full size only), then a run whose prepare-dataset stage made
    the -sz/160 copy: the claimed replicas hold it too, and giving them back leaves the pool readable."""
    root = make_demo_dataset(tmp_path / "downloaded", classes=2, train_per_class=4, val_per_class=2)
    backend = LocalBackend(tmp_path / "home")
    pool = backend.replicate(dataclasses.replace(pool_spec(2), instance_type="local"), str(root), 2, pool=True)
    assert not any(os.path.isdir(f"{r.details['data_root']}-sz/160") for r in pool)
    prepare(root, [160], workers=1)
    replicas = backend.replicate(local_spec("run-reads-160", 2), str(root), 2)
    assert claimed(replicas) == [r.id for r in pool]
    for replica in replicas:
        assert sorted(os.listdir(f"{replica.details['data_root']}-sz/160/train")) == sorted(os.listdir(root / "train"))
    backend.teardown("run-reads-160")
    assert [r.id for r in backend.resources(POOL_OWNER)] == [r.id for r in pool]


def test_replicas_leave_out_links_to_nothing_and_files_beside_the_resized_copies(tmp_path, caplog):
    """A dataset made of links (splits picked from a larger set) may hold one to a file since removed, and the
    resized copies' folder a note or macOS's .DS_Store: the replicas are made all the same, of what is there, the
    run's check having named the broken link; a link (by a relative path too) reads in a replica what it reads in
    the dataset, now."""
    root = make_demo_dataset(tmp_path / "linked", classes=2, train_per_class=4, val_per_class=2)
    prepare(root, [160], workers=1)
    class_dir = sorted((root / "train").iterdir())[0]
    elsewhere = tmp_path / "picked" / "kept.JPEG"
    elsewhere.parent.mkdir()
    shutil.copy(sorted(class_dir.iterdir())[0], elsewhere)
    (class_dir / "kept.JPEG").symlink_to(os.path.relpath(elsewhere, class_dir))
    (class_dir / "gone.JPEG").symlink_to("removed-since.JPEG")
    (tmp_path / "linked-sz" / "README.txt").write_text("copies at 160 px")
    (tmp_path / "linked-sz" / ".DS_Store").write_bytes(bytes(64))
    with caplog.at_level(logging.WARNING):
        check_source(root)
    assert f"leaving out 1 link(s) to nothing: {class_dir / 'gone.JPEG'}" in caplog.text
    backend = LocalBackend(tmp_path / "home")
    [replica] = backend.replicate(local_spec("run-links", 1), str(root), 1)
    replica_class = Path(replica.details["data_root"]) / "train" / class_dir.name
    assert (replica_class / "kept.JPEG").read_bytes() == elsewhere.read_bytes()
    replaced = elsewhere.with_name("new.JPEG")  # the linked file replaced since (a set synced again)
    shutil.copy(sorted(class_dir.iterdir())[1], replaced)
    os.replace(replaced, elsewhere)
    assert (replica_class / "kept.JPEG").read_bytes() == elsewhere.read_bytes(), "what the dataset's link reads now"
    assert not os.path.lexists(replica_class / "gone.JPEG")
    assert os.listdir(f"{replica.details['data_root']}-sz") == ["160"]
    backend.teardown("run-links")
    assert local_leftovers(tmp_path / "home") == {}


def test_a_class_folder_whose_name_is_not_utf8_is_replicated(tmp_path):
    """A class named in Latin-1 (an old archive's "café") trains as its images' names do: its replica is made, and
    what it was made from is known, where the replication failed on the name."""
    root = make_demo_dataset(tmp_path / "latin1", classes=2, train_per_class=4, val_per_class=2)
    first = sorted((root / "train").iterdir())[0].name
    latin1 = os.fsdecode(b"caf\xe9")
    for split in ("train", "validation"):
        os.rename(root / split / first, root / split / latin1)
    prepare(root, [160], workers=1)
    backend = LocalBackend(tmp_path / "home")
    [replica] = backend.replicate(local_spec("run-latin1", 1), str(root), 1)
    assert sorted(os.listdir(Path(replica.details["data_root"]) / "train" / latin1)) == \
        sorted(os.listdir(root / "train" / latin1))
    backend.teardown("run-latin1")
    assert local_leftovers(tmp_path / "home") == {}


def test_a_local_pool_of_another_dataset_goes_beside_the_first_and_a_pool_made_again_is_topped_up(
        tiny_data, data_copy, tmp_path):
    backend = LocalBackend(tmp_path / "home")
    first = backend.replicate(dataclasses.replace(pool_spec(2), instance_type="local"), str(tiny_data), 2, pool=True)
    second = backend.replicate(dataclasses.replace(pool_spec(2), instance_type="local"), str(data_copy), 2, pool=True)
    assert [r.details["index"] for r in second] == [2, 3] and not {r.id for r in first} & {r.id for r in second}
    assert all(r.details["dataset"] == str(data_copy) and os.path.isdir(r.details["data_root"]) for r in second)
    assert claimed(backend.replicate(local_spec("run-other", 2), str(data_copy), 2)) == [r.id for r in second]

    again = backend.replicate(dataclasses.replace(pool_spec(3, hours=48), instance_type="local"), str(tiny_data), 3,
                              pool=True)
    assert [r.id for r in again[:2]] == [r.id for r in first] and [r.details["index"] for r in again] == [0, 1, 4]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=47)
    assert all(r.expires_at > later for r in backend.resources(POOL_OWNER) if r.id in {r.id for r in again})
    backend.teardown("run-other")
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path / "home") == {}


def test_two_local_pool_makers_at_once_take_places_of_their_own(tiny_data, data_copy, tmp_path, monkeypatch,
                                                                 caplog):
    """Two `imagenet18 replicate` of two datasets at once: each replica its own place and folder, holding its own
    dataset's files (the second waits for the first)."""
    caplog.set_level(logging.INFO, logger="tasks.backends.local")
    backend = LocalBackend(tmp_path)
    first_linking, second_done = threading.Event(), threading.Event()
    make_replica = LocalBackend._replica

    def first_slowed(self, spec, root, index, pool):
        if root == tiny_data.resolve():
            first_linking.set()
            second_done.wait(timeout=3)  # the second maker's chance to take the same places
        return make_replica(self, spec, root, index, pool)

    def make(dataset):
        return backend.replicate(dataclasses.replace(pool_spec(2), instance_type="local"), str(dataset), 2, pool=True)

    def make_second():
        first_linking.wait(timeout=30)
        try:
            return make(data_copy)
        finally:
            second_done.set()

    monkeypatch.setattr(LocalBackend, "_replica", first_slowed)
    with ThreadPoolExecutor(max_workers=2) as makers:
        first, second = makers.submit(make, tiny_data), makers.submit(make_second)
        made = first.result() + second.result()
    assert "waiting for the replica pool: another process here is making, deleting or claiming from it" in \
        caplog.messages
    replicas = {r.id: r for r in backend.resources(POOL_OWNER)}
    assert sorted(r.details["index"] for r in replicas.values()) == [0, 1, 2, 3] and set(replicas) == {
        r.id for r in made}
    a_file = next((tiny_data / "train").glob("*/*"))
    for replica in replicas.values():
        linked = Path(replica.details["data_root"]) / a_file.relative_to(tiny_data)
        dataset_file = Path(replica.details["dataset"]) / a_file.relative_to(tiny_data)
        assert os.stat(linked).st_ino == os.stat(dataset_file).st_ino, "its own dataset's files"
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path) == {}


def while_a_pool_is_made(monkeypatch, backend: LocalBackend, dataset: Path, count: int, action,
                         events: list[str] | None = None) -> tuple[list[Resource], object]:
    """`action()` while `imagenet18 replicate` makes a pool of `count` replicas: the first replica's folder, once
    recorded, is linked only when `action` has ended (or after 3 s); each folder linked is noted in `events`.
    Returns the pool made and what `action` returned."""
    linking, acted, fill = threading.Event(), threading.Event(), local._fill
    events = [] if events is None else events

    def paused_fill(root, replica):
        if replica.parent == backend.replica_root / POOL_OWNER and not linking.is_set():
            linking.set()
            acted.wait(timeout=3)
        fill(root, replica)
        events.append("filled")

    def act():
        linking.wait(timeout=30)
        try:
            return action()
        finally:
            acted.set()

    monkeypatch.setattr(local, "_fill", paused_fill)
    with ThreadPoolExecutor(max_workers=2) as both:
        made = both.submit(backend.replicate, dataclasses.replace(pool_spec(count), instance_type="local"),
                           str(dataset), count, pool=True)
        result = both.submit(act).result()
    return made.result(), result


def test_a_local_run_claims_pool_replicas_only_once_they_are_made(tiny_data, tmp_path, monkeypatch):
    """A run started while `imagenet18 replicate` links the pool waits for it, rather than claim a replica whose
    folder is half made (and link into it beside the maker)."""
    backend = LocalBackend(tmp_path)
    events, claim_pool = [], LocalBackend._claim_pool

    def noted_claim(self, *args):
        claimed = claim_pool(self, *args)
        events.append("claimed")
        return claimed

    monkeypatch.setattr(LocalBackend, "_claim_pool", noted_claim)
    made, replicas = while_a_pool_is_made(monkeypatch, backend, tiny_data, 2, events=events, action=lambda: (
        backend.replicate(local_spec("run-early", 2), str(tiny_data), 2)))  # its chance to claim one half made
    assert claimed(replicas) == [r.id for r in made]
    assert events[:3] == ["filled", "filled", "claimed"], "the pool made before the run claims from it"
    backend.teardown("run-early")
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path) == {}


def test_a_local_run_does_without_a_pool_being_made_past_its_patience(tiny_data, tmp_path, monkeypatch):
    """Nor does its teardown wait long to give a replica back: it deletes it (links, quickly made again)."""
    backend = LocalBackend(tmp_path)
    pool = backend.replicate(dataclasses.replace(pool_spec(1), instance_type="local"), str(tiny_data), 1, pool=True)
    held = backend.replicate(local_spec("run-holding", 1), str(tiny_data), 1)
    monkeypatch.setattr(local, "POOL_PATIENCE_S", 0.5)

    def run():
        backend.teardown("run-holding")
        return backend.replicate(local_spec("run-impatient", 1), str(tiny_data), 1)

    made, replicas = while_a_pool_is_made(monkeypatch, backend, tiny_data, 1, run)
    assert claimed(held) == [pool[0].id] and claimed(replicas) == []
    assert os.path.isdir(replicas[0].details["data_root"]), "its own replica, made meanwhile"
    assert [r.id for r in backend.resources(POOL_OWNER)] == [r.id for r in made], \
        "the replica held was deleted rather than given back while the pool was being made"
    backend.teardown("run-impatient")
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path) == {}


def test_the_local_cleanup_leaves_a_pool_being_made_past_its_patience_to_the_next(tiny_data, tmp_path, monkeypatch,
                                                                                  caplog):
    caplog.set_level(logging.INFO, logger="tasks.backends.local")
    backend = LocalBackend(tmp_path)
    [expired] = backend.replicate(dataclasses.replace(pool_spec(1, hours=-1), instance_type="local"), str(tiny_data),
                                  1, pool=True)
    monkeypatch.setattr(local, "POOL_PATIENCE_S", 0.5)
    made, swept = while_a_pool_is_made(monkeypatch, backend, tiny_data, 1,
                                       lambda: backend.sweep(finished=lambda run_id: False))
    assert swept == []
    assert "the replica pool here is still being made: the next cleanup sweeps it" in caplog.messages
    assert {r.id for r in backend.sweep(finished=lambda run_id: False)} == {expired.id}
    assert [r.id for r in backend.resources(POOL_OWNER)] == [r.id for r in made]
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path) == {}


def test_deleting_the_local_pool_while_it_is_made_waits_and_deletes_all_of_it(tiny_data, tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path)
    made, removed = while_a_pool_is_made(monkeypatch, backend, tiny_data, 2,
                                         lambda: backend.delete_replicas(POOL_OWNER))  # may find it half made
    assert sorted(r.id for r in removed) == sorted(r.id for r in made)
    assert local_leftovers(tmp_path) == {}, "no folder linked after its replica was deleted"


def test_the_local_cleanup_deletes_each_pool_replica_on_its_own_expiry(tiny_data, tmp_path):
    backend = LocalBackend(tmp_path)
    [expired] = backend.replicate(dataclasses.replace(pool_spec(1, hours=-1), instance_type="local"), str(tiny_data),
                                  1, pool=True)
    [kept] = backend.replicate(dataclasses.replace(pool_spec(1), instance_type="local"), str(tiny_data), 1, pool=True)
    (tmp_path / "local" / "claims").mkdir(exist_ok=True)
    (tmp_path / "local" / "claims" / "replicas_replica-00.json").write_text(json.dumps(  # a deletion died there
        {"kind": "claim", "id": expired.id, "run_id": POOL_OWNER, "expires_at": expired.expires_at.isoformat(),
         "details": {}}))
    removed = backend.sweep(finished=lambda run_id: False)
    assert sorted((r.kind, r.id) for r in removed) == [("claim", expired.id), ("replica", expired.id)]
    assert not os.path.exists(expired.details["path"]) and os.path.isdir(kept.details["data_root"])
    assert claimed(backend.replicate(local_spec("run-after", 1), str(tiny_data), 1)) == [kept.id]
    backend.teardown("run-after")
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path) == {}


def test_the_local_cleanup_leaves_the_runs_their_pool_replicas(tiny_data, tmp_path):
    backend = LocalBackend(tmp_path)
    pool = backend.replicate(dataclasses.replace(pool_spec(1), instance_type="local"), str(tiny_data), 1, pool=True)
    before = pool_as_it_is(backend)
    held = backend.replicate(local_spec("run-holding", 1), str(tiny_data), 1)
    assert claimed(held) == [pool[0].id]
    assert backend.sweep(finished=lambda run_id: False) == []
    backend.teardown("run-holding")
    assert pool_as_it_is(backend) == before, "back in the pool until its own expiry"
    backend.delete_replicas(POOL_OWNER)
    assert local_leftovers(tmp_path) == {}
