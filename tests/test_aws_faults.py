"""AWS faults the simulator injects: capacity, throttling on a third of all calls, refused permissions, Elastic
IPs refused part-way, and two runs side by side."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from deployments.cli import _aws, parser
from flows.imagenet18 import imagenet18
from tasks.backends.aws import AwsBackend, AwsOptions, machines, tags
from tasks.backends.base import BackendError, InputError
from tests.leftovers import aws_leftovers
from tests.aws_runs import DATASET, cluster_spec, finished, no_capacity_in, options, run_zones


def no_capacity_for(aws, instance_type: str) -> None:
    aws.add_fault("ec2", "RunInstances", "InsufficientInstanceCapacity", match={"InstanceType": instance_type})


def running_types(aws, run_id: str) -> list[str]:
    backend = AwsBackend(options())
    return sorted(i["InstanceType"] for i in machines.instances(backend.clients, run_id, ["pending", "running"]))


def test_no_capacity_moves_every_machine_to_the_next_allowed_type(aws, snapshot, tmp_path):
    no_capacity_for(aws, "p4d.24xlarge")
    backend = AwsBackend(options(other_instance_types=("p5.48xlarge",)), home=tmp_path)
    spec = cluster_spec("run-capacity", 2)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert cluster.spec.instance_type == "p5.48xlarge" and cluster.gpus_per_machine == 8
    assert running_types(aws, "run-capacity") == ["p5.48xlarge", "p5.48xlarge"]
    backend.teardown("run-capacity")
    assert aws_leftovers(aws, "run-capacity") == {}


def test_machines_ec2_ends_as_they_start_for_capacity_move_the_run_to_the_next_allowed_type(aws, snapshot, tmp_path):
    """EC2 may accept a launch, then end its machines as they start for lack of capacity (their state reason
    Server.InsufficientInstanceCapacity): as for a launch it refused, the run moves on to the next allowed type,
    every machine of it (the one that started goes)."""
    aws.end_launches("p4d.24xlarge", 1)
    backend = AwsBackend(options(other_instance_types=("p5.48xlarge",)), home=tmp_path)
    spec = cluster_spec("run-ended", 2)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert cluster.spec.instance_type == "p5.48xlarge"
    assert running_types(aws, "run-ended") == ["p5.48xlarge", "p5.48xlarge"]
    backend.teardown("run-ended")
    assert aws_leftovers(aws, "run-ended") == {}


def test_machines_ec2_ends_as_they_start_for_another_reason_fail_the_provision_saying_why(aws, snapshot, tmp_path):
    aws.end_launches("p4d.24xlarge", 1, "Client.InternalError")
    backend = AwsBackend(options(other_instance_types=("p5.48xlarge",)), home=tmp_path)
    spec = cluster_spec("run-ended-otherwise", 2)
    with pytest.raises(BackendError, match=r"machine\(s\) i-\w+ of run run-ended-otherwise ended before they all "
                                           r"ran \(Client.InternalError: Client error on launch\); often the KMS"):
        backend.provision(spec, backend.replicate(spec, DATASET, 2))
    backend.teardown("run-ended-otherwise")
    assert aws_leftovers(aws, "run-ended-otherwise") == {}


def test_no_capacity_and_no_other_type_allowed_fails_cleanly(aws, snapshot, tmp_path):
    no_capacity_for(aws, "p4d.24xlarge")
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-no-capacity", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    with pytest.raises(BackendError, match="no capacity for p4d.24xlarge in us-east-1a"):
        backend.provision(spec, replicas)
    assert running_types(aws, "run-no-capacity") == [], "no machine is left running"
    backend.teardown("run-no-capacity")
    assert aws_leftovers(aws, "run-no-capacity") == {}


def test_elastic_ips_refused_part_way_fail_the_provision_and_teardown_releases_those_held(aws, snapshot, tmp_path):
    """Another run took the last addresses after the pre-flight: the provision fails with EC2's refusal (no retry
    makes addresses), and teardown takes the machines and the address already held."""
    aws.add_fault("ec2", "AllocateAddress", "AddressLimitExceeded", after=1,
                  message="The maximum number of addresses has been reached.")
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-no-addresses", 2)
    with pytest.raises(ClientError, match="AddressLimitExceeded") as refused:
        backend.provision(spec, backend.replicate(spec, DATASET, 2))
    assert not backend.retry_may_pass(refused.value)
    assert len(aws.client("ec2").describe_addresses(Filters=tags.run_filter("run-no-addresses"))["Addresses"]) == 1
    backend.teardown("run-no-addresses")
    assert aws_leftovers(aws, "run-no-addresses") == {}


@pytest.mark.slow
def test_a_cluster_is_made_runs_a_job_and_is_torn_down_with_a_third_of_all_calls_throttled(aws, snapshot, tmp_path,
                                                                                           caplog):
    """Each service's calls, SSM's too (the job's commands and its secrets); the whole flow under throttling, with
    training, is the chaos suite's."""
    for service, code in (("ec2", "RequestLimitExceeded"), ("efs", "ThrottlingException"),
                          ("iam", "Throttling"), ("s3", "SlowDown"), ("ssm", "ThrottlingException")):
        aws.add_fault(service, "*", code, probability=0.3, seed=18)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-throttled", 4, "g5.xlarge")
    backend.check(spec, DATASET)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 4))
    assert len(cluster.machines) == 4
    backend.launch(cluster, {i: [cluster.python, "-c", f"print('job {i}')"] for i in range(4)}, "job")
    status = finished(backend, cluster, "job")
    assert (status.succeeded, status.failed) == (4, {}), status
    assert backend.read_storage(cluster, "logs/job-3.log") == b"job 3\n"
    backend.teardown("run-throttled")
    counts = {rule["service"]: rule for rule in aws.fault_counts()}
    assert counts["ssm"]["fired"] > 0, "SSM was throttled too"
    assert sum(rule["fired"] for rule in counts.values()) > 0.15 * sum(rule["seen"] for rule in counts.values()) > 20, \
        "about a third of the calls failed (0.15: over 3 standard deviations below 0.3 at this count)"
    retried = [r for r in caplog.records if "answered RequestLimitExceeded" in r.getMessage()]
    assert retried and all("attempt" in r.getMessage() for r in retried), "each retry is logged"
    aws.clear_faults()
    assert aws_leftovers(aws, "run-throttled") == {}


