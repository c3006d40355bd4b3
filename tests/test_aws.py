"""The AWS backend through real boto3 against the simulator (moto server, our wrapper, the machine player)."""

import dataclasses
import datetime as dt
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, WaiterError

from tasks.backends.aws import (AwsBackend, catalog, consistency, efs, iam, inventory, jobs, journal,
                                machines, permissions, quotas, storage, tags, volumes)
from tasks.backends import retry_may_pass
from tasks.backends.aws.clients import Clients
from tasks.backends.aws.iam import ensure_instance_profile
from tasks.backends.aws.snapshots import make_snapshot
from tasks.backends.base import BackendError, InputError, SweepIncomplete
from tests.awssim import prices as simulated_prices
from tests.awssim.faults import ABSENT
from tests.awssim.images import UBUNTU_2204, UBUNTU_2404
from tests.aws_runs import (
    AMI,
    BUCKET,
    DATASET,
    agents_online,
    bucket_under_key,
    cluster_spec,
    customer_managed_key,
    dataset_in_s3,
    delete_default_vpc,
    options,
    owned_encrypted_snapshot,
    users_subnet,
)
from tests.leftovers import aws_leftovers, aws_leftovers_by_run
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[1]


def test_sixteen_spot_machines_are_provisioned_safely_and_torn_down(aws, snapshot, tmp_path, operator):
    ec2 = aws.client("ec2")
    bystander = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]  # not ours: never touched
    backend = AwsBackend(options(ssh_cidr="203.0.113.0/24"), home=tmp_path)
    spec = cluster_spec("run-16", 16, spot=True)
    backend.check(spec, DATASET)
    plan = backend.plan(spec, DATASET, 2.0)
    assert [item.count for item in plan.items] == [16, 16, 16, 1, 16] and plan.total_usd > 0
    assert "EFA on all 4 network cards" in plan.items[0].what and "Elastic IP" in plan.items[-1].what

    replicas = backend.replicate(spec, DATASET, 16)
    assert [r.details["name"] for r in replicas] == [f"imagenet_1a_{i:02d}" for i in range(16)]
    assert backend.replicate(spec, DATASET, 16) == replicas, "volumes that exist are reused"
    prepared = backend.prepare(spec)  # the flow makes it beside the replicas
    assert prepared.network.zone == replicas[0].details["zone"]
    assert "machine" not in {r.kind for r in backend.resources("run-16")}, "no machine before provision"
    assert backend.prepare(spec) == prepared, "a retried prepare finds what the first made"
    cluster = backend.provision(spec, replicas, prepared)
    assert backend.provision(spec, replicas).machines == cluster.machines, "a retried provision creates nothing"

    assert len(cluster.machines) == 16 and cluster.gpus_per_machine == 8
    assert cluster.storage.startswith(f"s3://{BUCKET}/runs/") and cluster.node_storage.startswith("/mnt/efs/")
    instances = {i["InstanceId"]: i for r in ec2.describe_instances(Filters=tags.run_filter("run-16"))["Reservations"]
                 for i in r["Instances"]}
    for machine in cluster.machines:
        instance = instances[machine.id]
        assert tags.as_dict(instance["Tags"])[tags.INDEX] == str(machine.index)
        assert instance["MetadataOptions"]["HttpTokens"] == "required", "IMDSv2 only"
        assert instance.get("InstanceLifecycle") == "spot"
        data = [b for b in instance["BlockDeviceMappings"] if b["DeviceName"] == "/dev/sdf"]
        volume = ec2.describe_volumes(VolumeIds=[data[0]["Ebs"]["VolumeId"]])["Volumes"][0]
        assert tags.as_dict(volume["Tags"])["Name"] == f"imagenet_1a_{machine.index:02d}", "machine i has volume i"
    shutdown = ec2.describe_instance_attribute(InstanceId=cluster.machines[0].id,
                                               Attribute="instanceInitiatedShutdownBehavior")
    assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    assert all(v["Encrypted"] for v in ec2.describe_volumes(Filters=tags.run_filter("run-16"))["Volumes"])
    [group] = ec2.describe_security_groups(Filters=tags.run_filter("run-16"))["SecurityGroups"]
    sources = [r["CidrIp"] for p in group["IpPermissions"] for r in p.get("IpRanges", [])]
    assert sources == ["203.0.113.0/24"], "ssh only from the caller; nothing open to 0.0.0.0/0"
    assert any(pair["GroupId"] == group["GroupId"] for p in group["IpPermissions"] for pair in p["UserIdGroupPairs"])
    key = tmp_path / "aws" / "keys" / "imagenet18-run-16.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    booted = {m["instance_id"]: m for m in aws.machines()}
    assert booted[cluster.machines[0].id]["user_data_check"] == "ok"
    assert booted[cluster.machines[0].id]["shutdown_after_s"] == pytest.approx(2 * 3600, abs=120)
    assert ec2.describe_placement_groups(Filters=tags.run_filter("run-16"))["PlacementGroups"]
    [launch] = aws.launches()
    assert sorted(launch["instances"]) == sorted(m.id for m in cluster.machines), "one request for all 16"
    assert [(i["NetworkCardIndex"], i["InterfaceType"], i.get("AssociatePublicIpAddress")) for i in
            launch["interfaces"]] == [("0", "efa", None)] + [(str(card), "efa-only", None) for card in (1, 2, 3)], \
        "an EFA on every card; EC2 gives no public address at launch to a machine with more than one interface"
    held = ec2.describe_addresses(Filters=tags.run_filter("run-16"))["Addresses"]
    public = sorted(i.get("PublicIpAddress", "none") for i in instances.values())
    assert sorted(a["PublicIp"] for a in held) == public, "each machine reaches out through an Elastic IP of the run"
    wait_for(lambda: agents_online(aws.client("ssm"), *instances), seconds=60,
             what="each machine's SSM agent, which registers through its Elastic IP")
    assert any(pair["GroupId"] == group["GroupId"] for p in group["IpPermissionsEgress"]
               for pair in p["UserIdGroupPairs"]), "EFA's traffic to the group itself"

    removed = backend.teardown("run-16")
    assert {r.kind for r in removed} >= {"machine", "address", "replica", "file-system", "placement-group",
                                         "security-group", "key-pair", "instance-profile", "vpc"}
    assert backend.resources("run-16") == [] and aws_leftovers(aws, "run-16") == {}
    assert not key.exists()
    assert backend.teardown("run-16") == [], "a second teardown is safe and finds nothing"
    assert ec2.describe_volumes(VolumeIds=[bystander])["Volumes"], "an untagged volume is never touched"


@pytest.mark.slow
def test_parallel_calls_bounds_the_aws_calls_in_flight(aws, snapshot, tmp_path):
    """parallel_calls=1 makes one call at a time (the serial baseline of bench/provisioning.py); the default
    overlaps calls that do not wait on each other."""
    peaks = {}
    for calls in (1, 16):
        backend = AwsBackend(options(parallel_calls=calls), home=tmp_path)
        lock, in_flight, peak = threading.Lock(), [0], [0]

        def started(**_):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])

        def ended(**_):
            with lock:
                in_flight[0] -= 1

        backend.clients.session.events.register("before-call", started)
        for event in ("after-call", "after-call-error"):
            backend.clients.session.events.register(event, ended)
        spec = cluster_spec(f"run-calls-{calls}", 4)
        cluster = backend.provision(spec, backend.replicate(spec, DATASET, 4))
        peaks[calls] = peak[0]
        assert len(cluster.machines) == 4
        backend.teardown(spec.run_id)
        assert aws_leftovers(aws, spec.run_id) == {}
    assert peaks[1] == 1 and peaks[16] > 1, peaks


def test_the_default_ami_is_the_ubuntu_22_04_base_ami_through_its_public_parameter(aws):
    image = machines.resolve_ami(Clients("us-east-1"), None)
    assert image["ImageId"] == UBUNTU_2204.image_id and "Ubuntu 22.04" in image["Name"]


def test_threads_that_ask_for_a_client_at_once_share_one():
    """The first client costs botocore a fifth of a second of CPU: provisioning's threads that ask for it at
    once wait for one to be made instead of each making its own."""
    clients = Clients("us-east-1")
    ready, made = threading.Barrier(8), []

    def ask() -> None:
        ready.wait()
        made.append(clients.client("ec2"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 8 and all(client is made[0] for client in made)
    assert clients.client("ec2", retries=False) is not made[0], "each retry mode has its own client"


@pytest.mark.slow
def test_sweep_removes_expired_and_finished_runs_only(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    for spec in (dataclasses.replace(cluster_spec("run-expired", 1), expires_at=past), cluster_spec("run-done", 1),
                 cluster_spec("run-live", 1)):
        backend.provision(spec, backend.replicate(spec, DATASET, 1))
    removed = backend.sweep(finished=lambda run_id: run_id == "run-done")
    assert {r.run_id for r in removed} == {"run-expired", "run-done"}
    assert set(aws_leftovers_by_run(aws)) == {"run-live"}

    def api_gone(run_id: str) -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(SweepIncomplete, match=r"^could not tell whether run-live finished \(ConnectionRefusedError"):
        backend.sweep(finished=api_gone)
    assert set(aws_leftovers_by_run(aws)) == {"run-live"}
    backend.teardown("run-live")


@pytest.mark.slow
def test_a_run_whose_teardown_fails_stops_no_other_runs_sweep(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    for run_id in ("run-a-stuck", "run-b-expired"):
        spec = dataclasses.replace(cluster_spec(run_id, 1), expires_at=past)
        backend.provision(spec, backend.replicate(spec, DATASET, 1))
    aws.add_fault("ec2", "TerminateInstances", "UnauthorizedOperation", status=403, run="run-a-stuck")
    aws.add_fault("ec2", "DescribeVolumes", "UnsupportedOperation", status=400, region="ap-south-1", times=1)
    with pytest.raises(BackendError, match=r"^the other runs were swept, but not run-a-stuck \(teardown of run "
                                           r"run-a-stuck could not delete its machine.*UnauthorizedOperation.*; and "
                                           r"the other regions were swept, but not ap-south-1 "
                                           r"\(UnsupportedOperation\): the next cleanup looks again$"):
        backend.sweep(finished=lambda run_id: False)
    assert set(aws_leftovers_by_run(aws)) == {"run-a-stuck"}
    aws.clear_faults()
    assert {r.run_id for r in backend.sweep(finished=lambda run_id: False)} == {"run-a-stuck"}
    assert aws_leftovers_by_run(aws) == {}


@pytest.mark.slow
def test_sweep_looks_in_every_region_the_account_has_enabled(aws, tiny_data, tmp_path, operator, caplog):
    """The cleanup's region is the default one; a run made with another leaves its disks and machines there. A
    region the user may not use (an organization's policy denies it) is passed over with a warning; one that
    fails otherwise fails the sweep, after the others are swept."""
    no_ireland = {"Effect": "Deny", "Action": "*", "Resource": "*",
                  "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}}
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="no-ireland",
                                      PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [no_ireland]}))
    aws.make_snapshot(tiny_data.parent, description=DATASET, region="us-west-2")
    west = AwsBackend(options(region="us-west-2"), home=tmp_path)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    for spec in (dataclasses.replace(cluster_spec("run-west-expired", 1), expires_at=past),
                 cluster_spec("run-west-live", 1)):
        west.provision(spec, west.replicate(spec, DATASET, 1))
    sweeper = AwsBackend(options(), home=tmp_path)
    aws.add_fault("ec2", "DescribeVolumes", "UnsupportedOperation", status=400, region="ap-south-1", times=1)
    with pytest.raises(BackendError, match=r"^the other regions were swept, but not ap-south-1 "
                                           r"\(UnsupportedOperation\): the next cleanup looks again$"):
        sweeper.sweep(finished=lambda run_id: False)
    assert set(aws_leftovers_by_run(aws)) == {"run-west-live"}, "one region's trouble stops no other's sweep"
    assert "did not look for leftovers in eu-west-1: AWS refused it (UnauthorizedOperation)" in caplog.text
    west.provision(dataclasses.replace(cluster_spec("run-west-expired", 1), expires_at=past),
                   west.replicate(cluster_spec("run-west-expired", 1), DATASET, 1))
    removed = sweeper.sweep(finished=lambda run_id: False)
    assert {r.run_id for r in removed} == {"run-west-expired"}
    assert {"machine", "replica", "file-system", "vpc", "instance-profile"} <= {r.kind for r in removed}
    assert set(aws_leftovers_by_run(aws)) == {"run-west-live"}
    west.teardown("run-west-live")
    assert aws_leftovers_by_run(aws) == {}


def test_credentials_that_may_not_list_regions_still_sweep_their_own(aws, tmp_path, operator, caplog):
    no_regions = {"Effect": "Deny", "Action": "ec2:DescribeRegions", "Resource": "*"}
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="no-regions",
                                      PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [no_regions]}))
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    aws.client("ec2").create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=tags.tag_specs(
        "volume", tags.tag_list("run-gone", past)))
    removed = AwsBackend(options(), home=tmp_path).sweep(finished=lambda run_id: False)
    assert [(r.kind, r.run_id) for r in removed] == [("volume", "run-gone")]
    assert aws_leftovers(aws) == {}
    assert "could not list the account's regions (AWS answered UnauthorizedOperation): only us-east-1" in caplog.text


