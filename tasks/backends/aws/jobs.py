"""Jobs on the machines: started through SSM RunCommand, followed through the run's s3:// prefix (machine 0
mirrors the EFS run folder there; every machine uploads its own log and exit code when its command ends)."""

from __future__ import annotations

import os
import shlex
import signal
from importlib import resources
from string import Template

from tasks.backends.aws import machines as machine_ops
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.waiting import until
from tasks.backends.base import Cluster, JobStatus

MIRROR_SECONDS = 10
FORWARDED_SETTINGS = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY")  # not secrets: they may be in the script
LOST = -signal.SIGKILL  # the machine went away without an exit code (spot interruption, termination)


def split_url(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.rstrip("/")


def launch_script(cluster: Cluster, index: int, command: list[str], name: str, region: str,
                  secret_parameters: dict[str, str]) -> str:
    settings = [f"export {name_}={shlex.quote(os.environ[name_])}" for name_ in FORWARDED_SETTINGS
                if os.environ.get(name_)]
    secrets = "\n".join(settings + [  # read on the machine, so no secret is in the command that SSM records
        f'export {variable}="$($py -m tasks.backends.aws.parameter {shlex.quote(parameter)})"'
        for variable, parameter in secret_parameters.items()])
    follow = (f'$py -m trainer mirror "$run" {shlex.quote(cluster.storage)} --every {MIRROR_SECONDS} '
              f'--until-exits {len(cluster.machines)} --exit-pattern "{name}-*" >"$run/logs/mirror.log" 2>&1 &'
              if index == 0 else "")
    template = Template(resources.files("tasks.backends.aws").joinpath("launch.sh").read_text())
    return template.substitute(job=name, index=index, run_id=cluster.spec.run_id, region=region,
                               node_storage=shlex.quote(cluster.node_storage), storage=cluster.storage,
                               python=shlex.quote(cluster.python),
                               secrets=secrets, follow=follow, command=shlex.join(command))


def stop_script(cluster: Cluster, index: int, name: str) -> str:
    template = Template(resources.files("tasks.backends.aws").joinpath("stop.sh").read_text())
    return template.substitute(job=name, index=index, run_id=cluster.spec.run_id,
                               node_storage=shlex.quote(cluster.node_storage))


def wait_for_commands(clients: Clients, sent: dict[str, str], timeout: float = 120.0) -> None:
    """Until each (instance -> command id) has ended on its machine, however it ended."""
    ssm = clients.client("ssm")

    def ended() -> bool:
        for instance_id, command_id in sent.items():
            try:
                invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            except Exception as exc:  # noqa: BLE001 - not registered yet
                if error_code(exc) == "InvocationDoesNotExist":
                    return False
                raise
            if invocation["Status"] in ("Pending", "InProgress", "Delayed"):
                return False
        return True

    until("the stop commands", ended, timeout=timeout)


def send(clients: Clients, instance_id: str, script: str, comment: str, timeout_hours: float) -> str:
    result = clients.client("ssm").send_command(
        InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Comment=comment[:100],
        Parameters={"commands": [script], "executionTimeout": [str(max(3600, int(timeout_hours * 3600)))]})
    return result["Command"]["CommandId"]


def status(clients: Clients, cluster: Cluster, name: str) -> JobStatus:
    bucket, prefix = split_url(cluster.storage)
    s3 = clients.client("s3")
    codes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/exit/{name}-"):
        for item in page.get("Contents", []):
            index = int(item["Key"].rsplit("-", 1)[1])
            codes[index] = int(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().strip() or LOST)
    alive = {i["InstanceId"] for i in machine_ops.instances(clients, cluster.spec.run_id, ["pending", "running"])}
    running = succeeded = 0
    failed: dict[int, int] = {}
    for machine in cluster.machines:
        code = codes.get(machine.index)
        if code == 0:
            succeeded += 1
        elif code is not None:
            failed[machine.index] = code
        elif machine.id in alive:
            running += 1
        else:
            failed[machine.index] = LOST
    return JobStatus(running, succeeded, failed)


def read(clients: Clients, url: str, offset: int = 0) -> bytes:
    bucket, key = split_url(url)
    try:
        return clients.client("s3").get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-")["Body"].read()
    except Exception as exc:  # noqa: BLE001 - not written yet, or nothing past offset
        if error_code(exc) in ("NoSuchKey", "InvalidRange", "404"):
            return b""
        raise

