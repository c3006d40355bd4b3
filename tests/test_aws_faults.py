"""AWS faults the simulator injects: capacity, throttling on a third of all calls, and two runs side by side."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.backends.aws import AwsBackend, machines
from tasks.backends.base import BackendError
from tests.test_aws import DATASET, cluster_spec, options, tagged_leftovers


@pytest.fixture
def snapshot(aws, tiny_data) -> str:
    return aws.make_snapshot(tiny_data.parent, description=DATASET)


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
    assert tagged_leftovers(aws, "run-capacity") == {}


def test_no_capacity_and_no_other_type_allowed_fails_cleanly(aws, snapshot, tmp_path):
    no_capacity_for(aws, "p4d.24xlarge")
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-no-capacity", 2)
    replicas = backend.replicate(spec, DATASET, 2)
    with pytest.raises(BackendError, match="no capacity for p4d.24xlarge in us-east-1a"):
        backend.provision(spec, replicas)
    assert running_types(aws, "run-no-capacity") == [], "no machine is left running"
    backend.teardown("run-no-capacity")
    assert tagged_leftovers(aws, "run-no-capacity") == {}


def test_a_run_completes_with_a_third_of_all_calls_throttled(aws, snapshot, tmp_path, caplog):
    for service, code in (("ec2", "RequestLimitExceeded"), ("efs", "ThrottlingException"),
                          ("iam", "Throttling"), ("s3", "SlowDown")):
        aws.add_fault(service, "*", code, probability=0.3, seed=18)
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-throttled", 4)
    backend.check(spec, DATASET)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 4))
    assert len(cluster.machines) == 4
    backend.teardown("run-throttled")
    counts = aws.fault_counts()
    assert sum(rule["fired"] for rule in counts) > 0.15 * sum(rule["seen"] for rule in counts) > 20, \
        "about a third of the calls failed (0.15: over 3 standard deviations below 0.3 at this count)"
    retried = [r for r in caplog.records if "answered RequestLimitExceeded" in r.getMessage()]
    assert retried and all("attempt" in r.getMessage() for r in retried), "each retry is logged"
    aws.clear_faults()
    assert tagged_leftovers(aws, "run-throttled") == {}


def test_two_runs_at_once_never_touch_each_other(aws, snapshot, tmp_path):
    backend = AwsBackend(options(), home=tmp_path)

    def provision(run_id: str):
        spec = cluster_spec(run_id, 2)
        return backend.provision(spec, backend.replicate(spec, DATASET, 2))

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(provision, ["run-a", "run-b"])
    kept = {(r.kind, r.id) for r in backend.resources("run-b")}
    backend.teardown("run-a")
    assert backend.resources("run-a") == [] and {(r.kind, r.id) for r in backend.resources("run-b")} == kept
    assert backend.teardown("run-a") == [], "tearing down again is safe"
    backend.teardown("run-b")
    assert tagged_leftovers(aws, "run-b") == {}