def test_replicas_have_a_delete_path(aws, snapshot, tmp_path):
    backend = AwsBackend(options(volume_type="gp3", iops=3000, throughput_mbps=750), home=tmp_path)
    spec = cluster_spec("pool", 4)
    made = backend.replicate(spec, DATASET, 4)
    volume = aws.client("ec2").describe_volumes(VolumeIds=[made[0].id])["Volumes"][0]
    assert volume["VolumeType"] == "gp3" and volume["Iops"] == 3000 and volume["SnapshotId"] == snapshot
    assert sorted(r.id for r in backend.delete_replicas("pool")) == sorted(r.id for r in made)
    assert aws_leftovers(aws, "pool") == {}


def test_a_replica_pool_of_disks_ebs_would_refuse_is_refused_before_any_is_made(aws, snapshot, tmp_path):
    """A pool has no pre-flight: the flow's first CreateVolume would be EBS's refusal, after the lookups."""
    backend = AwsBackend(options(volume_type="gp3", iops=3000), home=tmp_path)
    with pytest.raises(InputError, match="aws.throughput_mbps=1000 needs aws.iops=4000 or more"):
        backend.replicate(cluster_spec("replicas", 2), DATASET, 2, pool=True)
    assert aws_leftovers(aws) == {}


def test_a_replica_pool_past_the_accounts_iops_quota_is_refused_before_any_is_made(aws, snapshot, tmp_path):
    aws.set_quotas({"L-8D977E7E": 100_000})
    backend = AwsBackend(options(), home=tmp_path)
    with pytest.raises(InputError, match=r"16 io2 dataset replica\(s\) of 12 GiB at 11500 IOPS need 184000 of the "
                                         r'quota "IOPS for Provisioned IOPS SSD \(io2\) volumes"'):
        backend.replicate(cluster_spec("replicas", 16), DATASET, 16, pool=True)
    assert aws_leftovers(aws) == {}
    assert len(backend.replicate(cluster_spec("replicas", 8), DATASET, 8, pool=True)) == 8, "92,000 IOPS: within"
    backend.delete_replicas("replicas")


def test_a_replica_pool_whose_replicas_key_ebs_cannot_use_is_refused_before_any_is_made(aws, snapshot, tmp_path):
    """A pool makes replicas alone: of an encrypted snapshot of the account's, they take its key, whatever the
    default."""
    owned_encrypted_snapshot(aws, "built-dataset")  # the AWS managed key
    customer_managed_key(aws, "Disabled", ebs_default=True)
    backend = AwsBackend(options(), home=tmp_path)
    with pytest.raises(InputError, match=r"^EBS cannot encrypt the dataset replicas \(the account's default key for "
                                         r"EBS\) with KMS key arn:aws:kms:\S+: the key is Disabled"):
        backend.replicate(cluster_spec("replicas", 2), DATASET, 2, pool=True)
    assert aws_leftovers(aws) == {}
    assert len(backend.replicate(cluster_spec("replicas", 2), "built-dataset", 2, pool=True)) == 2
    backend.delete_replicas("replicas")


@pytest.mark.slow
@pytest.mark.parametrize("instance_type", ["g5.xlarge", "p4d.24xlarge"])
def test_a_lost_machine_is_replaced_with_its_replica_while_it_is_still_shutting_down(aws, snapshot, tmp_path,
                                                                                     instance_type):
    """A spot interruption's machine shuts down for a while, its replica attached meanwhile; the restart's new
    machine waits for that replica rather than fail on it (EC2 refuses to detach it, or attach it elsewhere). A
    machine with an interface on each EFA card reaches out through an Elastic IP: the replacement takes the lost
    machine's, which it keeps while it shuts down, so a run within the account's quota stays within it."""
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-replaced", 2, instance_type, spot=True)
    aws.set_quotas({"L-0263D0A3": 2})
    replicas = backend.replicate(spec, DATASET, 2)
    first = backend.provision(spec, replicas)
    ec2 = aws.client("ec2")
    addressed = instance_type == "p4d.24xlarge"
    before = public_ips(ec2, first) if addressed else []
    lost = first.machines[1].id
    aws.set_shutting_down(6.0)
    aws.interrupt(lost)
    again = backend.provision(spec, replicas)
    assert again.machines[0] == first.machines[0] and again.machines[1].id != lost
    [volume] = ec2.describe_volumes(VolumeIds=[replicas[1].id])["Volumes"]
    assert [(a["InstanceId"], a["State"]) for a in volume["Attachments"]] == [(again.machines[1].id, "attached")]
    if addressed:
        held = ec2.describe_addresses(Filters=tags.run_filter("run-replaced"))["Addresses"]
        assert sorted(a["PublicIp"] for a in held) == before == public_ips(ec2, again)
    backend.teardown("run-replaced")
    assert aws_leftovers(aws, "run-replaced", tmp_path) == {}


@pytest.mark.slow
def test_a_replacement_at_the_quota_is_launched_once_ec2_no_longer_counts_the_machine_it_replaces(
        aws, snapshot, tmp_path, monkeypatch, caplog):
    """EC2 counts a machine let go against the vCPU quota while it shuts down (and a while after): a spot run at
    its quota has its replacement refused meanwhile (MaxSpotInstanceCountExceeded), and launches it once the lost
    machine is gone rather than fail."""
    monkeypatch.setattr(machines, "RELEASE_POLL_S", 1.0)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-at-quota", 2, "g5.xlarge", spot=True)
    aws.set_quotas({quotas.quota_for("g5.xlarge", spot=True).code: 2 * catalog.instance_type("g5.xlarge").vcpus})
    replicas = backend.replicate(spec, DATASET, 2)
    first = backend.provision(spec, replicas)
    aws.set_shutting_down(4.0)
    aws.interrupt(first.machines[1].id)
    again = backend.provision(spec, replicas)
    assert again.machines[0] == first.machines[0] and again.machines[1].id != first.machines[1].id
    assert any("still counts machines let go" in r.getMessage() and "MaxSpotInstanceCountExceeded" in r.getMessage()
               for r in caplog.records), "the launch was refused while the lost machine shut down, and asked again"
    backend.teardown("run-at-quota")
    assert aws_leftovers(aws, "run-at-quota", tmp_path) == {}


def test_a_launch_waits_while_aws_verifies_a_new_accounts_region_and_fails_for_good_past_the_wait(
        aws, snapshot, tmp_path, monkeypatch):
    """EC2 refuses a new account's launches until AWS has verified its access to the region ("normally resolved
    within minutes"): the run's replicas exist by then, so the launch is asked again a while; past that wait the
    stage fails at once (no retry of it meets anything else) and teardown leaves nothing."""
    monkeypatch.setattr(machines, "VERIFICATION_POLL_S", 0.2)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-verifying", 1, "g5.xlarge")
    replicas = backend.replicate(spec, DATASET, 1)
    aws.verify_account(launches=3, label="verifying")
    cluster = backend.provision(spec, replicas)
    assert [f["fired"] for f in aws.fault_counts("verifying")] == [3]
    assert len(cluster.machines) == 1
    backend.teardown("run-verifying")

    monkeypatch.setattr(machines, "VERIFICATION_WAIT_S", 1.0)
    aws.verify_account()
    replicas = backend.replicate(spec, DATASET, 1)
    with pytest.raises(ClientError, match="PendingVerification.*allow up to 4 hours") as refused:
        backend.provision(spec, replicas)
    assert not retry_may_pass(refused.value)
    backend.teardown("run-verifying")
    assert aws_leftovers(aws, "run-verifying", tmp_path) == {}


@pytest.mark.slow
def test_a_launch_whose_answer_was_lost_is_asked_again_with_its_token_and_launches_once(aws, snapshot, tmp_path):
    """RunInstances takes a client token: asked again with the same one, EC2 answers with the machines the request
    whose answer was lost launched. The lost answer failed the provision stage, whose retry launched a second set
    (the first terminated as unnamed, paid for all the same, and perhaps holding the capacity the run needed)."""
    aws.add_fault("ec2", "RunInstances", "InternalError", status=500, times=1, carried_out=True,
                  match={"DryRun": ABSENT}, label="lost")
    backend, spec = AwsBackend(options(), home=tmp_path), cluster_spec("run-lost-launch", 2, "g5.xlarge")
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert [rule["fired"] for rule in aws.fault_counts("lost")] == [1], "the launch's answer was lost"
    launched = aws.client("ec2").describe_instances(Filters=[{"Name": f"tag:{tags.RUN}", "Values": [spec.run_id]}])
    assert sorted(i["InstanceId"] for r in launched["Reservations"] for i in r["Instances"]) == \
        sorted(m.id for m in cluster.machines), "launched once"
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, home=tmp_path) == {}


@pytest.mark.slow
def test_a_run_goes_on_while_ec2_does_not_know_its_new_resources_yet(aws, snapshot, tmp_path):
    """EC2's API is eventually consistent: a call naming what was made moments ago may be answered that it does not
    exist. With every such call answered so for a second and a half, a run on its own network with Elastic IPs
    makes its replicas, network and machines, and tears them down."""
    aws.set_consistency_window(1.5)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-propagating", 2)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert len(public_ips(aws.client("ec2"), cluster)) == 2, "each machine has its Elastic IP"
    backend.teardown("run-propagating")
    aws.set_consistency_window(0)  # the check sees all there is, as EC2 lists it once it has caught up
    assert aws_leftovers(aws, "run-propagating", tmp_path) == {}


def test_a_teardown_waits_for_machines_ec2_still_describes_as_they_were_before_it_terminated_them(aws, tmp_path):
    """EC2 may describe a machine as it was before a change of state for a moment: machines torn down while still
    pending (a run cancelled as it launches, a launch EC2 had no capacity for) are described pending just after
    their TerminateInstances, which botocore's InstanceTerminated waiter takes for a failure."""
    aws.set_pending(3600)
    spec = cluster_spec("run-pending", 2, "g5.xlarge")
    aws.client("ec2").run_instances(ImageId=AMI, InstanceType=spec.instance_type, MinCount=2, MaxCount=2,
                                    TagSpecifications=tags.tag_specs("instance", tags.tag_list(spec.run_id,
                                                                                              spec.expires_at)))
    aws.set_consistency_window(3)
    AwsBackend(options(), home=tmp_path).teardown(spec.run_id)
    aws.set_consistency_window(0)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_a_teardown_deletes_what_guardduty_put_in_the_runs_vpc_and_nothing_of_it_elsewhere(aws, snapshot, tmp_path,
                                                                                            operator):
    """GuardDuty Runtime Monitoring, its agent managed for EC2, gives each VPC with a machine in it an endpoint and a
    security group, which keep EC2 from deleting the run's subnet and VPC: those in the run's VPC go with it (as
    the operator: user_policy.json allows it); those in a VPC of the user's stay. Where EC2 refuses to delete the
    endpoint, only what needs it gone stays (the subnet, GuardDuty's group, the VPC), for the next teardown."""
    aws.guardduty_runtime_monitoring()
    ec2 = aws.client("ec2")
    users = ec2.run_instances(ImageId=AMI, InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
                              SubnetId=users_subnet(aws))["Instances"][0]
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-guarded", 2, "g5.xlarge")
    backend.provision(spec, backend.replicate(spec, DATASET, 2))
    [run_vpc] = ec2.describe_vpcs(Filters=tags.run_filter("run-guarded"))["Vpcs"]
    managed = [{"Name": "tag:GuardDutyManaged", "Values": ["true"]}]
    endpoints = {e["VpcId"]: e for e in ec2.describe_vpc_endpoints(Filters=managed)["VpcEndpoints"]}
    assert set(endpoints) == {users["VpcId"], run_vpc["VpcId"]}, "GuardDuty's endpoint in each VPC with a machine"

    aws.add_fault("ec2", "DeleteVpcEndpoints", "UnauthorizedOperation", status=403, label="refused")
    with pytest.raises(BackendError, match="could not delete its vpc-endpoint, guardduty-group, subnet, vpc "):
        backend.teardown("run-guarded")
    assert sorted(aws_leftovers(aws, "run-guarded", tmp_path)) == ["key file", "subnet", "vpc"]
    aws.clear_faults()
    backend.teardown("run-guarded")
    assert aws_leftovers(aws, "run-guarded", tmp_path) == {}
    [left] = [e for e in ec2.describe_vpc_endpoints(Filters=managed)["VpcEndpoints"] if e["State"] != "deleted"]
    assert left["VpcEndpointId"] == endpoints[users["VpcId"]]["VpcEndpointId"]
    groups = ec2.describe_security_groups(Filters=managed)["SecurityGroups"]
    assert [g["VpcId"] for g in groups] == [users["VpcId"]]


def test_guarddutys_endpoint_stays_while_a_machine_of_the_run_would_not_go(aws, snapshot, tmp_path):
    """GuardDuty's agent on the machine that stays sends through the endpoint."""
    aws.guardduty_runtime_monitoring()
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-guarded-stuck", 1, "g5.xlarge")
    backend.provision(spec, backend.replicate(spec, DATASET, 1))
    aws.add_fault("ec2", "TerminateInstances", "UnauthorizedOperation", status=403, label="stuck")
    with pytest.raises(BackendError, match="could not delete its machine, .*vpc-endpoint"):
        backend.teardown("run-guarded-stuck")
    managed = [{"Name": "tag:GuardDutyManaged", "Values": ["true"]}]
    assert [e["State"].lower() for e in aws.client("ec2").describe_vpc_endpoints(Filters=managed)["VpcEndpoints"]] == [
        "available"]
    aws.clear_faults()
    backend.teardown("run-guarded-stuck")
    assert aws_leftovers(aws, "run-guarded-stuck", tmp_path) == {}


