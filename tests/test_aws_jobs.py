"""Jobs on AWS machines through SSM, run as a real machine runs them: the simulator's agents register a while after
their machines run, and run each script from a file with `sh` (dash); the job's status reads SSM's account of a
command that ended before its script could upload an exit code."""

import re

import pytest

from tasks import stages
from tasks.backends.aws import AwsBackend, jobs, machines
from tasks.backends.base import BackendError
from tests.awssim.images import UBUNTU_2204, UNDESCRIBED
from tests.leftovers import aws_leftovers
from tests.aws_runs import DATASET, cluster_spec, finished, options
from tests.support import wait_for

AGENT_DELAY_S = 8.0  # longer than provisioning takes here, so a job sent at once would be refused


def provisioned(aws, tmp_path, run_id: str, machines: int, **changes):
    backend = AwsBackend(options(**changes), home=tmp_path)
    spec = cluster_spec(run_id, machines, "g5.xlarge")
    return backend, backend.provision(spec, backend.replicate(spec, DATASET, machines))


@pytest.mark.slow
def test_a_job_waits_for_the_agents_runs_under_sh_and_reports_each_exit_code(aws, snapshot, tmp_path):
    aws.set_agent_delay(AGENT_DELAY_S)
    backend, cluster = provisioned(aws, tmp_path, "run-jobs", 2)
    python = cluster.python
    backend.launch(cluster, {0: [python, "-c", "print('trained')"], 1: [python, "-c", "raise SystemExit(3)"]}, "job")
    status = finished(backend, cluster, "job")
    assert (status.succeeded, status.failed, status.causes) == (1, {1: 3}, {}), \
        "both scripts ran to their end and uploaded their exit codes"
    assert backend.read_storage(cluster, "logs/job-0.log") == b"trained\n"
    backend.teardown("run-jobs")
    assert aws_leftovers(aws, "run-jobs") == {}


@pytest.mark.slow
def test_agents_whose_first_ping_found_no_way_out_are_restarted_once_their_machines_have_one(aws, snapshot,
                                                                                             tmp_path):
    """A p4d machine reaches out through an Elastic IP, which EC2 puts on a machine only once it runs: its SSM
    agent's first ping, as it boots, may find no way out, and the agent then hibernates for 5 minutes (longer after
    a failed ping), with the machines paid for meanwhile. Their boot restarts it once they have a way out."""
    aws.set_agent_delay(0)  # the first ping as the machine runs, before any address is on it
    backend = AwsBackend(options(), home=tmp_path)
    backend.agent_timeout_s = 60.0  # well inside the 5 minutes
    spec = cluster_spec("run-hibernating", 2, "p4d.24xlarge")
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 2))
    backend.launch(cluster, {i: [cluster.python, "-c", "pass"] for i in range(2)}, "job")
    assert finished(backend, cluster, "job").succeeded == 2
    agents = {m["instance_id"]: (m["agent_hibernated"], m["agent_restarted"]) for m in aws.machines()}
    assert [agents[m.id] for m in cluster.machines] == [(True, True)] * 2
    backend.teardown("run-hibernating")
    assert aws_leftovers(aws, "run-hibernating") == {}


PRINT_NETWORK = ("import os; print('library path:', os.environ.get('LD_LIBRARY_PATH', '')); "
                 "print('libfabric provider:', os.environ.get('FI_PROVIDER'))")