def test_a_refused_role_leaves_no_instance_profile_behind(aws, tmp_path):
    """The machines' instance profile is made beside their role: when AWS refuses the role, the profile made
    meanwhile is the run's all the same, and its teardown removes it (as the world shows, not the backend)."""
    aws.add_fault("iam", "CreateRole", "AccessDenied")
    backend = AwsBackend(options(), home=tmp_path)
    with pytest.raises(ClientError, match="AccessDenied"):
        backend.prepare(cluster_spec("run-no-role", 2, "g5.xlarge"))
    aws.clear_faults()
    assert "instance profile" in aws_leftovers(aws, "run-no-role"), "made before the role was refused"
    backend.teardown("run-no-role")
    assert aws_leftovers(aws, "run-no-role", tmp_path) == {}


def test_a_role_and_profile_made_moments_ago_are_torn_down_though_iam_does_not_know_them_yet(aws, tmp_path):
    """A run stopped as it makes its identity (interrupted, or its pool's other call failed) is torn down at
    once: IAM lists the new role and profile, but answers NoSuchEntity to reading their tags and taking them
    apart, which teardown must not take for "already gone"."""
    aws.set_iam_propagation(4)
    spec = cluster_spec("run-young-role", 2, "g5.xlarge")
    iam_client = aws.client("iam")
    iam_client.create_role(RoleName="imagenet18-run-young-role", AssumeRolePolicyDocument="{}",
                           Tags=tags.tag_list(spec.run_id, spec.expires_at))
    iam_client.create_instance_profile(InstanceProfileName="imagenet18-run-young-role",
                                       Tags=tags.tag_list(spec.run_id, spec.expires_at))
    AwsBackend(options(), home=tmp_path).teardown(spec.run_id)
    aws.set_iam_propagation(0)  # the world as it is, to the check
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


def test_a_profile_given_its_role_moments_ago_is_torn_down_though_iam_reads_it_without(aws, tmp_path):
    """IAM may read a profile as it was before its role was added: teardown cannot take that role out, and AWS
    refuses to delete a profile holding one (DeleteConflict) until a read shows it."""
    aws.set_iam_propagation(2)
    spec = cluster_spec("run-role-just-added", 2, "g5.xlarge")
    name = f"imagenet18-{spec.run_id}"
    iam_client = aws.client("iam")
    iam_client.create_role(RoleName=name, AssumeRolePolicyDocument="{}",
                           Tags=tags.tag_list(spec.run_id, spec.expires_at))
    iam_client.create_instance_profile(InstanceProfileName=name, Tags=tags.tag_list(spec.run_id, spec.expires_at))
    time.sleep(2.1)  # both known to IAM by now
    iam_client.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    AwsBackend(options(), home=tmp_path).teardown(spec.run_id)
    aws.set_iam_propagation(0)  # the world as it is, to the check
    assert aws_leftovers(aws, spec.run_id, tmp_path) == {}


@pytest.mark.slow
@pytest.mark.parametrize("refuse,message", [
    (lambda aws: aws.deny_pass_role(), r"may not pass the machines' role imagenet18-\S+ to EC2 \(iam:PassRole\).* "
                                       r"AWS said: .*Encoded authorization failure message: injected-by-awssim"),
    (lambda aws: aws.add_fault("iam", "CreateRole", "AccessDenied", status=403, message="not this user, not today"),
     r"may not make the machines' role imagenet18-\S+ \(iam:CreateRole was refused\).* AWS said: .*not this user"),
], ids=["PassRole", "CreateRole"])
def test_a_refused_machine_identity_fails_the_run_before_any_replica_and_leaves_nothing(prefect_api, aws, snapshot,
                                                                                        refuse, message):
    """The pre-flight passes (its dry run cannot name the run's profile, not made yet); the flow's
    authorize-launch stage meets the refusal before a replica volume is paid for, and teardown removes the role.
    The error keeps AWS's own words: they name the policy that refused (EC2's encoded, for sts to decode)."""
    refuse(aws)
    aws.add_fault("ec2", "CreateVolume", "Unused", probability=0.0, label="volumes")  # counts, never fires
    state = imagenet18(machines=2, backend="aws", instance_type="g5.xlarge", dataset=DATASET, schedule="cpu-tiny",
                       epochs=1, max_hours=1.0, aws=options(), return_state=True)
    assert state.is_failed() and re.search(message, state.message), state.message
    assert [rule["seen"] for rule in aws.fault_counts("volumes")] == [0], "no replica volume was asked for"
    assert aws_leftovers(aws, str(state.state_details.flow_run_id)) == {}