def test_a_teardown_deletes_what_guardduty_put_in_the_runs_vpc_after_the_teardown_listed_it(aws, snapshot, tmp_path):
    """When GuardDuty gets to a new VPC is not documented: here, as the run's machines are terminated, after the
    teardown listed the run's resources (its subnet and VPC waited 15 minutes for the endpoint, then failed)."""
    aws.guardduty_runtime_monitoring(lagging=True)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-guarded-late", 1, "g5.xlarge")
    backend.provision(spec, backend.replicate(spec, DATASET, 1))
    ec2, managed = aws.client("ec2"), [{"Name": "tag:GuardDutyManaged", "Values": ["true"]}]
    assert ec2.describe_vpc_endpoints(Filters=managed)["VpcEndpoints"] == [], "not yet"
    backend.teardown("run-guarded-late")
    assert aws_leftovers(aws, "run-guarded-late", tmp_path) == {}
    [endpoint] = ec2.describe_vpc_endpoints(Filters=managed)["VpcEndpoints"]
    assert endpoint["State"] == "deleted", "GuardDuty made one, and the teardown deleted it"


def test_a_run_launches_into_its_placement_group_once_the_group_is_available(aws, snapshot, tmp_path):
    """A new placement group is pending a while, and EC2 refuses a launch into it meanwhile
    (InvalidPlacementGroup.Unknown); a teardown's group is deleting a while, its name still taken by it: a run
    made again at once makes its group once the old one has gone."""
    aws.set_placement_changing(10)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-placed", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    backend.provision(spec, replicas)
    aws.set_placement_changing(8)
    backend.teardown("run-placed")
    assert aws_leftovers(aws, "run-placed", tmp_path) == {}
    [deleting] = aws.client("ec2").describe_placement_groups(GroupNames=["imagenet18-run-placed"])["PlacementGroups"]
    assert deleting["State"] == "deleting"
    parts = backend.prepare(spec, replicas[0].details["zone"])  # again at once: the old group is still deleting
    [group] = aws.client("ec2").describe_placement_groups(GroupNames=[parts.network.placement_group])[
        "PlacementGroups"]
    assert group["State"] == "available"
    backend.teardown("run-placed")
    assert aws_leftovers(aws, "run-placed", tmp_path) == {}


def test_a_teardown_right_after_a_failed_provision_finds_what_ec2_does_not_list_yet(aws, snapshot, tmp_path):
    """EC2's listings are eventually consistent too: a teardown just after a provision that failed moments after
    allocating its Elastic IPs lists the run's resources before EC2 lists those addresses. It must not end there,
    saying nothing is left, while the addresses stay held and paid for."""
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-unlisted", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    parts = backend.prepare(spec, replicas[0].details["zone"])
    aws.set_consistency_window(8)
    aws.add_fault("ec2", "AssociateAddress", "UnauthorizedOperation", status=403, label="refused")
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        backend.provision(spec, replicas, parts)
    backend.teardown("run-unlisted")
    aws.set_consistency_window(0)
    assert aws_leftovers(aws, "run-unlisted", tmp_path) == {}


def test_a_kind_teardown_cannot_delete_keeps_only_what_needs_it_gone(aws, snapshot, tmp_path):
    """A refused ReleaseAddress (a policy without it, an AuthFailure while EC2 settles) fails the teardown, but not
    before the replicas, the file system, the network and the rest that does not wait on the addresses are deleted
    (an Elastic IP without its machine holds no VPC): only the addresses are left to the next teardown."""
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-refused", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    backend.provision(spec, replicas, backend.prepare(spec, replicas[0].details["zone"]))
    aws.add_fault("ec2", "ReleaseAddress", "UnauthorizedOperation", status=403, label="refused")
    with pytest.raises(BackendError, match="could not delete its address .*UnauthorizedOperation"):
        backend.teardown("run-refused")
    left = aws_leftovers(aws, "run-refused", tmp_path)
    assert sorted(left) == ["elastic ip", "key file"], left
    assert len(left["elastic ip"]) == 2
    aws.clear_faults()
    backend.teardown("run-refused")
    assert aws_leftovers(aws, "run-refused", tmp_path) == {}


PROVISION = """import os, sys
from pathlib import Path
from tasks.backends.aws import AwsBackend
from tests.aws_runs import DATASET, cluster_spec, options
from tests.awssim.client import AwsSim
backend, spec = AwsBackend(options(), home=Path(sys.argv[1])), cluster_spec(sys.argv[2], 2)
replicas = backend.replicate(spec, DATASET, 2)
parts = backend.prepare(spec, replicas[0].details["zone"])
AwsSim(os.environ["AWS_ENDPOINT_URL"], Path(sys.argv[1])).set_consistency_window(float(sys.argv[3]))
backend.provision(spec, replicas, parts)
"""


def test_a_teardown_in_another_process_awaits_what_the_killed_run_made_moments_before(aws, snapshot, tmp_path):
    """A served run's cancel hook runs in its runner, after the runner killed the flow process: it made nothing
    itself, so only the run's journal tells it what EC2 does not list yet (here the Elastic IPs of a provision
    killed while it associates them). A teardown that trusted the listing would say nothing is left, the
    addresses held."""
    aws.add_fault("ec2", "AssociateAddress", "InternalError", status=500, hold_s=300, label="hung")
    with open(tmp_path / "flow.log", "w") as log:
        flow = subprocess.Popen([sys.executable, "-c", PROVISION, str(tmp_path), "run-killed", "10"], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: aws.fault_counts("hung")[0]["fired"] or flow.poll() is not None, 120, "the association")
        assert flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
    finally:
        flow.kill()
        flow.wait()
        aws.clear_faults()
    removed = AwsBackend(options(), home=tmp_path).teardown("run-killed")
    assert "address" in {r.kind for r in removed}
    aws.set_consistency_window(0)
    assert aws_leftovers(aws, "run-killed", tmp_path) == {}
    assert not list((tmp_path / "aws" / "made").iterdir()), "the journal goes once nothing of the run is left"


def test_an_elastic_ip_whose_allocation_answer_was_lost_is_the_machines_not_one_more(aws, snapshot, tmp_path):
    """AllocateAddress takes no idempotency token: asked again after a lost answer (a 5xx after EC2 allocated),
    it would hold one more address than the machines need, past a quota that holds exactly them; and EC2 lists the
    address it made only seconds later."""
    aws.set_quotas({"L-0263D0A3": 2})
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-lost-address", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    parts = backend.prepare(spec, replicas[0].details["zone"])
    aws.set_consistency_window(3)
    aws.add_fault("ec2", "AllocateAddress", "InternalError", status=500, times=1, carried_out=True, label="lost")
    cluster = backend.provision(spec, replicas, parts)
    assert [r["fired"] for r in aws.fault_counts("lost")] == [1]
    ec2 = aws.client("ec2")
    held = ec2.describe_addresses(Filters=tags.run_filter("run-lost-address"))["Addresses"]
    assert sorted(a["PublicIp"] for a in held) == public_ips(ec2, cluster), "two addresses, one on each machine"
    backend.teardown("run-lost-address")
    aws.set_consistency_window(0)  # the check sees all there is, as EC2 lists it once it has caught up
    assert aws_leftovers(aws, "run-lost-address", tmp_path) == {}


def test_a_journal_that_cannot_be_written_or_read_fails_no_aws_call(aws, snapshot, tmp_path, caplog):
    """The journal is an aid to a teardown elsewhere: a home where it cannot be written (a full disk, a file where
    its folder goes) costs a warning, not the AWS call it follows, which has made what it made; a line cut short
    (a process killed as it wrote) is passed over."""
    (tmp_path / "aws").mkdir()
    (tmp_path / "aws" / "made").write_text("not a folder")
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-unjournaled", 2)
    with caplog.at_level("WARNING", logger="tasks.backends.aws.journal"):
        replicas = backend.replicate(spec, DATASET, 2)
    assert len(replicas) == 2 and "could not write the journal of run run-unjournaled" in caplog.text
    backend.teardown("run-unjournaled")
    assert aws_leftovers(aws, "run-unjournaled", tmp_path) == {}
    folder = tmp_path / "journals"
    journal.made(folder, "run-torn", "us-east-1", ["vol-0123456789abcdef0"])
    with open(folder / "run-torn.jsonl", "r+") as file:
        entry = json.loads(file.read())
        file.seek(0)
        file.write(json.dumps({**entry, "by": "another-host/1"}) + "\n" + '{"made": "vol-0a1b')
    assert [made for made, _, _ in journal.others_made(folder, "run-torn", 60)] == ["vol-0123456789abcdef0"]


def no_sleep_in(module):
    """time.sleep, failing the test where `module`'s own code calls it (not botocore's, say)."""
    real = time.sleep

    def sleep(seconds: float) -> None:
        if sys._getframe(1).f_globals.get("__name__") == module.__name__:
            pytest.fail(f"{module.__name__} waited {seconds} s")
        real(seconds)
    return sleep


@pytest.mark.parametrize("why", ["running machines took the room", "a spot limit under the quota's value"])
def test_a_launch_refused_over_its_quota_with_no_machine_let_go_fails_without_waiting(aws, snapshot, tmp_path,
                                                                                     monkeypatch, why):
    """A launch refused over the vCPU quota waits only for machines let go (shutting down, terminated moments ago)
    where the account's running machines leave room: another launch took the room since the pre-flight, or EC2
    enforces a spot limit under the quota's value (new accounts meet it), and nothing was let go: it fails at
    once."""
    spot = why != "running machines took the room"
    aws.set_quotas({quotas.quota_for("g5.xlarge", spot).code: 4})
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-quota-taken", 1, "g5.xlarge", spot=spot)
    replicas = backend.replicate(spec, DATASET, 1)
    backend.authorize_launch(spec)  # as the flow does: EC2 knows the machines' profile by the launch
    if spot:
        aws.add_fault("ec2", "RunInstances", "MaxSpotInstanceCountExceeded", match={"DryRun": ABSENT})
    else:
        aws.client("ec2").run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="g5.xlarge", MinCount=1,
                                        MaxCount=1)
    monkeypatch.setattr(time, "sleep", no_sleep_in(machines))
    with pytest.raises(ClientError, match="VcpuLimitExceeded|MaxSpotInstanceCountExceeded"):
        backend.provision(spec, replicas)
    monkeypatch.undo()
    backend.teardown("run-quota-taken")
    assert aws_leftovers(aws, "run-quota-taken", tmp_path) == {}


def test_machines_let_go_are_counted_for_a_type_the_catalogue_does_not_know(aws):
    """The snapshot builder's c6i.4xlarge is no GPU type of the catalogue: its vCPUs come from EC2."""
    aws.set_shutting_down(60)
    ec2 = aws.client("ec2")
    builder = ec2.run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="c6i.4xlarge", MinCount=1,
                                MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[builder])
    clients = Clients("us-east-1")
    assert quotas.let_go(clients, quotas.STANDARD) == [builder]
    assert quotas.fits_once_let_go(clients, "c6i.4xlarge", 1, spot=False)


def test_machines_terminated_moments_ago_are_let_go_by_their_transition_time_or_else_their_launch(aws,
                                                                                                 monkeypatch):
    """EC2 counts a terminated machine against its quota a while: one terminated by a call says when in its
    StateTransitionReason ("User initiated (... GMT)"); one EC2 ended as it started says nothing there, and was let
    go at its launch. A machine terminated long ago is let go no more."""
    ec2 = aws.client("ec2")
    aws.set_shutting_down(0)
    aws.end_launches("g5.xlarge", 1)
    ended = ec2.run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="g5.xlarge", MinCount=1,
                              MaxCount=1)["Instances"][0]["InstanceId"]
    terminated = ec2.run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="g5.xlarge", MinCount=1,
                                   MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[terminated])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[ended, terminated], WaiterConfig={"Delay": 1})
    [reason] = [i["StateTransitionReason"] for r in ec2.describe_instances(InstanceIds=[terminated])["Reservations"]
                for i in r["Instances"]]
    assert re.fullmatch(r"User initiated \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GMT\)", reason), reason
    quota = quotas.quota_for("g5.xlarge", False)
    assert sorted(quotas.let_go(Clients("us-east-1"), quota)) == sorted([ended, terminated])
    monkeypatch.setattr(quotas, "LET_GO_S", 0.0)
    assert quotas.let_go(Clients("us-east-1"), quota) == []


def test_a_listing_does_not_await_a_machine_aws_ended(aws, monkeypatch):
    """A run's listing waits for what this process made for the run moments ago, but not for a machine AWS ended
    (a spot interruption, a root volume it could not make), which is listed as terminated from then on, not among
    the run's: else every teardown after such a failure would wait two minutes."""
    clients = Clients("us-east-1")
    run_tags = tags.tag_specs("instance", tags.tag_list("run-ended", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)))
    machine = clients.ec2.run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="g5.xlarge", MinCount=1,
                                        MaxCount=1, TagSpecifications=run_tags)["Instances"][0]["InstanceId"]
    aws_itself = aws.client("ec2")  # this process is not told
    aws_itself.terminate_instances(InstanceIds=[machine])
    aws_itself.get_waiter("instance_terminated").wait(InstanceIds=[machine], WaiterConfig={"Delay": 1})
    monkeypatch.setattr(time, "sleep", no_sleep_in(inventory))
    assert inventory.find(clients, "run-ended", identities=False) == []