@pytest.mark.parametrize("instance_type,ami,lines", [
    ("p4d.24xlarge", UBUNTU_2204.image_id, [
        "network: 4 EFA device(s), NCCL's plugin from {amazon}/ofi-nccl/lib/x86_64-linux-gnu",
        "library path: {amazon}/efa/lib:{amazon}/ofi-nccl/lib/x86_64-linux-gnu", "libfabric provider: efa"]),
    ("p4d.24xlarge", UNDESCRIBED, [
        "warning: this machine has EFA devices but no AWS OFI NCCL plugin (looked under {amazon} and "
        "/opt/aws-ofi-nccl): NCCL reaches the other machines over TCP, several times slower",
        "library path: ", "libfabric provider: None"]),
    ("g5.xlarge", UBUNTU_2204.image_id, ["library path: ", "libfabric provider: None"]),
])
def test_a_job_reaches_the_machines_efa_devices_through_the_images_nccl_plugin(aws, snapshot, tmp_path,
                                                                              instance_type, ami, lines):
    """On the Deep Learning AMI the OFI plugin is off the library path, where NCCL would not find it and would
    use TCP: the job puts it there on a machine with EFA devices, warns where there is none, and leaves a
    machine without EFA as it is."""
    backend = AwsBackend(options(ami=ami), home=tmp_path)
    spec = cluster_spec("run-efa-job", 1, instance_type)
    cluster = backend.provision(spec, backend.replicate(spec, DATASET, 1))
    backend.launch(cluster, {0: [cluster.python, "-c", PRINT_NETWORK]}, "job")
    assert finished(backend, cluster, "job").succeeded == 1
    amazon = aws.root / "instances" / cluster.machines[0].id / "opt-amazon"
    assert backend.read_storage(cluster, "logs/job-0.log").decode().splitlines() == [
        line.format(amazon=amazon) for line in lines]
    backend.teardown("run-efa-job")


READ_PARAMETERS = """
import boto3
ssm = boto3.client("ssm")
own, other = "/imagenet18/run-own/WANDB_API_KEY", "/imagenet18/run-other/WANDB_API_KEY"
def show(label, read):
    try:
        print(label, read())
    except Exception as exc:
        print(label, exc.response["Error"]["Code"])
def values(answer):
    return [p["Value"] for p in answer["Parameters"]]
for name in (own, other, "/team/database"):
    show(name, lambda: ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
show("get_parameters own", lambda: values(ssm.get_parameters(Names=[own], WithDecryption=True)))
show("get_parameters other", lambda: values(ssm.get_parameters(Names=[other], WithDecryption=True)))
show("get_parameters_by_path other", lambda: values(ssm.get_parameters_by_path(Path="/imagenet18/run-other")))
"""


def test_a_machine_reads_its_own_runs_parameters_and_no_others(aws, snapshot, tmp_path):
    """The machines' role has AmazonSSMManagedInstanceCore, which allows ssm:GetParameter and ssm:GetParameters on
    every parameter of the account: another run's wandb key, a team's database password. The run's own policy
    denies all but its own, however asked for."""
    ssm = aws.client("ssm")
    for name, value in (("/imagenet18/run-own/WANDB_API_KEY", "mine"), ("/imagenet18/run-other/WANDB_API_KEY",
                                                                          "theirs"), ("/team/database", "hunter2")):
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    backend, cluster = provisioned(aws, tmp_path, "run-own", 1)
    backend.launch(cluster, {0: [cluster.python, "-c", READ_PARAMETERS]}, "job")
    assert finished(backend, cluster, "job").succeeded == 1
    assert backend.read_storage(cluster, "logs/job-0.log").decode().splitlines() == [
        "/imagenet18/run-own/WANDB_API_KEY mine", "/imagenet18/run-other/WANDB_API_KEY AccessDeniedException",
        "/team/database AccessDeniedException", "get_parameters own ['mine']",
        "get_parameters other AccessDeniedException", "get_parameters_by_path other AccessDeniedException"]
    backend.teardown("run-own")


def test_a_script_that_fails_before_its_exit_code_fails_its_machine_with_the_cause(aws, snapshot, tmp_path):
    backend, cluster = provisioned(aws, tmp_path, "run-broken", 1)
    machine = cluster.machines[0]
    jobs.wait_for_agents(backend.clients, [machine.id])
    broken = "echo 'job.sh: 4: set: Illegal option -o pipefail' >&2\nexit 2"  # as dash fails a bash script
    jobs.send(backend.clients, machine.id, broken, jobs.job_comment("train", 0), 1.0)
    status = finished(backend, cluster, "train", timeout_s=60)
    assert status.failed == {0: 2}
    assert status.causes[0] == (f"its SSM command on {machine.id} ended Failed (code 2): job.sh: 4: set: Illegal "
                                "option -o pipefail")
    assert stages._failure(backend, cluster, "train", status, [], 10.0).startswith(status.causes[0]), \
        "the train stage fails with SSM's account when the machine's log has none"
    backend.teardown("run-broken")


