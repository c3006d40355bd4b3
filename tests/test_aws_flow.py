"""The whole flow with backend="aws" on the simulator: the machine player runs what SSM was sent (torchrun
and the trainer on this CPU, reading the replica's files and writing EFS and the s3:// run prefix)."""

import os
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowFilter, FlowFilterName
from prefect.settings import PREFECT_API_URL

from flows.cleanup import cleanup
from flows.imagenet18 import imagenet18
from tasks.backends.aws import AwsBackend, catalog
from tasks.parameters import RunParameters
from tasks.planning import plan_run
from tasks.reports import PLAN_KEY
from tests.leftovers import aws_leftovers
from tests.aws_runs import AMI, BUCKET, DATASET, dataset_in_s3, options
from tests.prefect_server import flow_runs_of
from tests.support import wait_for

# Each test here trains or runs a flow: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow

IMAGENET18 = str(Path(sys.executable).parent / "imagenet18")


def test_two_machine_aws_run_completes_end_to_end_and_leaves_nothing(prefect_api, aws, tiny_data, operator):
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    state = imagenet18(machines=2, backend="aws", instance_type="g5.xlarge", dataset=DATASET,
                       schedule="cpu-tiny", epochs=1, max_hours=1.0, aws=options(), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["machines"] == 2 and result["epochs"] == 1 and result["top1"] > 0
    assert result["storage"].startswith(f"s3://{BUCKET}/runs/")

    assert sorted(p["instance_id"] for p in aws.played()) == sorted(result["machine_ids"]), "one job per machine"
    assert not [p for p in aws.played() if p["cold_data"]], "training starts on replicas already initialized"
    fs = fsspec.filesystem("s3")
    storage = result["storage"].removeprefix("s3://")
    assert [fs.cat(f"{storage}/exit/train-{i}").strip() for i in (0, 1)] == [b"0", b"0"], "both nodes exited 0"
    for kept in ("summary.json", "metrics.jsonl", "logs/train-0.log", "logs/train-1.log", "heartbeats/node-1.json",
                 "checkpoints/checkpoint.pt", "curves.png"):
        assert fs.exists(f"{storage}/{kept}"), f"{kept} is kept in the results bucket"
    assert fs.glob(f"{storage}/events.out.tfevents.*"), "TensorBoard events are kept"

    run_id = str(state.state_details.flow_run_id)
    assert AwsBackend(options()).resources(run_id) == []
    assert aws_leftovers(aws, run_id) == {}


def _plan(prefect_api: Path, *args: str) -> subprocess.CompletedProcess:
    """`imagenet18 plan` of 16 machines on AWS, with `args`."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "IMAGENET18_HOME": str(prefect_api)}
    return subprocess.run([IMAGENET18, "plan", "--backend", "aws", "--machines", "16", "--ami", AMI, "--bucket", BUCKET,
                           *args], capture_output=True, text=True, env=env, timeout=300)


def test_plan_on_aws_prices_the_run_and_creates_nothing(prefect_api, aws, tiny_data):
    """The default type (8 x A100), priced; the seed's V100 type refused with the types that work."""
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    refused = _plan(prefect_api, "--instance-type", "p3.16xlarge")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: p3.16xlarge has V100 GPUs (compute capability 7.0)"), refused.stderr[-3000:]
    assert "choose one of p4d.24xlarge, p5.48xlarge" in refused.stderr
    result = _plan(prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    hourly = 16 * catalog.instance_type("p4d.24xlarge").on_demand_usd
    priced = re.search(r"(\S+): would cost \$([\d,.]+)/h, at most \$([\d,.]+); nothing was created", result.stdout)
    assert priced, result.stdout
    assert float(priced[2].replace(",", "")) > hourly, "machines, disks and EFS are all priced"
    plan = _plan_artifact(priced[1])
    assert "p4d.24xlarge (8 x A100 40 GB, EFA on all 4 network cards), on-demand" in plan
    assert "| public IPv4 address (an Elastic IP: the machine has an interface on each card) | 16 | $0.01 |" in plan
    assert re.search(r"Before the machines start: about \*\*[\d.]+ min\*\*, 16 dataset replica\(s\) fetching the 1 GiB "
                     r"snapshot at 300 MiB/s .*: \$\d+\.\d\d", plan), plan
    assert f"| 16 | ${catalog.instance_type('p4d.24xlarge').on_demand_usd:,.2f} |" in plan
    assert f"**${priced[2]}/h**" in plan and "reference time of 18.1 min" in plan, plan
    unmeasured = "compile: off (no measured compile gain on A100 40 GB GPUs; --compile forces it)"
    assert result.stdout.splitlines()[-1] == unmeasured and f"torch.{unmeasured}" in plan, result.stdout
    assert aws_leftovers(aws) == {}
    assert not [i for r in aws.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]]


def test_a_plan_over_its_budget_is_refused_before_a_flow_run_and_creates_nothing(prefect_api, aws, tiny_data):
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    cost = plan_run(RunParameters(backend="aws", machines=16, aws={"ami": AMI, "bucket": BUCKET}), "budget",
                    "budget").cost
    runs = flow_runs_of("imagenet18")
    below, above = f"{cost.total_usd - 0.01:.2f}", f"{cost.total_usd + 0.01:.2f}"
    refused = _plan(prefect_api, "--budget-usd", below)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        f"error: the plan costs up to ${cost.total_usd:,.2f} (2.0 h at ${cost.hourly_usd:,.2f}/h), over the budget "
        f"of ${float(below):,.2f}"), refused.stderr[-3000:]
    assert aws_leftovers(aws) == {}
    assert flow_runs_of("imagenet18") == runs, "refused by the preflight, before any flow run"
    within = _plan(prefect_api, "--budget-usd", above)
    assert within.returncode == 0 and f"at most ${cost.total_usd:,.2f}; nothing was created" in within.stdout, \
        within.stderr[-3000:]
    assert flow_runs_of("imagenet18") == runs + 1, "the plan's own flow run"