def test_a_not_found_is_asked_again_only_for_what_this_process_made_moments_ago_and_still_holds(aws):
    """NotFound for a resource just made is EC2's propagation, asked again (consistency.py); for anything else,
    even in a call that also names a new resource, and for what was made and then deleted, it is the answer."""
    ec2 = Clients("us-east-1").ec2
    aws.add_fault("ec2", "*", "Unused", probability=0.0, label="counted")  # counts the calls, never fires
    machine = ec2.run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="g5.xlarge", MinCount=1,
                                MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[machine], WaiterConfig={"Delay": 1})
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume], WaiterConfig={"Delay": 0.1})
    ec2.delete_volume(VolumeId=volume)
    [counted] = aws.fault_counts("counted")
    for call in (lambda: ec2.attach_volume(VolumeId="vol-0123456789abcdef0", InstanceId=machine, Device="/dev/sdf"),
                 lambda: ec2.describe_volumes(VolumeIds=[volume])):
        with pytest.raises(ClientError, match="InvalidVolume.NotFound"):
            call()
    assert aws.fault_counts("counted")[0]["seen"] - counted["seen"] == 2, "each asked once"


def public_ips(ec2, cluster) -> list[str]:
    reservations = ec2.describe_instances(InstanceIds=[m.id for m in cluster.machines])["Reservations"]
    return sorted(i["PublicIpAddress"] for r in reservations for i in r["Instances"])


@pytest.mark.slow
def test_replicas_are_returned_initialized_at_the_rate_asked(aws, snapshot, tmp_path):
    """EBS fetches a new volume's blocks from S3 on first read until it is initialized: the replicate stage
    returns only once every replica is, so no training reads cold; EBS reports no initialization at all for a while
    after making a volume, which is not a finished one."""
    aws.set_initialization_report_delay(12)
    backend = AwsBackend(options(initialization_mibps=100), home=tmp_path)
    made = backend.replicate(cluster_spec("run-warm", 2), DATASET, 2)
    statuses = aws.client("ec2").describe_volume_status(VolumeIds=[r.id for r in made])["VolumeStatuses"]
    assert [(s["InitializationStatusDetails"]["InitializationType"], s["InitializationStatusDetails"]["Progress"])
            for s in statuses] == [("provisioned-rate", 100)] * 2
    backend.teardown("run-warm")


def test_replicas_ebs_reports_no_initialization_for_past_its_5_minutes_are_used_with_a_warning(aws, snapshot, tmp_path,
                                                                                             monkeypatch, caplog):
    monkeypatch.setattr(volumes, "INITIALIZATION_REPORT_S", 1.0)
    aws.set_initialization_report_delay(3600)
    backend = AwsBackend(options(), home=tmp_path)
    made = backend.replicate(cluster_spec("run-unreported", 2), DATASET, 2)
    assert f"EBS reports no initialization for {made[0].id}, {made[1].id} after 1 s" in caplog.text
    backend.teardown("run-unreported")


def test_a_failed_replication_part_way_leaves_nothing_after_teardown(aws, snapshot, tmp_path):
    """The teardown comes moments after the replicas were asked for, while EBS still makes them: EC2 deletes only
    a volume made (available)."""
    aws.set_volume_creating(5.0)
    aws.add_fault("ec2", "CreateVolume", "VolumeLimitExceeded", status=400, after=10)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-partial", 16)
    with pytest.raises(Exception, match="VolumeLimitExceeded"):
        backend.replicate(spec, DATASET, 16)
    assert len(backend.resources("run-partial")) == 10
    backend.teardown("run-partial")
    assert aws_leftovers(aws, "run-partial") == {}


def second_snapshot(aws, tiny_data):
    aws.make_snapshot(tiny_data.parent, description=DATASET)


def hold_two_addresses(aws, tiny_data):
    """Elastic IPs of the account's own (not the run's), which count against the same quota."""
    for _ in range(2):
        aws.client("ec2").allocate_address(Domain="vpc")


def hold_another_network(aws, tiny_data):
    """A VPC with its internet gateway of the account's own, beside the default VPC's."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)


def run_machines_of_the_accounts_own(aws, tiny_data):
    """Two on-demand P machines, which count against the run's quota; a spot one, a G one and a stopped one, which
    do not."""
    ec2 = aws.client("ec2")

    def run(instance_type, count=1, **market):
        return [i["InstanceId"] for i in ec2.run_instances(ImageId=UBUNTU_2204.image_id, InstanceType=instance_type,
                                                           MinCount=count, MaxCount=count, **market)["Instances"]]

    run("p4d.24xlarge", 2)
    run("p4d.24xlarge", InstanceMarketOptions={"MarketType": "spot"})
    run("g5.xlarge")
    stopped = run("p3.16xlarge")
    ec2.get_waiter("instance_running").wait(InstanceIds=stopped, WaiterConfig={"Delay": 1})
    ec2.stop_instances(InstanceIds=stopped)


def encrypted_dataset_under_a_disabled_key(aws, tiny_data):
    """The account's own snapshot `encrypted-dataset`, encrypted with a customer managed key since disabled."""
    key = customer_managed_key(aws)
    owned_encrypted_snapshot(aws, "encrypted-dataset", key)
    aws.client("kms").disable_key(KeyId=key.rsplit("/", 1)[1])


def hold_an_io2_volume(aws, tiny_data):
    """Volumes of the account's own (not the run's): EBS counts the IOPS of every io2 volume in the region, and
    only of io2 volumes (the gp3 one is not counted)."""
    aws.client("ec2").create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="io2", Iops=50_000)
    aws.client("ec2").create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3")


def test_spot_p5_machines_are_checked_against_their_own_quota(aws):
    """EC2 counts spot P5 machines against "All P5 Spot Instance Requests", the other spot P machines against
    L-7212CCBC, and every on-demand P machine against "Running On-Demand P instances"."""
    aws.set_quotas({"L-C4BD4855": 191})
    clients = Clients("us-east-1")
    quotas.check(clients, "p5.48xlarge", 2, spot=False)
    quotas.check(clients, "p4d.24xlarge", 2, spot=True)
    with pytest.raises(InputError, match=r'1 x p5.48xlarge need 192 vCPUs of the quota "All P5 Spot Instance '
                                         r'Requests" \(L-C4BD4855\) in us-east-1, which is 191'):
        quotas.check(clients, "p5.48xlarge", 1, spot=True)


@pytest.mark.parametrize("change,message", [
    ({"options": {"region": "moon-1"}}, "unknown AWS region 'moon-1'"),
    ({"options": {"region": "af-south-1"}}, r"^af-south-1 is an opt-in region this account has not enabled: "),
    ({"options": {"availability_zone": "us-east-1z"}}, "unknown availability zone 'us-east-1z'"),
    ({"instance_type": "p9.mega"}, "unknown instance type 'p9.mega'"),
    ({"options": {"availability_zone": "us-east-1f"}}, "p4d.24xlarge is not offered in us-east-1f"),
    ({"instance_type": "p3.16xlarge"}, r"p3.16xlarge has V100 GPUs \(compute capability 7.0\), which torch "
     r"2.14.1\+cu130, the machines' build, has no kernels for \(it needs 7.5 or newer\): choose one of "
     r"p4d.24xlarge, p5.48xlarge, g5.xlarge, g6.xlarge$"),
    ({"options": {"other_instance_types": ("p5.48xlarge", "p3dn.24xlarge")}},
     r"^aws.other_instance_types: p3dn.24xlarge has V100 GPUs"),
    ({"options": {"other_instance_types": ("p9.mega",)}}, r"^aws.other_instance_types: unknown instance type"),
    ({"dataset": "no-such-dataset"}, "no snapshot named or described 'no-such-dataset'"),
    ({"dataset": "snap-0123456789abcdef0"}, "dataset snapshot snap-0123456789abcdef0 not found"),
    ({"setup": second_snapshot}, f"'{DATASET}' matches 2 snapshots"),
    ({"options": {"ami": "ami-00000000"}}, "AMI ami-00000000 not found"),
    ({"options": {"ami": UBUNTU_2404.image_id}}, r"AMI ami-\w+ \(Deep Learning Base OSS Nvidia Driver GPU AMI \(Ubuntu "
     r"24.04\) \d+\) is Ubuntu 24.04: the machines' boot is made for Ubuntu 22.04; use a Deep Learning Base AMI"),
    ({"options": {"volume_type": "io1", "iops": 70000}}, "io1 volumes allow at most 64,000 IOPS"),
    ({"options": {"volume_type": "gp3", "iops": 3000}}, r"^gp3 volumes allow at most 0.25 MiB/s of throughput per "
     r"IOPS: aws.throughput_mbps=1000 needs aws.iops=4000 or more, and aws.iops=3000 allows aws.throughput_mbps=750 "
     r"at most \(`--iops`, `--throughput`\)$"),
    ({"hours": 72}, "max_hours=72 is over the 48 h that SSM lets a job's command run on AWS"),
    ({"fault": "VcpuLimitExceeded"}, "over this account's limit"),
    ({"fault": "UnauthorizedOperation"}, "may not start instances"),
    ({"setup": lambda aws, _: aws.verify_account(dry_runs=True)},
     r"AWS is still verifying this account's access to us-east-1, and refuses its launches until then "
     r"\(PendingVerification\): usually minutes, up to 4 hours"),
    ({"spot": True, "fault": "UnauthorizedOperation", "fault_match": {"InstanceMarketOptions.MarketType": "spot"}},
     "may not start instances as the run does"),  # a policy that forbids spot: the dry run asks for spot too
    ({"no_credentials": True}, "no AWS credentials"),
    ({"quotas": {"L-417A185B": 0}}, r'16 x p4d.24xlarge need 1536 vCPUs of the quota "Running On-Demand P '
                                    r'instances" \(L-417A185B\) in us-east-1, which is 0 for this account .*'
                                    r"request-service-quota-increase --region us-east-1 --service-code ec2 "
                                    r"--quota-code L-417A185B --desired-value 1536"),
    ({"spot": True, "quotas": {"L-7212CCBC": 1535}}, r'1536 vCPUs of the quota "All P4, P3 and P2 Spot Instance '
                                                     r'Requests" \(L-7212CCBC\) in us-east-1, which is 1535'),
    ({"quotas": {"L-417A185B": 1700}, "setup": run_machines_of_the_accounts_own},
     r'16 x p4d.24xlarge need 1536 vCPUs of the quota "Running On-Demand P instances" \(L-417A185B\) in us-east-1, '
     r"which is 1700 for this account, 192 of them held by 2 running machine\(s\) .* --desired-value 1728`"),
    ({"setup": lambda aws, _: delete_default_vpc(aws)}, "this account has no default subnet in us-east-1a"),
    ({"quotas": {"L-8D977E7E": 200_000}, "setup": hold_an_io2_volume},
     r'16 io2 dataset replica\(s\) of \d+ GiB at 11500 IOPS need 184000 of the quota "IOPS for Provisioned IOPS SSD '
     r'\(io2\) volumes" \(L-8D977E7E\) in us-east-1, which is 200000 with 50000 in use by the account\'s volumes: .* '
     r"--service-code ebs --quota-code L-8D977E7E --desired-value 234000`\), or ask for fewer replicas \(a run makes "
     r"one a machine\), or choose "
     r"aws.volume_type gp3"),
    ({"options": {"volume_type": "gp3", "iops": 3000, "throughput_mbps": 750}, "quotas": {"L-7A658B76": 0.01}},
     r'16 gp3 dataset replica\(s\) of 1 GiB need 0.0156 of the quota "Storage for General Purpose SSD \(gp3\) '
     r'volumes, in TiB" \(L-7A658B76\) in us-east-1, which is 0.01 with 0 in use'),
    ({"quotas": {"L-F678F1CE": 2}, "setup": hold_another_network},
     r'the run makes its own VPC and internet gateway; the quota "VPCs per Region" \(L-F678F1CE\) in us-east-1 is 2 '
     r"\(a new account's is 5\), with 2 held: .* --service-code vpc --quota-code L-F678F1CE --desired-value 3`\), or "
     r"give aws.subnet_id"),
    ({"quotas": {"L-A4707A72": 2}, "setup": hold_another_network},
     r'the quota "Internet gateways per Region" \(L-A4707A72\) in us-east-1 is 2 \(a new account.s is 5\), with 2 '
     r"held"),
    ({"setup": lambda aws, _: customer_managed_key(aws, "Disabled", ebs_default=True)},
     r"^EBS cannot encrypt the disks \(the account's default key for EBS\) with KMS key arn:aws:kms:us-east-1:\d+:"
     r"key/[\w-]+: the key is Disabled; enable it \(`aws kms enable-key`\), or make another key the default "
     r"\(`aws ec2 modify-ebs-default-kms-key-id`\)$"),
    ({"setup": lambda aws, _: customer_managed_key(aws, "PendingDeletion", ebs_default=True)},
     r"with KMS key arn:aws:kms:\S+: the key is PendingDeletion; cancel its deletion and enable it"),
    ({"setup": encrypted_dataset_under_a_disabled_key, "dataset": "encrypted-dataset"},
     r"^EBS cannot encrypt the dataset replicas \(snapshot snap-\w+ is encrypted with it\) with KMS key "
     r"arn:aws:kms:\S+: the key is Disabled; enable it \(`aws kms enable-key`\), or make the dataset's snapshot "
     r"anew \(`imagenet18 snapshot --from ...`, then delete this one\), whose disks take the account's default "
     r"key$"),
    ({"setup": lambda aws, _: aws.make_foreign_bucket(BUCKET)},
     r"^bucket imagenet18-test-results is another account's, or these credentials may not list it \(S3 answered 403 "
     r"to HeadBucket as account 123456789012\): name another --bucket, or none for the run's own, "
     r"imagenet18-123456789012-us-east-1$"),
    ({"options": {"bucket": None},
      "setup": lambda aws, _: aws.make_foreign_bucket("imagenet18-123456789012-us-east-1")},
     r"^bucket imagenet18-123456789012-us-east-1 is another account's, .*: give --bucket, one of the account's$"),
    ({"options": {"bucket": "Team_Results"}},
     r"^there is no bucket Team_Results to use, and S3 makes none so named: 3 to 63 lowercase letters, digits, dots "
     r"and hyphens"),
    ({"options": {"bucket": "192.168.5.4"}}, r"S3 makes none so named: not formatted as an IP address$"),
    ({"options": {"bucket": "results--x-s3"}}, r"S3 makes none so named: not beginning with xn--, .* nor ending with "),
    ({"setup": lambda aws, _: bucket_under_key(aws, BUCKET, customer_managed_key(aws, "Disabled"))},
     r"^S3 cannot encrypt the run's results in bucket imagenet18-test-results with KMS key arn:aws:kms:\S+: the key "
     r"is Disabled; enable it \(`aws kms enable-key`\), or name another --bucket$"),
    ({"quotas": {"L-0263D0A3": 17}, "setup": hold_two_addresses},
     r'16 machines need 16 Elastic IPs \(one each, with an interface on every EFA card\); the quota "EC2-VPC '
     r'Elastic IPs" \(L-0263D0A3\) in us-east-1 is 17, with 2 held: .* --quota-code L-0263D0A3 --desired-value 18`'),
])
def test_bad_input_is_refused_before_anything_exists(aws, snapshot, tiny_data, tmp_path, monkeypatch, change,
                                                     message):
    if "setup" in change:
        change["setup"](aws, tiny_data)
    if "fault" in change:
        aws.add_fault("ec2", "RunInstances", change["fault"], status=400,
                      match={"DryRun": "true", **change.get("fault_match", {})})
    aws.set_quotas(change.get("quotas", {}))
    if change.get("no_credentials"):
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = AwsBackend(options(**change.get("options", {})), home=tmp_path)
    spec = cluster_spec("run-bad", 16, change.get("instance_type", "p4d.24xlarge"), change.get("spot", False),
                        hours=change.get("hours", 2.0))
    machines = instance_ids(aws)  # the account's own, if any
    with pytest.raises(InputError, match=message):
        backend.check(spec, change.get("dataset", DATASET))
    monkeypatch.undo()
    assert aws_leftovers(aws, home=tmp_path) == {}
    assert instance_ids(aws) == machines