def test_a_machine_interrupted_as_a_poll_reads_it_is_lost_with_ec2s_reason(aws, snapshot, tmp_path):
    """A spot interruption between the poll's look at the machines and its read of their commands: the command
    ended with its machine (Failed, 137, as a shell reports a kill), yet the machine is gone, so it is lost, with
    EC2's reason, as one gone before the poll is. The interruption is timed by botocore's own after-call event."""
    backend, cluster = provisioned(aws, tmp_path, "run-interrupted", 1)
    machine = cluster.machines[0]
    backend.launch(cluster, {0: [cluster.python, "-c", "import time; time.sleep(600)"]}, "train")
    assert backend.status(cluster, "train").running == 1
    interrupted = []

    def interrupt_once(**_) -> None:
        if not interrupted:
            interrupted.append(machine.id)
            aws.interrupt(machine.id)

    backend.clients.ec2.meta.events.register("after-call.ec2.DescribeInstances", interrupt_once)
    status = backend.status(cluster, "train")
    assert interrupted and [p["exit_code"] for p in aws.played()] == [137], "its command ended as it was polled"
    assert status.failed == {0: jobs.LOST}, status
    assert re.fullmatch(rf"{machine.id} is (shutting-down|terminated) \(Server.SpotInstanceTermination: Spot "
                        r"instance termination\)", status.causes[0]), status.causes
    backend.teardown("run-interrupted")


def test_a_machine_whose_boot_failed_fails_its_job_with_the_cause(aws, snapshot, tmp_path):
    """A machine that cannot reach the deadsnakes PPA's keyserver has no Python 3.11: user-data stops before the
    project's venv exists, as it would on a real machine; the job says so with the end of the machine's boot log,
    which nothing else reads."""
    aws.make_unreachable("keyserver.ubuntu.com")
    backend, cluster = provisioned(aws, tmp_path, "run-no-python", 1)
    machine = cluster.machines[0]
    [booted] = [m for m in aws.machines() if m["instance_id"] == machine.id]
    unreachable = "curl: (28) Failed to connect to keyserver.ubuntu.com port 443 after 30001 ms: Timeout was reached"
    assert booted["user_data_check"] == f"boot failed: {unreachable}"
    backend.launch(cluster, {0: [cluster.python, "-c", "print('trained')"]}, "train")
    status = finished(backend, cluster, "train", timeout_s=60)
    assert status.failed == {0: 3}, status
    assert status.causes[0] == (f"its SSM command on {machine.id} ended Failed (code 3): {unreachable} / error: "
                                "this machine's first boot (its user data) failed; above, the end of its cloud-init "
                                "output log")
    backend.teardown("run-no-python")


def test_machines_whose_agents_never_come_online_fail_the_launch_clearly(aws, snapshot, tmp_path):
    aws.set_agent_delay(3600)
    backend, cluster = provisioned(aws, tmp_path, "run-no-agent", 1)
    backend.agent_timeout_s = 3.0
    with pytest.raises(BackendError, match=rf"the SSM agent of machine\(s\) {cluster.machines[0].id} \(not "
                                           r"registered\) was not online 3 s after they ran"):
        backend.launch(cluster, {0: [cluster.python, "-c", "pass"]}, "job")
    assert aws.played() == [], "nothing was sent"
    backend.teardown("run-no-agent")


