"""Jobs on the machines: started through SSM RunCommand, followed through the run's s3:// prefix (machine 0
mirrors the EFS run folder there; every machine uploads its own log and exit code when its command ends).

SSM throttles its reads per account (ThrottlingException), so a poll reads the run's commands with one listing,
however many machines: never one call per machine every few seconds."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from importlib import resources
from string import Template

from tasks.backends.aws import health
from tasks.backends.aws import machines as machine_ops
from tasks.backends.aws import once
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.waiting import until
from tasks.backends.base import BackendError, Cluster, JobStatus, Machine

log = logging.getLogger(__name__)

MIRROR_SECONDS = 10
FORWARDED_SETTINGS = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY")  # not secrets: they may be in the script
LOST = -signal.SIGKILL  # the machine went away without an exit code (spot interruption, termination)
# A command the agent ended at its executionTimeout (the run's max_hours) ran out of time: not a lost machine, which
# a restart mends, since a restart would run out of it again. timeout(1)'s exit code.
EXECUTION_TIMED_OUT = 124
# What SSM's agent reports (Failed, code 1, in its step's Output alone) for a command whose process it lost
# (amazon-ssm-agent's generateUnexpectedFailResult, once it runs again): the machine rebooted under it (EC2's
# maintenance, its automatic recovery), or the process was killed. Not the job's own failure: the node was lost,
# which a restart mends.
PROCESS_LOST = "document process failed unexpectedly"
# AWS-RunShellScript's executionTimeout parameter allows at most 172800 s; SendCommand refuses a larger one.
MAX_COMMAND_HOURS = 48
# SendCommand's TimeoutSeconds: a command that has not started on its machine by then never runs, and ends as
# "Delivery Timed Out" (an agent that went away), so a node that never starts is noticed in minutes.
DELIVERY_TIMEOUT_S = 600
AGENT_TIMEOUT_S = 600.0  # from a machine running to its SSM agent online; a few minutes on the Deep Learning AMI
ALL_STATES = [*machine_ops.LIVE_STATES, "terminated"]
STILL_RUNNING = ("Pending", "InProgress", "Delayed", "Cancelling")
STDERR_TAIL_LINES = 3
# ListCommands' InvokedAfter compares with SSM's clock; this much earlier covers a skewed local one.
CLOCK_MARGIN = timedelta(minutes=5)
# SSM's answers that a poll shrugs off: the next poll, seconds later, reads the commands again.
POLL_AGAIN = ("ThrottlingException", "InternalServerError")


def split_url(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.rstrip("/")


def launch_script(cluster: Cluster, index: int, command: list[str], name: str, region: str,
                  secret_parameters: dict[str, str]) -> str:
    settings = [f"export {name_}={shlex.quote(os.environ[name_])}" for name_ in FORWARDED_SETTINGS
                if os.environ.get(name_)]
    # Read on the machine, so no secret is in the command that SSM records; one that cannot be read is said in
    # the job's log, and the trainer runs without it (wandb is optional).
    secrets = "\n".join(settings + [
        f'if value="$($py -m tasks.backends.aws.parameter {shlex.quote(parameter)} 2>>"$log")"; then '
        f'export {variable}="$value"; else echo "warning: could not read {variable} from SSM parameter '
        f'{parameter} (above), so the trainer runs without it" >>"$log"; fi'
        for variable, parameter in secret_parameters.items()])
    # Until every machine's exit code is there; a job stopped for a restart never has the lost machine's, so `stop`
    # ends the mirror too (its pid beside the trainer's), else it copied on, beside the next job's, until max_hours.
    follow = (f'$py -m trainer mirror "$run" {shlex.quote(cluster.storage)} --every {MIRROR_SECONDS} '
              f'--until-exits {len(cluster.machines)} --exit-pattern "{name}-*" >"$run/logs/mirror.log" 2>&1 &\n'
              f'echo $! >"$run/pids/{name}-{index}-mirror"' if index == 0 else "")
    paths = (next(m for m in cluster.machines if m.index == index).data_root, cluster.node_storage)
    mounts = [mount for mount in (machine_ops.DATA_MOUNT, machine_ops.EFS_MOUNT)
              if any(path == mount or path.startswith(f"{mount}/") for path in paths)]
    template = Template(resources.files("tasks.backends.aws").joinpath("launch.sh").read_text())
    return template.substitute(job=name, index=index, run_id=cluster.spec.run_id, region=region,
                               mounts=" ".join(mounts),
                               node_storage=shlex.quote(cluster.node_storage), storage=cluster.storage,
                               python=shlex.quote(cluster.python),
                               secrets=secrets, follow=follow, command=shlex.join(command))


def stop_script(cluster: Cluster, index: int, name: str) -> str:
    template = Template(resources.files("tasks.backends.aws").joinpath("stop.sh").read_text())
    return template.substitute(job=name, index=index, run_id=cluster.spec.run_id,
                               node_storage=shlex.quote(cluster.node_storage))


def wait_for_commands(clients: Clients, sent: dict[str, str], since: datetime, timeout: float = 120.0) -> None:
    """Until each (instance -> command id), sent after `since`, has ended on its machine, however it ended."""
    ssm = clients.client("ssm")

    def ended() -> bool:
        statuses = {c["CommandId"]: c["Status"] for c in commands_since(ssm, since)}
        return all(statuses.get(command_id) not in (None, *STILL_RUNNING) for command_id in sent.values())

    until("the stop commands", ended, timeout=timeout)


def wait_for_agents(clients: Clients, instance_ids: list[str], timeout: float = AGENT_TIMEOUT_S) -> None:
    """Until the SSM agent of each machine is registered and online: SendCommand refuses a machine before that
    (InvalidInstanceId), and its agent registers a minute or more after the machine runs."""
    ssm, seen = clients.client("ssm"), {}

    def online() -> bool:
        pages = ssm.get_paginator("describe_instance_information").paginate(
            Filters=[{"Key": "InstanceIds", "Values": instance_ids}])
        seen.update({i["InstanceId"]: i["PingStatus"] for page in pages for i in page["InstanceInformationList"]})
        return all(seen.get(i) == "Online" for i in instance_ids)

    try:
        until("the machines' SSM agents", online, timeout=timeout)
    except BackendError:
        waiting = ", ".join(f"{i} ({seen.get(i, 'not registered')})" for i in instance_ids if seen.get(i) != "Online")
        raise BackendError(f"the SSM agent of machine(s) {waiting} was not online {timeout:.0f} s after they ran, so "
                           "no job can be sent to them: the instance profile needs AmazonSSMManagedInstanceCore and "
                           "the subnet a route to the SSM endpoints") from None


def send(clients: Clients, instance_id: str, script: str, comment: str, timeout_hours: float) -> str:
    """Run `script` on the machine through SSM's agent; returns the command's id. SendCommand takes no idempotency
    token (once.py): a command that may have started is found by a token at the end of its script."""
    ssm = clients.client("ssm", retries=False)
    token = f"# imagenet18 send {uuid.uuid4().hex}"
    script = f"{script.rstrip()}\n{token}\n"
    since = datetime.now(UTC)
    return once.make_once(
        f"the command for {instance_id} (SSM's SendCommand)",
        lambda: ssm.send_command(
            InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Comment=comment[:100],
            TimeoutSeconds=DELIVERY_TIMEOUT_S,
            Parameters={"commands": [script], "executionTimeout": [str(max(3600, int(timeout_hours * 3600)))]},
        )["Command"]["CommandId"],
        lambda: _sent_with(clients, instance_id, token, since))


def _sent_with(clients: Clients, instance_id: str, token: str, since: datetime) -> str | None:
    """The id of the command to the machine whose script ends with `token`, if SSM lists it. Listed without
    naming the machine: SSM lists a command by machine only once it has reached it (API_ListCommands)."""
    return next((c["CommandId"] for c in commands_since(clients.client("ssm"), since)
                 if instance_id in c.get("InstanceIds", [])
                 and c.get("Parameters", {}).get("commands", [""])[0].rstrip().endswith(token)), None)


def job_comment(name: str, index: int) -> str:
    return f"imagenet18 {name} {index}"


def commands_since(ssm, since: datetime) -> list[dict]:
    """The account's AWS-RunShellScript commands requested since `since`, in one paged listing."""
    after = (since - CLOCK_MARGIN).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    filters = [{"key": "InvokedAfter", "value": after}, {"key": "DocumentName", "value": "AWS-RunShellScript"}]
    return [c for page in ssm.get_paginator("list_commands").paginate(Filters=filters) for c in page["Commands"]]