def instance_ids(aws) -> list[str]:
    return sorted(i["InstanceId"] for r in aws.client("ec2").describe_instances()["Reservations"]
                  for i in r["Instances"])


def test_a_run_id_that_already_has_resources_is_refused_before_its_quotas_count_its_machines(aws, snapshot,
                                                                                              tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-again", 2, "g5.xlarge")
    backend.provision(spec, backend.replicate(spec, DATASET, 2))
    aws.set_quotas({"L-DB2E81BA": 8})  # its own two machines fill it
    with pytest.raises(InputError, match="^run run-again already has AWS resources; use another run id"):
        backend.check(spec, DATASET)
    backend.teardown("run-again")


def test_temporary_credentials_that_the_run_would_outlast_are_refused_before_anything(aws, snapshot, tmp_path,
                                                                                    monkeypatch, caplog):
    """A session token in the environment (`aws configure export-credentials`, aws-vault) is not renewed by boto3:
    when it expires every call is refused, the teardown's too, and what the run made stays, paid for. A run it
    would not outlast is refused; where its expiry is not said, the check warns."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
    in_an_hour = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", in_an_hour.strftime("%Y-%m-%dT%H:%M:%SZ"))
    with pytest.raises(InputError, match="these AWS credentials expire at .* before the run and its teardown"):
        AwsBackend(options(), home=tmp_path).check(cluster_spec("run-expiring", 2, hours=2.0), DATASET)
    AwsBackend(options(), home=tmp_path).check(cluster_spec("run-short", 2, hours=0.25), DATASET)
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", "2026-01-01 00:00:00 UTC")  # botocore reads this form too
    with pytest.raises(InputError, match="these AWS credentials have expired"):
        AwsBackend(options(), home=tmp_path).check(cluster_spec("run-expired", 2, hours=0.25), DATASET)
    monkeypatch.delenv("AWS_CREDENTIAL_EXPIRATION")
    with caplog.at_level("WARNING", logger="tasks.backends.aws.clients"):
        AwsBackend(options(), home=tmp_path).check(cluster_spec("run-unsaid", 2, hours=0.25), DATASET)
    assert "when they expire is not known" in caplog.text
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_local_zone_the_account_opted_in_to_is_never_the_runs_zone(aws, snapshot, tmp_path):
    """EC2 lists an opted-in Local Zone among the region's zones and offers instance types there, and its name sorts
    first (us-east-1-bos-1a before us-east-1a): the run, which takes the first zone offering its type, was placed
    where the EFS, io2 volumes and cluster placement group it needs are not."""
    aws.opt_in_local_zone()
    backend = AwsBackend(options(), home=tmp_path)
    assert backend.zone("g5.xlarge") == "us-east-1a"
    backend.check(cluster_spec("run-beside-a-local-zone", 2, "g5.xlarge"), DATASET)
    with pytest.raises(InputError, match=r"^unknown availability zone 'us-east-1-bos-1a' in us-east-1: choose one of "
                                         r"us-east-1a, "):
        AwsBackend(options(availability_zone="us-east-1-bos-1a"), home=tmp_path).zone("g5.xlarge")
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_without_a_default_vpc_the_launch_is_dry_run_in_the_users_subnet(aws, snapshot, tmp_path):
    delete_default_vpc(aws)
    subnet = users_subnet(aws)
    AwsBackend(options(subnet_id=subnet), home=tmp_path).check(cluster_spec("run-own-subnet", 2), DATASET)
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_behind_a_nat_each_machine_gets_an_efa_interface_on_each_network_card(aws, snapshot, tmp_path):
    backend = AwsBackend(options(subnet_id=users_subnet(aws, public=False, through_nat=True)), home=tmp_path)
    spec = cluster_spec("run-efa", 2)
    backend.check(spec, DATASET)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    [launch] = aws.launches()
    assert sorted(launch["instances"]) == sorted(m.id for m in cluster.machines)
    assert [(i["NetworkCardIndex"], i["DeviceIndex"], i["InterfaceType"]) for i in launch["interfaces"]] == [
        ("0", "0", "efa"), ("1", "0", "efa-only"), ("2", "0", "efa-only"), ("3", "0", "efa-only")]
    assert not any("AssociatePublicIpAddress" in i for i in launch["interfaces"])
    backend.teardown("run-efa")
    assert aws_leftovers(aws, "run-efa") == {}


@pytest.mark.parametrize("subnet,message", [
    ({"way_out": False}, r"subnet subnet-\w+ has no way out to the internet"),
    ({"public": False}, r"subnet subnet-\w+ has no way out to the internet"),
    ({"target_gone": True}, r"subnet subnet-\w+ has no way out to the internet"),
    ({"public": False, "through_nat": True, "target_gone": True}, r"subnet subnet-\w+ has no way out to the internet"),
    ({"dns_hostnames": False}, r"enableDnsHostnames is off in vpc-\w+, the VPC of subnet subnet-\w+: the machines "
                               r"mount EFS by its DNS name; turn it on: `aws ec2 modify-vpc-attribute --vpc-id "
                               r"vpc-\w+ --enable-dns-hostnames`"),
])
def test_a_users_subnet_without_a_way_out_or_dns_is_refused_before_anything_exists(aws, snapshot, tmp_path,
                                                                                    subnet, message):
    backend = AwsBackend(options(subnet_id=users_subnet(aws, **subnet)), home=tmp_path)
    with pytest.raises(InputError, match=message):
        backend.check(cluster_spec("run-closed-subnet", 2), DATASET)
    assert aws_leftovers(aws, home=tmp_path) == {}


@pytest.mark.parametrize("subnet, mode, exclusion, refused", [
    (None, "block-bidirectional", None, r"it blocks the run's own network's way out, through an internet gateway, "
                                        r"so the machines could not install the project nor reach SSM: name a subnet "
                                        r"\(aws.subnet_id\) in a VPC or subnet excluded from it, its NAT gateway's "
                                        r"too \(`aws ec2 create-vpc-block-public-access-exclusion "),
    (None, "block-ingress", None,
     r"it blocks the run's own network's way out, .* \(aws.subnet_id\) behind a NAT gateway, or "),
    ({}, "block-ingress", None, r"it blocks subnet subnet-\w+'s way out"),
    ({}, "block-ingress", "allow-egress", r"it blocks subnet subnet-\w+'s way out"),  # egress of a block both ways
    ({}, "block-bidirectional", "allow-egress", None),
    ({}, "block-ingress", "allow-bidirectional", None),
    ({"public": False, "through_nat": True}, "block-ingress", None, None),
    ({"public": False, "through_nat": True}, "block-bidirectional", None, r"it blocks subnet subnet-\w+'s way out"),
    ({"public": False, "through_nat": True}, "block-bidirectional", "allow-egress", None),
], ids=["own-network", "own-network-ingress", "public-subnet", "egress-exclusion-of-ingress", "egress-exclusion",
        "exclusion", "behind-a-nat", "behind-a-nat-both-ways", "behind-an-excluded-nat"])
def test_a_run_whose_way_out_vpc_block_public_access_blocks_is_refused_before_anything_exists(
        aws, snapshot, tmp_path, subnet, mode, exclusion, refused):
    """VPC Block Public Access (an account's or its organization's, per region) blocks internet gateways but in the
    VPCs excluded from it: the machines would install nothing and their agents never register, once paid for."""
    subnet_id = users_subnet(aws, **subnet) if subnet is not None else None
    vpc = subnet_id and aws.client("ec2").describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["VpcId"]
    aws.block_public_access(mode, {vpc: exclusion} if exclusion else {})
    backend = AwsBackend(options(subnet_id=subnet_id), home=tmp_path)
    if refused:
        with pytest.raises(InputError, match=r"^VPC Block Public Access is on in us-east-1 \(block-\w+\): " + refused):
            backend.check(cluster_spec("run-blocked", 2), DATASET)
    else:
        backend.check(cluster_spec("run-blocked", 2), DATASET)
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_run_whose_account_may_make_no_exclusion_is_told_so(aws, snapshot, tmp_path):
    aws.block_public_access("block-bidirectional", exclusions_allowed=False)
    with pytest.raises(InputError, match=r"nor reach SSM: this account may make no exclusion \(its organization's "
                                         r"setting\), so no subnet of it in this region has a way out: run in another "
                                         r"region$"):
        AwsBackend(options(), home=tmp_path).check(cluster_spec("run-blocked", 2), DATASET)


@pytest.mark.parametrize("servers,doubted", [(("10.99.0.53",), True), (("10.99.0.53", "AmazonProvidedDNS"), False),
                                             (("10.40.0.2",), False), (("169.254.169.253",), False)],
                         ids=["company", "and-amazon", "vpc-base-plus-two", "link-local"])
def test_a_users_vpc_whose_dns_servers_may_not_know_efs_is_warned_of(aws, snapshot, tmp_path, caplog, servers,
                                                                      doubted):
    """A company's VPC often gives its machines the company's DNS servers (DHCP options): EFS's name is known to the
    VPC's own resolver only, so unless those forward amazonaws.com names to it, every machine's boot fails at its
    mount, after the replicas and machines are paid for. Whether they do cannot be seen from here: a warning. The
    resolver named by either of its addresses is the resolver."""
    backend = AwsBackend(options(subnet_id=users_subnet(aws, dns_servers=servers)), home=tmp_path)
    with caplog.at_level("WARNING", logger="tasks.backends.aws.backend"):
        backend.check(cluster_spec("run-company-dns", 2), DATASET)
    warned = re.search(r"the DHCP options of vpc-\w+ \(dopt-\w+\) give the machines the DNS servers [\d.]+, "
                       r"without AmazonProvidedDNS: the machines mount EFS by its DNS name", caplog.text)
    assert bool(warned) == doubted, caplog.text
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_credentials_that_may_not_pass_the_role_are_refused_at_the_launchs_dry_run(aws, snapshot, tmp_path):
    """The pre-flight cannot name the run's instance profile, which does not exist yet; authorize_launch makes it
    and dry-runs the launch with it, so a refused iam:PassRole is met there, not at the launch."""
    aws.deny_pass_role()
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-no-passrole", 2, "g5.xlarge")
    backend.check(spec, DATASET)
    with pytest.raises(InputError, match=r"may not pass the machines' role imagenet18-run-no-passrole to EC2 "
                                         r"\(iam:PassRole\)"):
        backend.authorize_launch(spec)
    assert [rule["fired"] for rule in aws.fault_counts()] == [1], "the pre-flight's dry run named no profile"
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_the_machines_role_and_profile_are_made_while_iam_does_not_know_them_yet(aws, snapshot, tmp_path):
    """IAM answers NoSuchEntity to its own calls naming a role or profile it made moments ago: giving the new role
    its policies and putting it in the new profile are asked again, not a failed stage."""
    aws.set_iam_propagation(3)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-new-role", 2, "g5.xlarge")
    backend.authorize_launch(spec)
    aws.set_iam_propagation(0)  # the world as it is, to the checks
    iam_client = aws.client("iam")
    [role] = iam_client.get_instance_profile(InstanceProfileName=f"imagenet18-{spec.run_id}")["InstanceProfile"][
        "Roles"]
    assert [p["PolicyArn"] for p in iam_client.list_attached_role_policies(RoleName=role["RoleName"])[
        "AttachedPolicies"]] == [iam.SSM_MANAGED_POLICY]
    assert iam_client.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == [iam.INLINE_POLICY]
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_the_machines_profile_read_without_the_role_given_it_moments_ago_is_not_given_it_again(aws, snapshot,
                                                                                                tmp_path):
    """The authorize-launch stage gives the new profile its role; provisioning, moments later, makes sure of it
    again, and IAM may read the profile as it was before (AWS then refuses a second role: LimitExceeded)."""
    aws.set_iam_propagation(3)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-role-twice", 2, "g5.xlarge")
    backend.authorize_launch(spec)
    backend.authorize_launch(spec)
    aws.set_iam_propagation(0)
    profile = aws.client("iam").get_instance_profile(InstanceProfileName=f"imagenet18-{spec.run_id}")
    assert [role["RoleName"] for role in profile["InstanceProfile"]["Roles"]] == [f"imagenet18-{spec.run_id}"]
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


@pytest.mark.parametrize("fault, times", [
    ("InvalidGroup.NotFound", 3),  # EC2 does not know the new group yet (eventual consistency): asked again
    ("UnauthorizedOperation", 1),  # the attempt stops after making the group; the stage's retry finds it bare
], ids=["not-known-yet", "attempt-stopped"])
def test_the_security_group_gets_its_rules_however_its_first_attempt_went(aws, tmp_path, fault, times):
    aws.add_fault("ec2", "AuthorizeSecurityGroupIngress", fault, times=times)
    backend = AwsBackend(options(ssh_cidr="203.0.113.0/24"), home=tmp_path)
    spec = cluster_spec("run-rules", 2, "g5.xlarge")
    try:
        backend.prepare(spec)
    except ClientError:
        assert fault == "UnauthorizedOperation"
        backend.prepare(spec)
    assert [rule["fired"] for rule in aws.fault_counts()] == [times]
    [group] = aws.client("ec2").describe_security_groups(Filters=tags.run_filter(spec.run_id))["SecurityGroups"]
    itself = [{"GroupId": group["GroupId"], "UserId": group["OwnerId"]}]
    for direction in ("IpPermissions", "IpPermissionsEgress"):
        assert [p["UserIdGroupPairs"] for p in group[direction] if p["IpProtocol"] == "-1"
                and p["UserIdGroupPairs"]] == [itself], f"all traffic within the group ({direction})"
    assert [r["CidrIp"] for p in group["IpPermissions"] for r in p.get("IpRanges", [])] == ["203.0.113.0/24"]
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_machines_ec2_does_not_know_yet_are_named_once_it_does_and_never_launched_twice(aws, snapshot, tmp_path):
    aws.add_fault("ec2", "CreateTags", "InvalidInstanceID.NotFound", times=2, match={"ResourceId.1": "i-.+"})
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-named", 2, "g5.xlarge")
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert [rule["fired"] for rule in aws.fault_counts()] == [2]
    assert len(aws.launches()) == 1, "one launch request"
    instances = [i for r in aws.client("ec2").describe_instances(Filters=tags.run_filter(spec.run_id))[
        "Reservations"] for i in r["Instances"]]
    assert sorted((tags.as_dict(i["Tags"])["Name"], i["State"]["Name"]) for i in instances) == [
        (f"{m.index}.test-run-named", "running") for m in cluster.machines]
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


@pytest.mark.parametrize("service, action, name, code", [
    ("iam", "ListRoleTags", "RoleName", "NoSuchEntity"),
    ("iam", "GetInstanceProfile", "InstanceProfileName", "NoSuchEntity"),
    ("ssm", "ListTagsForResource", "ResourceId", "InvalidResourceId"),
])
def test_a_teardown_passes_over_what_another_deletes_while_it_lists(aws, tmp_path, service, action, name, code,
                                                                  monkeypatch):
    # Roles made moments ago, which IAM may not know yet: what is not known is asked again for this long. The
    # simulator's IAM knows a role within 0.3 s.
    monkeypatch.setattr(iam, "IAM_PROPAGATION_S", 3.0)
    backend = AwsBackend(options(), home=tmp_path)
    specs = [cluster_spec(run_id, 1, "g5.xlarge") for run_id in ("run-other", "run-mine")]
    for spec in specs:
        ensure_instance_profile(backend.clients, spec, BUCKET, spec.run_id, f"/imagenet18/{spec.run_id}")
        backend.clients.client("ssm").put_parameter(
            Name=f"/imagenet18/claims/vol-{spec.run_id}", Value=spec.run_id, Type="String",
            Tags=tags.tag_list(spec.run_id, spec.expires_at))
    # Another teardown deletes run-other's between our listing and our reading its tags.
    aws.add_fault(service, action, code, match={name: ".*run-other"})
    assert {r.kind for r in backend.teardown("run-mine")} == {"instance-profile", "parameter"}
    aws.clear_faults()
    assert aws_leftovers(aws, "run-mine", tmp_path) == {}
    backend.teardown("run-other")
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_teardown_passes_over_a_mount_target_another_deleted_since_it_listed_them(aws, tmp_path):
    """Two teardowns of one run (the flow's and the cleanup flow's) may both list the file system's mount target;
    the second to delete it is answered MountTargetNotFound."""
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-two-teardowns", 1, "g5.xlarge")
    fs_id = efs.ensure_file_system(backend.clients, spec)
    subnet = aws.client("ec2").describe_subnets()["Subnets"][0]
    group = aws.client("ec2").describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]
    efs.ensure_mount_target(backend.clients, fs_id, subnet["SubnetId"], group["GroupId"])
    aws.add_fault("efs", "DeleteMountTarget", "MountTargetNotFound", status=404, times=1, carried_out=True)
    assert {r.kind for r in backend.teardown(spec.run_id)} == {"file-system"}
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_a_file_system_whose_creation_answer_was_lost_is_the_runs_not_a_failure(aws, tmp_path):
    """botocore asks again with the same creation token; EFS answers FileSystemAlreadyExists, naming the one made."""
    aws.add_fault("efs", "CreateFileSystem", "InternalServerError", status=500, times=1, carried_out=True)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-lost-fs-answer", 1, "g5.xlarge")
    fs_id = efs.ensure_file_system(backend.clients, spec)
    assert [rule["fired"] for rule in aws.fault_counts()] == [1]
    assert [fs["FileSystemId"] for fs in aws.client("efs").describe_file_systems()["FileSystems"]] == [fs_id]
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_replicas_ec2_does_not_know_yet_are_waited_for_not_failed(aws, snapshot, tmp_path):
    aws.set_consistency_window(3.0)  # EC2 neither lists nor knows by id a volume younger than that
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-unknown-volumes", 2, "g5.xlarge")
    assert len(backend.replicate(spec, DATASET, 2)) == 2
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_replicas_ebs_cannot_encrypt_fail_the_replication_naming_their_kms_key(aws, snapshot, tmp_path):
    """EBS accepts an encrypted volume whose KMS key it cannot use (disabled, or not these credentials' to use)
    and deletes it moments later: the replication fails then, with the key and what to allow on it, rather than
    after minutes of asking EC2 for volumes taken for not propagated yet; the teardown awaits them no more."""
    customer_managed_key(aws, "Disabled", ebs_default=True)  # since the pre-flight: replicate asks nothing of KMS
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-unusable-key", 2, "g5.xlarge")
    with pytest.raises(InputError, match=r"^EBS deleted volume\(s\) vol-\w+, vol-\w+ moments after accepting them, as "
                                         r"it does with a volume it cannot encrypt: their KMS key \(arn:aws:kms:"
                                         r"us-east-1:\d+:key/[\w-]+\) is disabled or pending deletion, or these "
                                         r"credentials may not use it; they need kms:CreateGrant, .*kms:ReEncrypt"):
        backend.replicate(spec, DATASET, 2)
    assert backend.teardown(spec.run_id) == []
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_a_replica_the_run_already_had_that_goes_fails_its_retry_in_seconds(aws, snapshot, tmp_path, monkeypatch):
    """A retried replication reuses the run's replicas, found in a listing: one deleted by someone else since is
    gone once listings miss it for volumes.VANISHED_AFTER_S, not awaited as a new volume EC2 may not list yet
    would be (consistency.LISTING_WAIT_S, an hour here)."""
    monkeypatch.setattr(consistency, "LISTING_WAIT_S", 3600.0)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-replica-gone", 2, "g5.xlarge")
    gone = backend.replicate(spec, DATASET, 2)[0].id
    had = volumes.run_volumes(backend.clients, spec.run_id)
    aws.client("ec2").delete_volume(VolumeId=gone)
    outcome = []

    def retry() -> None:
        with pytest.raises(BackendError) as raised:
            volumes.replicate(backend.clients, spec, backend.snapshot(DATASET), backend.zone(spec.instance_type),
                              range(2), backend.volume_settings, 1, had)
        outcome.append(str(raised.value))

    thread = threading.Thread(target=retry, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the retry still awaits the replica that went"
    assert outcome == [f"volume(s) {gone} (last available) went away while the run waited for them: deleted by "
                       "someone else?"]
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_a_disk_key_these_credentials_may_not_describe_is_warned_of_not_refused(aws, tmp_path, operator, caplog):
    """KMS may not describe to these credentials a key EBS uses for them all the same: the AWS managed key, named
    by its ARN in every snapshot the builder makes; nor may an older policy read the default key. The pre-flight
    says what it could not ask, and goes on; with user_policy.json it asks."""
    snapshot = owned_encrypted_snapshot(aws, "built-dataset")  # the AWS managed key, by its ARN
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-key", 2, "g5.xlarge")

    def warned(policy_without: str | None) -> list[str]:
        grant_operator(aws, without_action=policy_without)
        caplog.clear()
        backend.check(spec, "built-dataset")
        return [r.getMessage() for r in caplog.records if "KMS key" in r.getMessage() or "EBS encryption" in
                r.getMessage()]

    assert warned("kms:DescribeKey") == [
        f"these credentials may not describe KMS key {snapshot['KmsKeyId']} (kms:DescribeKey), the key of the "
        f"dataset replicas (snapshot {snapshot['SnapshotId']} is encrypted with it), so it was not checked: with a "
        "customer managed key they may not use, EBS deletes the run's volumes as they are made; they need "
        "kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt* on it"]
    assert warned("ec2:GetEbsDefaultKmsKeyId") == [
        "these credentials may not read the account's default EBS encryption key (ec2:GetEbsDefaultKmsKeyId, in "
        "tasks/backends/aws/user_policy.json), so it was not checked: one EBS cannot use would end the run's disks "
        "as they are made"]
    assert warned(None) == []
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_the_documented_policy_lets_ebs_encrypt_replicas_with_a_customer_managed_key(aws, snapshot, tmp_path,
                                                                                     operator):
    """EBS uses the key as the caller, through EC2 (user_policy.json's EbsEncryptsWithACustomerManagedKey):
    without that statement the replicas are accepted, then deleted, which no pre-flight can foresee."""
    customer_managed_key(aws, ebs_default=True)
    backend = AwsBackend(options(), home=tmp_path)
    allowed = cluster_spec("run-key-allowed", 2, "g5.xlarge")
    backend.check(allowed, DATASET)
    assert len(backend.replicate(allowed, DATASET, 2)) == 2
    backend.teardown(allowed.run_id)
    grant_operator(aws, without="EbsEncryptsWithACustomerManagedKey")
    refused = cluster_spec("run-key-refused", 2, "g5.xlarge")
    backend.check(refused, DATASET)
    with pytest.raises(InputError, match=r"^EBS deleted volume\(s\) vol-\w+, vol-\w+ moments after accepting them"):
        backend.replicate(refused, DATASET, 2)
    backend.teardown(refused.run_id)
    assert aws_leftovers(aws, home=tmp_path) == {}


def grant_operator(aws, without: str | None = None, without_action: str | None = None) -> None:
    """The operator's policy: user_policy.json, less its statement `without` and the action `without_action`
    wherever it is named."""
    policy = json.loads(permissions.POLICY.read_text())
    for statement in policy["Statement"]:
        named = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        statement["Action"] = [action for action in named if action != without_action]
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != without and s["Action"]]
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                      PolicyDocument=json.dumps(policy))


def test_the_plan_prices_machines_on_demand_in_the_runs_region_and_says_when_it_cannot(aws, tmp_path, operator,
                                                                                       caplog):
    """Prices differ by region: a budget held to us-east-1's price where the run's region charges more lets a run
    spend past it. The Price List API says the region's price; credentials that may not ask it get the
    catalogue's us-east-1 price, and a warning that says so."""
    spec = cluster_spec("run-priced", 2)

    def machines_hourly(region: str) -> float:
        caplog.clear()
        return AwsBackend(options(region=region), home=tmp_path).cost_plan(spec, 100, 2.0).items[0].hourly_usd

    on_demand = simulated_prices.US_EAST_1["p4d.24xlarge"]
    assert machines_hourly("us-east-1") == pytest.approx(on_demand) == catalog.instance_type(spec.instance_type)\
        .on_demand_usd
    assert machines_hourly("eu-west-1") == pytest.approx(on_demand * simulated_prices.REGION_FACTORS["eu-west-1"])
    assert "price" not in caplog.text
    assert machines_hourly("ca-central-1") == pytest.approx(on_demand)  # a region the simulator has no prices of
    assert ("AWS's price list has no on-demand Linux price of p4d.24xlarge in ca-central-1: the cost plan takes "
            "its us-east-1 price, $21.96/h") in caplog.text
    grant_operator(aws, without_action="pricing:GetProducts")
    assert machines_hourly("eu-west-1") == pytest.approx(on_demand)
    assert ("AWS's price list answered AccessDeniedException (pricing:GetProducts, in tasks/backends/aws/"
            "user_policy.json): the cost plan takes p4d.24xlarge's us-east-1 price, $21.96/h, which may be under "
            "eu-west-1's") in caplog.text


def service_linked_roles(aws, service: str) -> list[str]:
    return [r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]
            if r["Path"] == f"/aws-service-role/{service}/"]


def test_a_spot_run_makes_spots_service_linked_role_once_and_is_refused_before_replicas_without_leave(
        aws, snapshot, tmp_path, operator):
    """A spot launch through the API needs EC2 Spot's service-linked role, which a new account lacks; EC2 would
    make it at the launch, as the caller, after the run's replicas. authorize_launch makes it first."""
    grant_operator(aws, without="SpotsServiceLinkedRole")
    backend = AwsBackend(options(), home=tmp_path)
    spot = cluster_spec("run-spot-role", 2, "g5.xlarge", spot=True)
    with pytest.raises(InputError, match=r"may not make EC2 Spot's service-linked role, .* allow "
                                         r"iam:CreateServiceLinkedRole for spot.amazonaws.com"):
        backend.authorize_launch(spot)
    backend.authorize_launch(cluster_spec("run-on-demand", 2, "g5.xlarge"))  # on demand needs no such role
    grant_operator(aws)
    backend.authorize_launch(spot)
    backend.authorize_launch(spot)  # a retried stage: the role is there
    assert service_linked_roles(aws, "spot.amazonaws.com") == ["AWSServiceRoleForEC2Spot"]
    grant_operator(aws, without="SpotsServiceLinkedRole")
    backend.authorize_launch(spot)  # the role an administrator (or an earlier run) made serves without the right
    for run_id in ("run-spot-role", "run-on-demand"):
        backend.teardown(run_id)
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_run_makes_efss_service_linked_role_once_and_is_refused_before_replicas_without_leave(
        aws, tmp_path, operator):
    """A mount target needs EFS's service-linked role, which a new account lacks; EFS makes it at the account's
    first mount target, as the caller, after the run's replicas and machines. authorize_launch makes it first."""
    grant_operator(aws, without="FileSystemsServiceLinkedRole")
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-efs-role", 2, "g5.xlarge")
    with pytest.raises(InputError, match=r"may not make EFS's service-linked role, .* allow "
                                         r"iam:CreateServiceLinkedRole for elasticfilesystem.amazonaws.com"):
        backend.authorize_launch(spec)
    fs_id = efs.ensure_file_system(backend.clients, spec)
    subnet = aws.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    group = aws.client("ec2").describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    with pytest.raises(ClientError, match="AccessDeniedException"):  # where a run without the check failed
        efs.ensure_mount_target(backend.clients, fs_id, subnet, group)
    grant_operator(aws)
    backend.authorize_launch(spec)
    backend.authorize_launch(spec)  # a retried stage: the role is there
    assert service_linked_roles(aws, "elasticfilesystem.amazonaws.com") == ["AWSServiceRoleForAmazonElasticFileSystem"]
    grant_operator(aws, without="FileSystemsServiceLinkedRole")
    efs.ensure_mount_target(backend.clients, fs_id, subnet, group)  # the role serves without the right
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_new_profile_ec2_does_not_know_yet_is_waited_for_a_while_only(aws, snapshot, tmp_path, monkeypatch,
                                                                        caplog):
    """IAM's changes reach EC2 seconds later: the launch's dry run names the instance profile just made, which EC2
    refuses as unknown a while. It is asked again for a while, not forever."""
    aws.set_profile_propagation(2.5)
    monkeypatch.setattr("tasks.backends.aws.backend.PROFILE_PROPAGATION_POLL_S", 0.2)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-propagating", 2, "g5.xlarge")
    with caplog.at_level("INFO", logger="tasks.backends.aws.backend"):
        backend.authorize_launch(spec)
    assert "EC2 does not know the new instance profile imagenet18-run-propagating yet" in caplog.text
    backend.teardown(spec.run_id)
    aws.set_profile_propagation(30)
    monkeypatch.setattr("tasks.backends.aws.backend.PROFILE_PROPAGATION_S", 1.0)
    with pytest.raises(ClientError, match="Invalid IAM Instance Profile name"):
        backend.authorize_launch(spec)
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_the_identity_authorize_launch_made_is_the_one_prepare_uses(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-authorized", 2, "g5.xlarge")
    backend.authorize_launch(spec)
    backend.authorize_launch(spec)  # a retried stage
    assert backend.prepare(spec).profile == "imagenet18-run-authorized"
    assert aws.client("iam").get_instance_profile(InstanceProfileName="imagenet18-run-authorized")[
        "InstanceProfile"]["Roles"][0]["RoleName"] == "imagenet18-run-authorized"
    backend.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_more_machines_than_replicas_is_refused_before_any_machine(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-short", 2)
    replicas = backend.replicate(spec, DATASET, 1)
    with pytest.raises(InputError, match="2 machines need 2 replicas, there are 1"):
        backend.provision(spec, replicas)
    assert {r.kind for r in backend.resources("run-short")} == {"replica"}
    backend.teardown("run-short")


@pytest.mark.slow
def test_a_dataset_snapshot_is_made_from_an_s3_url_and_the_builder_leaves_nothing(aws, tmp_path, operator):
    s3 = aws.make_bucket("datasets")
    for folder in ("imagenet", "imagenet-sz/160"):
        for split in ("train", "validation"):
            s3.put_object(Bucket="datasets", Key=f"{folder}/{split}/n01440764/a.JPEG",
                          Body=f"{folder} {split}".encode())
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="dataset", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [  # as docs/aws.md tells users to add for their dataset's bucket
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"],
             "Resource": ["arn:aws:s3:::datasets", "arn:aws:s3:::datasets/*"]}]}))
    backend = AwsBackend(options(dataset_folder="imagenet"), home=tmp_path)
    aws.set_snapshot_pending(3)
    snapshot_id = make_snapshot(backend, "s3://datasets/imagenet", "test-dataset", sizes=[160], poll_seconds=0.5)

    [snapshot] = aws.client("ec2").describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert snapshot["Description"] == "test-dataset" and tags.as_dict(snapshot["Tags"])["Name"] == "test-dataset"
    assert aws_leftovers(aws, home=tmp_path) == {}, "the builder machine, its volume and network are gone"
    [replica] = backend.replicate(cluster_spec("run-from-snapshot", 1), "test-dataset", 1)
    disk = aws.root / "volumes" / replica.id
    assert (disk / "imagenet/validation/n01440764/a.JPEG").read_bytes() == b"imagenet validation"
    assert (disk / "imagenet-sz/160/train/n01440764/a.JPEG").read_bytes() == b"imagenet-sz/160 train"
    backend.teardown("run-from-snapshot")
    backend.check(cluster_spec("run-reads-160", 2, "g5.xlarge"), "test-dataset", ("-sz/160",))
    with pytest.raises(InputError, match=r"snapshot snap-\w+ has no -sz/352 copy of its dataset, which the schedule "
                                         r"reads \(it holds -sz/160\); make a snapshot that does: `imagenet18 snapshot "
                                         r"--from s3://datasets/imagenet --sizes 160 352`"):
        backend.check(cluster_spec("run-reads-352", 2, "g5.xlarge"), "test-dataset", ("-sz/160", "-sz/352"))
    with pytest.raises(InputError, match=r"^snapshot snap-\w+ holds its dataset in the folder 'imagenet' on its "
                                         r"volume, not 'demo': set aws.dataset_folder to 'imagenet'$"):
        AwsBackend(options(dataset_folder="demo"), home=tmp_path).check(cluster_spec("run-in-demo", 2, "g5.xlarge"),
                                                                        "test-dataset", ("-sz/160",))
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_new_results_bucket_is_made_private_and_encrypted_once_s3_answers_for_it(aws):
    """S3 may answer a new bucket's calls NoSuchBucket for a while (bucket configurations are eventually
    consistent): its settings and the project's upload are asked again until it answers, where they failed the
    smoke's first step on a new account, and the snapshot builder's upload once its volume was paid for."""
    aws.set_bucket_settling(1.5)
    aws.add_fault("s3", "PutObject", "NoSuchBucket", status=404, times=1)  # another of S3's hosts, not told yet
    storage.upload_project(Clients("us-east-1"), "imagenet18-new", "s3://imagenet18-new/runs/a/code/imagenet18.tar.gz")
    s3 = aws.client("s3")
    assert s3.get_public_access_block(Bucket="imagenet18-new")["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    [rule] = s3.get_bucket_encryption(Bucket="imagenet18-new")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.head_object(Bucket="imagenet18-new", Key="runs/a/code/imagenet18.tar.gz")["ContentLength"] > 0


def test_a_snapshot_of_a_dataset_under_a_disabled_key_is_refused_before_anything_is_made(aws, tmp_path):
    """KMS refuses a read under a disabled key (S3 passes on KMS.DisabledException), which the listing never asks."""
    key = customer_managed_key(aws)
    bucket_under_key(aws, "datasets", key)
    dataset_in_s3(aws)
    aws.client("kms").disable_key(KeyId=key.rpartition("/")[2])  # moto takes the key's id, not its ARN
    with pytest.raises(InputError, match=r"^s3://datasets/imagenet cannot be read .*is disabled"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_snapshot_of_a_whole_bucket_is_refused(aws, tmp_path):
    """Its resized copies would be another bucket's (`s3://datasets-sz/160`)."""
    with pytest.raises(InputError, match=r"a folder in a bucket .* not the bucket s3://datasets itself"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/", "x", sizes=[160])


@pytest.mark.parametrize("max_hours, message", [
    (72, r"^max_hours=72: a build takes more than 0 and at most 48 h \(SSM's bound on its copy's command\)$"),
    (1e-7, r"^copying 2 files \(7.45e-09 GiB\) onto the builder's disk takes 8.7e-07 h or more, over the build's "
           r"max_hours=1e-07: raise --max-hours$"),  # the files, 64 at once, each waiting 100 ms for S3's answer
], ids=["over SSM's bound", "shorter than the copy"])
def test_a_snapshot_build_that_could_not_end_in_its_max_hours_is_refused_before_anything_exists(
        aws, tmp_path, max_hours, message):
    dataset_in_s3(aws)
    with pytest.raises(InputError, match=message):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160],
                      max_hours=max_hours)
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_snapshot_needs_the_dataset_to_exist(aws, tmp_path):
    aws.make_bucket("datasets")
    with pytest.raises(InputError, match="dataset folder.s. not found: datasets/imagenet"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert aws_leftovers(aws, home=tmp_path) == {}


@pytest.mark.parametrize("bucket", [
    {"policy": None},
    # S3 lets the account list and read the bucket, but KMS refuses it the owner's AWS managed key
    {"policy": {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": ["arn:aws:s3:::theirs", "arn:aws:s3:::theirs/*"]}]}, "objects_encryption": "aws:kms"},
], ids=["no bucket policy", "objects under the owner's aws/s3 key"])
def test_a_snapshot_of_a_bucket_the_account_may_not_read_is_refused_before_anything_is_made(aws, tmp_path, bucket):
    aws.make_foreign_bucket("theirs", objects={"imagenet/train/cat/a.JPEG": "jpeg",
                                               "imagenet-sz/160/train/cat/a.JPEG": "jpeg"}, **bucket)
    with pytest.raises(InputError, match=r"s3://theirs/imagenet cannot be read .*Access Denied.*bucket policy"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://theirs/imagenet", "x", sizes=[160])
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_snapshot_build_stopped_before_its_snapshot_completes_leaves_no_snapshot(aws, tmp_path):
    """A snapshot is pending for hours after CreateSnapshot; a build that fails or is stopped meanwhile must leave
    no half-made snapshot, which the dataset's name would find beside the next build's. Every look at whether it
    has completed is refused here."""
    dataset_in_s3(aws)
    aws.set_snapshot_pending(3600)
    aws.add_fault("ec2", "DescribeSnapshots", "UnauthorizedOperation", status=403, match={"SnapshotId.1": "snap-.*"})
    with pytest.raises(WaiterError):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160],
                      poll_seconds=0.5)
    assert [s["SnapshotId"] for s in aws.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
            if s["Description"] == "x"] == []
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_snapshot_made_twice_by_a_retried_call_leaves_one_snapshot(aws, tmp_path):
    """CreateSnapshot takes no idempotency token: where EC2 made the snapshot and its answer was lost (a 500),
    botocore's retry makes a second, which would complete under the run's tag, past any teardown's reach (a completed
    one is the dataset's), and make the dataset's name ambiguous for every run."""
    dataset_in_s3(aws)
    aws.add_fault("ec2", "CreateSnapshot", "InternalError", status=500, times=1, carried_out=True, label="lost")
    snapshot_id = make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "twice", sizes=[160],
                                poll_seconds=0.5)
    assert [rule["fired"] for rule in aws.fault_counts("lost")] == [1], "the first answer was lost"
    assert [s["SnapshotId"] for s in aws.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
            if s["Description"] == "twice"] == [snapshot_id]
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_teardown_leaves_completed_snapshots_whatever_their_tags(aws, tmp_path):
    """Only a build's own snapshot that has not completed is the build run's: a completed one is the dataset's, even
    with the run's tag still on it, and one another service copied a run's tags onto (a backup) is not ours."""
    ec2, spec = aws.client("ec2"), cluster_spec("run-tagged-snapshots", 1)
    built = owned_encrypted_snapshot(aws, "built")["SnapshotId"]
    aws.set_snapshot_pending(3600)  # a backup still being made
    copied = owned_encrypted_snapshot(aws, "copied")["SnapshotId"]
    ec2.create_tags(Resources=[built, copied], Tags=tags.tag_list(spec.run_id, spec.expires_at))
    ec2.create_tags(Resources=[built], Tags=[{"Key": tags.DATASET_SOURCE, "Value": "s3://datasets/imagenet"}])
    assert AwsBackend(options(), home=tmp_path).teardown(spec.run_id) == []
    assert {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]} >= {built, copied}


def test_a_snapshot_builder_whose_disks_key_ebs_cannot_use_is_refused_before_anything_exists(aws, tmp_path):
    """The builder's volume and root disk take the account's default EBS key: one pending deletion would have EBS
    delete the volume after the builder's role and network were made."""
    dataset_in_s3(aws)
    customer_managed_key(aws, "PendingDeletion", ebs_default=True)
    with pytest.raises(InputError, match=r"^EBS cannot encrypt the disks \(the account's default key for EBS\) with "
                                         r"KMS key arn:aws:kms:\S+: the key is PendingDeletion"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_snapshot_builder_past_the_accounts_standard_vcpu_quota_is_refused_before_anything_exists(aws, tmp_path):
    """A new account's quota of on-demand Standard vCPUs may be under the builder's 16 (AWS's default is 5): EC2
    would refuse its launch after its volume, network and upload were made."""
    dataset_in_s3(aws)
    aws.set_quotas({"L-1216C47A": 8})
    with pytest.raises(InputError, match=r'^the snapshot builder \(c6i.4xlarge\) needs 16 vCPUs of the quota '
                                         r'"Running On-Demand Standard \(A, C, D, H, I, M, R, T, Z\) instances" '
                                         r"\(L-1216C47A\) in us-east-1, which is 8 for this account \(a new "
                                         r"account's is 5\): .* --quota-code L-1216C47A --desired-value 16`$"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert aws_leftovers(aws, home=tmp_path) == {}
    with pytest.raises(ClientError, match="VcpuLimitExceeded"):  # what EC2 would have answered the launch
        aws.client("ec2").run_instances(ImageId=UBUNTU_2204.image_id, InstanceType="c6i.4xlarge", MinCount=1,
                                        MaxCount=1)


def test_a_snapshot_builder_whose_role_may_not_be_passed_is_refused_before_its_volume_is_made(aws, tmp_path):
    """The builder's launch is dry-run naming its new instance profile, as a run's is, before its volume is paid
    for: credentials without iam:PassRole are refused with what to allow, and the wait for EC2 to know the new
    profile is the dry run's, not the launch's few retries. It is dry-run in the builder's own network, which
    needs no default VPC."""
    delete_default_vpc(aws)
    dataset_in_s3(aws)
    aws.deny_pass_role()
    aws.add_fault("ec2", "CreateVolume", "Unused", probability=0.0, label="volumes")  # counts the calls
    with pytest.raises(InputError, match=r"^these AWS credentials may not pass the machines' role imagenet18-snapshot-"
                                         r"\w+ to EC2 \(iam:PassRole\)"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert [rule["seen"] for rule in aws.fault_counts("volumes")] == [0], "no volume was made"
    assert aws_leftovers(aws, home=tmp_path) == {}


@pytest.mark.parametrize("given,message", [
    ({"ami": UBUNTU_2404.image_id}, r"^AMI ami-\w+ \(.*\) is Ubuntu 24.04: the machines' boot is made for Ubuntu "
                                    r"22.04"),
    ({"subnet_id": "subnet-0123456789abcdef0"}, r"^subnet subnet-0123456789abcdef0 not found"),
    ({"credentials_for_hours": 1}, r"^these AWS credentials expire at .* before the snapshot build \(at most 6 h\) "
                                   r"and its teardown would end .*: use credentials boto3 renews .*, or new ones that "
                                   r"last$"),
], ids=["ami-of-another-release", "missing-subnet", "credentials-it-would-outlast"])
def test_a_snapshot_builder_aws_would_refuse_is_refused_before_anything_exists(aws, tmp_path, monkeypatch, given,
                                                                               message):
    """As a run's pre-flight does: an AMI of another Ubuntu, a subnet that is not there, or credentials boto3 cannot
    renew that expire within the build's 6 hours were found only once the builder's role was made (its boot
    failing, its network refused, its teardown refused)."""
    dataset_in_s3(aws)
    if hours := given.pop("credentials_for_hours", None):
        monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
        expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
        monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
    aws.add_fault("iam", "CreateRole", "Unused", probability=0.0, label="roles")  # counts the calls
    with pytest.raises(InputError, match=message):
        make_snapshot(AwsBackend(options(**given), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert [rule["seen"] for rule in aws.fault_counts("roles")] == [0], "no role was made"
    assert aws_leftovers(aws, home=tmp_path) == {}


@pytest.mark.parametrize("url, name, folder, message", [
    ("s3://datasets/" + "i" * 250, "x", "imagenet",
     r"^the dataset's URL is 264 characters long: the snapshot's tags, which hold it, take at most 256$"),
    ("s3://datasets/imagenet", "n" * 249, "imagenet", r"^the snapshot's name is 249 characters long: .* at most 248$"),
    ("s3://datasets/imagenet", "x", "/".join(["f" * 99] * 3), r"^aws.dataset_folder is 299 characters long: .* "
                                                              r"at most 256$"),
], ids=["url", "name", "dataset-folder"])
def test_a_snapshot_whose_tags_ec2_would_refuse_is_refused_before_anything_exists(aws, tmp_path, url, name, folder,
                                                                                  message):
    """What the snapshot holds is in its tags (its name in its builder volume's), which EC2 refuses past 256
    characters: the snapshot is made last, hours into the copy."""
    s3 = aws.make_bucket("datasets")
    for prefix in (url.removeprefix("s3://datasets/"), url.removeprefix("s3://datasets/") + "-sz/160"):
        s3.put_object(Bucket="datasets", Key=f"{prefix}/train/n01440764/a.JPEG", Body=b"jpeg")
    aws.add_fault("iam", "CreateRole", "Unused", probability=0.0, label="roles")  # counts the calls
    with pytest.raises(InputError, match=message):
        make_snapshot(AwsBackend(options(dataset_folder=folder), home=tmp_path), url, name, sizes=[160],
                      poll_seconds=0.5)
    assert [rule["seen"] for rule in aws.fault_counts("roles")] == [0], "no role was made"
    assert aws_leftovers(aws, home=tmp_path) == {}


def test_a_snapshot_builder_whose_way_out_vpc_block_public_access_blocks_is_refused_before_anything_exists(
        aws, tmp_path):
    dataset_in_s3(aws)
    aws.block_public_access("block-bidirectional")
    with pytest.raises(InputError, match=r"^VPC Block Public Access is on in us-east-1 \(block-bidirectional\): it "
                                         r"blocks the run's own network's way out"):
        make_snapshot(AwsBackend(options(), home=tmp_path), "s3://datasets/imagenet", "x", sizes=[160])
    assert aws_leftovers(aws, home=tmp_path) == {}


MACHINE_S3_CHECKS = """
import boto3, botocore
from trainer import checkpoint
s3, bucket = boto3.client("s3"), "{bucket}"
def answer(call, **kwargs):
    try:
        call(Bucket=bucket, **kwargs)
        return "ok"
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
print("auto-resume finds", checkpoint.exists("s3://{bucket}/{folder}/checkpoints"))
print("head missing", answer(s3.head_object, Key="{folder}/checkpoints/checkpoint.pt"))
print("list own", answer(s3.list_objects_v2, Prefix="{folder}/"))
print("list other", answer(s3.list_objects_v2, Prefix="runs/other/"))
print("get other", answer(s3.get_object, Key="runs/other/result.txt"))
s3.put_object(Bucket=bucket, Key="{folder}/checkpoints/checkpoint.pt", Body=b"epoch 1")
print("auto-resume finds", checkpoint.exists("s3://{bucket}/{folder}/checkpoints"))
"""


def test_a_machine_reaches_s3_as_its_role_allows_and_finds_no_checkpoint_at_the_first_start(aws, tmp_path):
    """The machines' role may list the bucket only under the run's folder, so S3 answers a HEAD of a missing key
    with 403 (as AWS does); the trainer's auto-resume still finds no checkpoint at a first start, and finds one
    once it is there. The user's own keys see the missing key as 404."""
    s3 = aws.make_bucket(BUCKET)
    s3.put_object(Bucket=BUCKET, Key="runs/other/result.txt", Body=b"another run's")
    folder = "runs/test-run-role"
    printed = printed_by_run_machine(aws, MACHINE_S3_CHECKS.format(bucket=BUCKET, folder=folder), folder)
    assert printed == ["auto-resume finds False", "head missing 403", "list own ok", "list other AccessDenied",
                       "get other AccessDenied", "auto-resume finds True"]
    with pytest.raises(ClientError, match="404"):
        s3.head_object(Bucket=BUCKET, Key=f"{folder}/checkpoints/best.pt")


def test_a_machine_writes_and_reads_under_the_buckets_customer_managed_key_and_reads_a_dataset_under_another(aws):
    """A results bucket whose default encryption is a customer managed KMS key (a team's bucket, as its
    organization requires) has S3 use the key as the machine's role: an upload needs kms:GenerateDataKey, a
    multipart one and a download kms:Decrypt; the dataset the builder reads may be under another key."""
    s3, results_key = aws.client("s3"), customer_managed_key(aws)
    bucket_under_key(aws, BUCKET, results_key)
    bucket_under_key(aws, "datasets", customer_managed_key(aws))
    s3.put_object(Bucket="datasets", Key="imagenet/train/n01/a.JPEG", Body=b"jpeg")
    s3.put_object(Bucket="datasets", Key="imagenet-private/a.JPEG", Body=b"not the dataset")
    folder = "runs/test-run-role"
    script = f"""
import fsspec
fs = fsspec.filesystem("s3")
try:
    fs.cat("datasets/imagenet-private/a.JPEG")
except PermissionError:
    print("beside the dataset: refused")
with fs.open("{BUCKET}/{folder}/checkpoints/checkpoint.pt", "wb", block_size=5 << 20) as checkpoint:
    checkpoint.write(b"c" * (6 << 20))  # past the 5 MiB block: a multipart upload, its parts under the key
fs.pipe("{BUCKET}/{folder}/summary.json", b"{{}}")
print(len(fs.cat("{BUCKET}/{folder}/checkpoints/checkpoint.pt")), fs.cat("{BUCKET}/{folder}/summary.json"))
print(fs.cat("datasets/imagenet/train/n01/a.JPEG"))
"""
    assert printed_by_run_machine(aws, script, folder, readable=("s3://datasets/imagenet/",)) == [
        "beside the dataset: refused", f"{6 << 20} b'{{}}'", "b'jpeg'"]
    head = s3.head_object(Bucket=BUCKET, Key=f"{folder}/summary.json")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", results_key), "under the bucket's key"
    assert "-" in s3.head_object(Bucket=BUCKET, Key=f"{folder}/checkpoints/checkpoint.pt")["ETag"], \
        "a multipart upload's ETag"


def printed_by_run_machine(aws, script: str, folder: str, readable: tuple[str, ...] = ()) -> list[str]:
    """The lines a Python script printed on a machine given a run's role (its results under `folder` of BUCKET)."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    aws.set_profile_propagation(0)  # launched at once, not through the backend's dry run, which waits for it
    profile = ensure_instance_profile(Clients("us-east-1"), cluster_spec("run-role", 1), BUCKET, folder,
                                      "/imagenet18/run-role", readable)
    instance = ec2.run_instances(ImageId=AMI, InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
                                 IamInstanceProfile={"Name": profile})["Instances"][0]["InstanceId"]
    jobs.wait_for_agents(Clients("us-east-1"), [instance])
    command = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance], Parameters={"commands": [
        "cd /opt/imagenet18", f"/opt/imagenet18/.venv/bin/python - <<'EOF'\n{script}\nEOF"]})["Command"]["CommandId"]
    deadline = time.monotonic() + 120
    while aws.played()[0]["exit_code"] is None:
        assert time.monotonic() < deadline, "the command did not end"
        time.sleep(0.2)
    invocation = ssm.get_command_invocation(CommandId=command, InstanceId=instance)
    assert invocation["Status"] == "Success", invocation["StandardErrorContent"]
    return invocation["StandardOutputContent"].splitlines()