@pytest.mark.slow
def test_two_runs_at_once_never_touch_each_other(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)

    def provision(run_id: str):
        spec = cluster_spec(run_id, 2)
        return backend.provision(spec, backend.replicate(spec, DATASET, 2))

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(provision, ["run-a", "run-b"])
    kept = aws_leftovers(aws, "run-b")
    backend.teardown("run-a")
    assert aws_leftovers(aws, "run-a", tmp_path) == {} and aws_leftovers(aws, "run-b") == kept
    assert backend.teardown("run-a") == [], "tearing down again is safe"
    backend.teardown("run-b")
    assert aws_leftovers(aws, "run-b") == {}


@pytest.mark.slow
def test_no_capacity_in_the_zone_for_any_type_moves_the_run_to_the_next_allowed_zone(aws, snapshot, tmp_path,
                                                                                       caplog):
    backend = AwsBackend(options(other_instance_types=("p5.48xlarge",), other_availability_zones=("us-east-1b",)),
                         home=tmp_path)
    spec = cluster_spec("run-moved", 2)
    backend.check(spec, DATASET)  # before the fault: EC2's dry run checks no capacity
    no_capacity_in(aws, "us-east-1a")
    replicated = backend.replicate(spec, DATASET, 2)
    cluster = backend.provision(spec, replicated)
    assert cluster.spec.instance_type == "p4d.24xlarge", "the asked type, in the next zone"
    assert run_zones(aws, "run-moved") == {"machines": ["us-east-1b"] * 2, "replicas": ["us-east-1b"] * 2}
    assert any("moving run run-moved to us-east-1b" in r.getMessage() for r in caplog.records), "the move is logged"
    assert backend.provision(spec, replicated).machines == cluster.machines, \
        "a restart passing the replicate stage's replicas finds the moved ones and creates nothing"
    backend.teardown("run-moved")
    assert aws_leftovers(aws, "run-moved") == {}


@pytest.mark.slow
def test_no_capacity_in_any_allowed_zone_fails_cleanly_naming_what_was_tried(aws, snapshot, tmp_path):
    for zone in ("us-east-1a", "us-east-1b"):
        no_capacity_in(aws, zone)
    backend = AwsBackend(options(other_instance_types=("p5.48xlarge",), other_availability_zones=("us-east-1b",)),
                         home=tmp_path)
    spec = cluster_spec("run-nowhere", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    tried = "p4d.24xlarge, p5.48xlarge in us-east-1a; p4d.24xlarge, p5.48xlarge in us-east-1b"
    with pytest.raises(BackendError, match=f"no capacity for {tried} now; .*aws.other_availability_zones"):
        backend.provision(spec, replicas)
    assert running_types(aws, "run-nowhere") == [], "no machine is left running"
    backend.teardown("run-nowhere")
    assert aws_leftovers(aws, "run-nowhere") == {}


@pytest.mark.parametrize("zones,subnet,message", [
    (("us-east-1x",), None, "unknown availability zone 'us-east-1x'"),
    (("us-east-1a",), None, "us-east-1a .in aws.other_availability_zones. is the run's own zone"),
    (("us-east-1e",), None, "p4d.24xlarge is not offered in us-east-1e .in aws.other_availability_zones."),
    (("us-east-1b",), "subnet-0123456789abcdef0", "cannot move to aws.other_availability_zones"),
])
def test_bad_other_zones_are_refused_before_anything_exists(aws, snapshot, tmp_path, zones, subnet, message):
    backend = AwsBackend(options(availability_zone="us-east-1a", other_availability_zones=zones, subnet_id=subnet),
                         home=tmp_path)
    with pytest.raises(InputError, match=message):
        backend.check(cluster_spec("run-bad-zones", 2), DATASET)
    assert aws_leftovers(aws, home=tmp_path) == {}
    assert not [i for r in aws.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]]


def test_the_cli_passes_other_zones_and_types_as_lists():
    args = parser().parse_args(["run", "--backend", "aws", "--other-zones", "us-east-1b,us-east-1c",
                                "--other-instance-types", "p5.48xlarge"])
    given = AwsOptions(**_aws(args))
    assert given.other_availability_zones == ("us-east-1b", "us-east-1c")
    assert given.other_instance_types == ("p5.48xlarge",)