def command_ends(clients: Clients, machines: Iterable[Machine], name: str,
                 since: datetime) -> dict[int, tuple[int, str]]:
    """How the latest SSM command of job `name` ended on each machine where it has ended: its exit code (LOST where
    it never ran to one: not delivered, cancelled; EXECUTION_TIMED_OUT past its executionTimeout) and a line
    saying why. Machines whose command runs, or is not listed yet, are left out; so are all of them when SSM
    throttles the poll."""
    ssm = clients.client("ssm", retries=False)  # a throttled poll is asked again at the next one, not retried now
    try:
        latest: dict[tuple[str, str], dict] = {}
        for command in commands_since(ssm, since):
            for instance_id in command.get("InstanceIds", []):
                key = (instance_id, command.get("Comment", ""))
                if key not in latest or command["RequestedDateTime"] > latest[key]["RequestedDateTime"]:
                    latest[key] = command
        return {machine.index: _how_it_ended(ssm, command["CommandId"], machine.id) for machine in machines
                if (command := latest.get((machine.id, job_comment(name, machine.index))))
                and command["Status"] not in STILL_RUNNING}
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) not in POLL_AGAIN:
            raise
        log.warning("SSM answered %s while reading the machines' commands; the next poll reads them again",
                    error_code(exc))
        return {}