def _plan_artifact(run_name: str) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PLAN_KEY])))
    return next(a.data for a in artifacts if a.description.startswith(f"{run_name}:"))


def test_a_spot_interruption_without_restarts_fails_the_run_at_once_and_leaves_nothing(prefect_api, aws,
                                                                                       tiny_data):
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(imagenet18, machines=2, backend="aws", instance_type="g5.xlarge", spot=True,
                              dataset=DATASET, schedule="cpu-tiny", max_hours=1.0, restarts=0, aws=options(),
                              return_state=True)
        _interrupt_machine_1_after_an_epoch(aws)
        state = running.result(timeout=300)
    assert state.is_failed()
    assert re.search(r"training failed on machine\(s\) \{(0: -?\d+, )?1: -9\}: .*; machine 1: i-\w+ is "
                     r"(shutting-down|terminated) \(Server.SpotInstanceTermination: ", state.message), state.message
    run_id = str(state.state_details.flow_run_id)
    assert AwsBackend(options()).resources(run_id) == [] and aws_leftovers(aws, run_id) == {}


def test_a_spot_interruption_is_replaced_and_training_resumes_from_the_checkpoint(prefect_api, aws, tiny_data):
    """The replacement's first boot ends long after the other machine's job started its torchrun again, which
    waits for it at the rendezvous."""
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    aws.set_boot(8)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(imagenet18, machines=2, backend="aws", instance_type="g5.xlarge", spot=True,
                              dataset=DATASET, schedule="cpu-tiny", epochs=3, max_hours=1.0, aws=options(),
                              return_state=True)
        lost = _interrupt_machine_1_after_an_epoch(aws)
        state = running.result(timeout=600)
    assert state.is_completed(), state.message
    result = state.result()
    assert [r["lost"] for r in result["restarts"]] == [{"1": -9}]
    assert result["epochs"] == 3 and result["epochs_redone"] <= 1, "at most one epoch of work is lost"
    assert lost not in result["machine_ids"] and len(set(result["machine_ids"])) == 2, "machine 1 was replaced"
    # The last job's command may still be exiting when the teardown ends its machines: its exit code, the last
    # thing it uploads, is what the flow waited for.
    cut = [(p["instance_id"], "train.r1" in _script(aws, p)) for p in aws.played() if p["cut_short"]]
    assert [machine for machine, last_job in cut if not last_job] == [lost], \
        f"the stopped job's every process (machine 0's mirror too) ended before the teardown: {cut}"
    run_id = str(state.state_details.flow_run_id)
    assert AwsBackend(options()).resources(run_id) == [] and aws_leftovers(aws, run_id) == {}