def test_a_poll_reads_ssm_once_however_many_machines_and_a_throttled_poll_is_asked_again(aws, snapshot, tmp_path):
    """SSM throttles its reads per account: a poll that asked once per machine every 2 s would be throttled with a
    handful of machines. The commands are found through AWS alone, so a new process following the run finds them."""
    backend, cluster = provisioned(aws, tmp_path, "run-poll", 3)
    ids = [m.id for m in cluster.machines]
    jobs.wait_for_agents(backend.clients, ids)
    for machine in cluster.machines:
        jobs.send(backend.clients, machine.id, "sleep 600", jobs.job_comment("train", machine.index), 1.0)
    aws.add_fault("ssm", "*", "ThrottlingException", probability=0.0, label="counted")  # counts, never fires
    follower = AwsBackend(options(), home=tmp_path)
    assert follower.status(cluster, "train").running == 3
    assert [(r["seen"], r["fired"]) for r in aws.fault_counts("counted")] == [(1, 0)], "one SSM call for 3 machines"

    aws.add_fault("ssm", "ListCommands", "ThrottlingException", times=1)
    assert follower.status(cluster, "train").running == 3, "a throttled poll does not fail the run"
    aws.interrupt(ids[2])
    for machine in cluster.machines[:2]:
        jobs.send(backend.clients, machine.id, "exit 4", jobs.job_comment("train", machine.index), 1.0)
    status = finished(backend, cluster, "train", timeout_s=60)
    assert status.failed == {0: 4, 1: 4, 2: jobs.LOST}, "the latest command of each machine counts"
    backend.teardown("run-poll")


def test_a_job_whose_sendcommand_answer_was_lost_runs_once(aws, snapshot, tmp_path):
    """SendCommand takes no idempotency token: when SSM started the command and its answer was lost (a 5xx, a
    dropped connection), sending it again would start a second job beside the first. The send finds the one SSM
    has; one SSM refused (throttled) is simply sent again."""
    backend, cluster = provisioned(aws, tmp_path, "run-once", 2)
    jobs.wait_for_agents(backend.clients, [m.id for m in cluster.machines])
    aws.add_fault("ssm", "SendCommand", "InternalServerError", status=500, times=1, carried_out=True, label="sends")
    aws.add_fault("ssm", "SendCommand", "ThrottlingException", status=400, times=1, label="sends")
    backend.launch(cluster, {m.index: [cluster.python, "-c", "print('trained')"] for m in cluster.machines}, "job")
    assert [r["fired"] for r in aws.fault_counts("sends")] == [1, 1]
    status = finished(backend, cluster, "job")
    assert status.succeeded == 2
    assert sorted(p["instance_id"] for p in aws.played()) == sorted(m.id for m in cluster.machines), \
        "one command on each machine"
    backend.teardown("run-once")


LIST_DATA = "import os, sys; print(sorted(os.listdir(sys.argv[1])))"


def test_a_job_a_reboot_ends_is_lost_and_the_machine_runs_the_next_with_its_disks_and_its_deadline(aws, snapshot,
                                                                                                    tmp_path):
    """EC2 reboots a machine (its maintenance, its automatic recovery): the user data, which mounted the disks and
    armed the run's max_hours shutdown, does not run again. Its disks come back through /etc/fstab and its shutdown
    through cloud-init's per-boot script, for the same deadline; the job the reboot ended is lost, which a restart
    mends, not failed as the agent's code 1 would have it."""
    backend, cluster = provisioned(aws, tmp_path, "run-reboot", 1)
    [machine] = cluster.machines
    backend.launch(cluster, {0: [cluster.python, "-c", "import time; time.sleep(600)"]}, "job")
    wait_for(lambda: any(p["instance_id"] == machine.id for p in aws.played()), 60, "the job to start")
    [before] = [m["shutdown_in_s"] for m in aws.machines() if m["instance_id"] == machine.id]
    aws.client("ec2").reboot_instances(InstanceIds=[machine.id])
    status = finished(backend, cluster, "job")
    assert status.failed == {0: jobs.LOST} and stages._lost(status.failed[0]), status
    assert status.causes[0].startswith(f"its SSM command on {machine.id} ended Failed (code 1): document process "
                                       "failed unexpectedly"), status.causes
    backend.launch(cluster, {0: [cluster.python, "-c", LIST_DATA, machine.data_root]}, "after")
    status = finished(backend, cluster, "after")
    assert (status.succeeded, status.causes) == (1, {}), status
    assert backend.read_storage(cluster, "logs/after-0.log").decode().strip() != "[]", "the dataset is mounted"
    [after] = [(m["boots"], m["shutdown_in_s"]) for m in aws.machines() if m["instance_id"] == machine.id]
    assert after[0] == 2 and after[1] is not None and 0 < before - after[1] < 120, \
        f"the shutdown is armed again for its first deadline: {before} s before, {after[1]} s after"
    backend.teardown("run-reboot")
    assert aws_leftovers(aws, "run-reboot") == {}