def _how_it_ended(ssm, command_id: str, instance_id: str) -> tuple[int, str]:
    invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    code = invocation["ResponseCode"]
    said = (invocation.get("StandardErrorContent") or "").strip().splitlines()[-STDERR_TAIL_LINES:]
    if invocation["StatusDetails"] == "ExecutionTimedOut":
        code = EXECUTION_TIMED_OUT
    elif invocation["Status"] not in ("Success", "Failed") or code < 0:
        code = LOST
    elif invocation["Status"] == "Failed" and PROCESS_LOST in (agents := _step_output(ssm, command_id, instance_id)):
        code, said = LOST, agents.strip().splitlines()[-STDERR_TAIL_LINES:]
    return code, (f"its SSM command on {instance_id} ended {invocation['StatusDetails']} (code "
                  f"{invocation['ResponseCode']})" + (": " + " / ".join(said) if said else ""))


def _step_output(ssm, command_id: str, instance_id: str) -> str:
    """The Output of the command's step as its agent reported it, which ListCommandInvocations gives with its
    details: where the agent puts its own account of a command it lost, which GetCommandInvocation's standard
    output and error do not hold."""
    listed = ssm.list_command_invocations(CommandId=command_id, InstanceId=instance_id, Details=True)
    return "\n".join(step.get("Output", "") for invocation in listed["CommandInvocations"]
                     for step in invocation.get("CommandPlugins", []))


def status(clients: Clients, cluster: Cluster, name: str) -> JobStatus:
    """From the exit codes the machines upload; for a machine without one, from its SSM command, which says when
    the script ended before it could upload one (a shell error, a command never delivered). A machine gone without
    one (a spot interruption) is lost, with EC2's reason."""
    bucket, prefix = split_url(cluster.storage)
    s3 = clients.client("s3")
    codes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/exit/{name}-"):
        for item in page.get("Contents", []):
            index = int(item["Key"].rsplit("-", 1)[1])
            codes[index] = int(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().strip() or LOST)
    seen = _machines_as_they_are(clients, cluster)
    unknown = [m for m in cluster.machines if codes.get(m.index) is None and _alive(seen.get(m.id))]
    # the job's commands were sent to its machines after they launched
    ended = command_ends(clients, unknown, name, min(seen[m.id]["LaunchTime"] for m in unknown)) if unknown else {}
    impaired = health.impaired(clients, [m.id for m in unknown if m.index not in ended])
    if ended:
        # A machine may have gone between the two looks (a spot interruption): its command ended with it, and the
        # agent may even have said Failed (137) as the machine shut down; it is lost all the same.
        seen = _machines_as_they_are(clients, cluster)
    running = succeeded = 0
    failed: dict[int, int] = {}
    causes: dict[int, str] = {}
    for machine in cluster.machines:
        code, instance = codes.get(machine.index), seen.get(machine.id)
        if code is None and _alive(instance):
            if machine.id in impaired:
                code, causes[machine.index] = LOST, f"{machine.id} {impaired[machine.id]}"
            elif machine.index not in ended:
                running += 1
                continue
            else:
                code, causes[machine.index] = ended[machine.index]
        elif code is None:
            code, causes[machine.index] = LOST, _gone(machine.id, instance)
        if code == 0:
            succeeded += 1
        else:
            failed[machine.index] = code
    return JobStatus(running, succeeded, failed, causes)


def _machines_as_they_are(clients: Clients, cluster: Cluster) -> dict[str, dict]:
    """The run's machines in any state (terminated ones are listed for about an hour), by id."""
    return {i["InstanceId"]: i for i in machine_ops.instances(clients, cluster.spec.run_id, ALL_STATES)}


def _alive(instance: dict | None) -> bool:
    return instance is not None and instance["State"]["Name"] in ("pending", "running")


def _gone(instance_id: str, instance: dict | None) -> str:
    if instance is None:
        return f"{instance_id} is gone"
    reason = instance.get("StateReason", {}).get("Message")
    return f"{instance_id} is {instance['State']['Name']}" + (f" ({reason})" if reason else "")


def read(clients: Clients, url: str, offset: int = 0) -> bytes:
    bucket, key = split_url(url)
    try:
        return clients.client("s3").get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-")["Body"].read()
    except Exception as exc:  # noqa: BLE001 - not written yet, or nothing past offset
        if error_code(exc) in ("NoSuchKey", "InvalidRange", "404"):
            return b""
        raise