@pytest.mark.parametrize("fault,replaced", [
    (lambda aws, machine: aws.client("ec2").reboot_instances(InstanceIds=[machine]), False),
    (lambda aws, machine: aws.impair(machine, "system", ago_s=5 * 60), True),
], ids=["rebooted", "host-failed"])
def test_a_machine_rebooted_or_failed_mid_training_resumes_from_the_checkpoint(prefect_api, aws, tiny_data, fault,
                                                                               replaced):
    """EC2's maintenance or its automatic recovery reboots machine 1: its job ends with it (the agent says Failed,
    code 1), and it comes back with its disks, so training resumes on the same two machines. Or its host fails:
    EC2 describes it running and its SSM command never ends; its system status check, failed for 5 minutes, makes
    it a lost machine, which the restart stops nothing on (it takes no command) and replaces, with its replica."""
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(imagenet18, machines=2, backend="aws", instance_type="g5.xlarge", dataset=DATASET,
                              schedule="cpu-tiny", epochs=3, max_hours=1.0, aws=options(), return_state=True)
        machine = _machine_1_after_an_epoch(aws)
        fault(aws, machine)
        state = running.result(timeout=600)
    assert state.is_completed(), state.message
    result = state.result()
    assert [r["lost"] for r in result["restarts"]] == [{"1": -9}]
    assert result["epochs"] == 3 and result["epochs_redone"] <= 1, "at most one epoch of work is lost"
    assert (machine not in result["machine_ids"]) == replaced and len(set(result["machine_ids"])) == 2
    run_id = str(state.state_details.flow_run_id)
    assert AwsBackend(options()).resources(run_id) == [] and aws_leftovers(aws, run_id) == {}


def _interrupt_machine_1_after_an_epoch(aws) -> str:
    lost = _machine_1_after_an_epoch(aws)
    aws.interrupt(lost)
    return lost


def _machine_1_after_an_epoch(aws) -> str:
    """Waits until the run's first epoch has ended on the machines' EFS; machine 1's instance id."""
    deadline = time.monotonic() + 300
    while not any('"type": "epoch"' in path.read_text() for path in aws.root.glob("efs/*/runs/*/metrics.jsonl")):
        assert time.monotonic() < deadline, "no epoch ended"
        time.sleep(0.5)
    [machine] = [p["instance_id"] for p in aws.played() if "--node_rank=1" in _script(aws, p)]
    return machine


def _script(aws, played: dict) -> str:
    return (aws.root / "commands" / played["command_id"] / played["instance_id"] / "script.sh").read_text()


def test_a_snapshot_build_killed_midway_is_swept_by_the_cleanup_once_its_flow_run_is_over(prefect_api, aws,
                                                                                          tmp_path):
    """What a build makes carries its flow run's id, as a training run's does: once the build's process dies with
    no word (SIGKILL, a lost host), the cleanup marks its run Crashed and deletes what it left, rather than leaving
    the builder's role, network and volume until their expiry, hours later."""
    dataset_in_s3(aws)
    aws.add_fault("s3", "PutObject", "AccessDenied", status=403, match={"Key": r"snapshots/.*/code/.*"}, hold_s=300)
    script = ("import json, sys; from flows.snapshot import snapshot; "
              "snapshot(source='s3://datasets/imagenet', name='killed', sizes=[160], aws=json.loads(sys.argv[1]))")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    with open(tmp_path / "flow.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", script, options().model_dump_json()], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: any(rule["fired"] for rule in aws.fault_counts()) or process.poll() is not None, 300,
                 "the build to upload the project, its volume made")
        assert process.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
        [run_id] = {str(run.id) for run in _runs_of("imagenet18-snapshot")}
        process.kill()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        aws.clear_faults()
    left = aws_leftovers(aws, run_id, prefect_api)
    assert {"volume", "vpc", "role"} <= set(left), f"the killed build's resources carry its run id: {left}"
    cleanup(stale_after_minutes=0)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(uuid.UUID(run_id)).state.is_crashed()
    assert aws_leftovers(aws, run_id, prefect_api) == {}


def _runs_of(flow_name: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