def test_a_job_on_a_machine_whose_reboot_did_not_mount_its_disks_fails_saying_so(aws, snapshot, tmp_path,
                                                                                 monkeypatch):
    """A disk its first boot mounted that a later boot does not (here: mounted without an /etc/fstab entry, as
    user-data did before): the job would read an empty folder of the root disk, and write its run there."""
    shipped = machines.user_data

    def efs_mounted_by_hand(*args) -> str:
        text = shipped(*args)
        entry = re.search(r"^echo '(\S+) /mnt/efs nfs4 .*>>/etc/fstab\n", text, re.M)
        return text.replace(entry[0], "").replace("mount /mnt/efs &&", f"mount -t nfs4 {entry[1]} /mnt/efs &&")

    monkeypatch.setattr(machines, "user_data", efs_mounted_by_hand)
    backend, cluster = provisioned(aws, tmp_path, "run-unmounted", 1)
    [machine] = cluster.machines
    jobs.wait_for_agents(backend.clients, [machine.id])
    aws.client("ec2").reboot_instances(InstanceIds=[machine.id])
    wait_for(lambda: [m["boots"] for m in aws.machines() if m["instance_id"] == machine.id] == [2], 30, "the reboot")
    backend.launch(cluster, {0: [cluster.python, "-c", LIST_DATA, machine.data_root]}, "after")
    status = finished(backend, cluster, "after")
    assert status.failed == {0: 3}
    # /mnt/efs as the simulator plays it, a local folder
    assert re.fullmatch(f"its SSM command on {machine.id} ended Failed \\(code 3\\): error: \\S*mnt.efs is not "
                        r"mounted on this machine: a boot after its first \(a reboot\) did not mount it again",
                        status.causes[0]), status.causes
    backend.teardown("run-unmounted")


def test_a_machine_whose_status_check_fails_mid_job_is_lost_and_the_next_provision_replaces_it(aws, snapshot,
                                                                                               tmp_path):
    """Its hardware fails (EC2's system status check): EC2 still describes it running, and its SSM command stays in
    progress for ever; only its status checks say it is gone. Once the check has failed for 5 minutes (one that
    fails a while, as a reboot's, is not a loss) the job counts it lost, with EC2's account (a restart mends that),
    and the next provision, a restart's, replaces it, with its replica, rather than wait for its agent."""
    backend = AwsBackend(options(), home=tmp_path)
    spec = cluster_spec("run-impaired", 2, "g5.xlarge")
    replicas = backend.replicate(spec, DATASET, 2)
    cluster = backend.provision(spec, replicas)
    broken = cluster.machines[1]
    backend.launch(cluster, {i: [cluster.python, "-c", "import time; time.sleep(600)"] for i in range(2)}, "job")
    wait_for(lambda: len(aws.played()) == 2, 60, "the job to start")
    aws.impair(broken.id, "system")
    assert backend.status(cluster, "job").running == 2, "a check failed a moment ago"
    aws.impair(broken.id, "system", ago_s=5 * 60)
    status = wait_for(lambda: (found := backend.status(cluster, "job")).failed and found, 60, "the machine lost")
    assert (status.running, status.failed) == (1, {1: jobs.LOST}) and stages._lost(status.failed[1])
    assert status.causes == {1: f"{broken.id} failed EC2's system status check (the hardware, network or power "
                                "under it)"}
    backend.stop(cluster, "job")
    again = backend.provision(spec, replicas)
    assert again.machines[0].id == cluster.machines[0].id and again.machines[1].id != broken.id
    backend.launch(again, {m.index: [again.python, "-c", LIST_DATA, m.data_root] for m in again.machines}, "after")
    assert finished(backend, again, "after").succeeded == 2
    backend.teardown("run-impaired")
    assert aws_leftovers(aws, "run-impaired") == {}
