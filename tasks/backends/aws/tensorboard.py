"""TensorBoard on a run's machine 0, over the run's EFS folder: started through SSM RunCommand, bound to
127.0.0.1 on the machine and reached only through a port forward (an SSM session, or ssh where the run admits
it). The seed served it on a port open to the world; nothing here opens one."""

from __future__ import annotations

import json
import shlex
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.backends.aws import jobs, machines, tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.machines import EFS_MOUNT
from tasks.backends.aws.network import key_path

SSH_USER = "ubuntu"  # the Deep Learning Base AMI's
SERVE_HOURS = 12.0  # SSM's bound on the command; the machine's own shutdown timer usually comes first
SSM_TOOLS = ("aws", "session-manager-plugin")
INSTALL_SSM = ("the AWS CLI and its Session Manager plugin (https://docs.aws.amazon.com/systems-manager/latest/"
               "userguide/session-manager-working-with-install-plugin.html)")


@dataclass(frozen=True)
class Head:
    """Machine 0 of a run that is up."""
    instance_id: str
    run_id: str
    run_name: str
    public_ip: str | None
    security_group_ids: tuple[str, ...]

    @property
    def folder(self) -> str:
        """The run's folder under runs/ (on EFS and in the bucket), named as provision() names it."""
        return f"{self.run_name}-{self.run_id[:8]}"

    @property
    def logdir(self) -> str:
        return f"{EFS_MOUNT}/runs/{self.folder}"


@dataclass(frozen=True)
class Forward:
    """The command that forwards 127.0.0.1:<local port> here to TensorBoard on the machine."""
    command: list[str]
    needs: str | None  # what to install when this machine lacks the command's tools


def heads(clients: Clients) -> list[Head]:
    """Machine 0 of every run with a running machine 0, found by the runs' tags."""
    found = []
    for instance in machines.instances(clients, None, ["running"]):
        instance_tags = tags.as_dict(instance.get("Tags"))
        if instance_tags.get(tags.INDEX) != "0":
            continue
        found.append(Head(instance["InstanceId"], instance_tags[tags.RUN],
                          instance_tags.get("Name", "").removeprefix("0."), instance.get("PublicIpAddress"),
                          tuple(group["GroupId"] for group in instance.get("SecurityGroups", []))))
    return sorted(found, key=lambda head: head.folder)


@dataclass(frozen=True)
class Served:
    """TensorBoard started on a head machine: its SSM command, and the file with its pid there."""
    command_id: str
    pid_file: str


def start_script(head: Head, port: int, pid_file: str) -> str:
    logdir, pid_file = shlex.quote(head.logdir), shlex.quote(pid_file)
    return "\n".join([
        f"# imagenet18 tensorboard, run {head.run_id}: on 127.0.0.1 only, reached through a port forward",
        f"test -d {logdir} || {{ echo no run folder {logdir} on this machine >&2; exit 3; }}",
        f"echo $$ >{pid_file}",
        f"exec {machines.MACHINE_PYTHON} -m tensorboard.main --logdir {logdir} --host 127.0.0.1 --port {port}",
    ])


def stop_script(pid_file: str) -> str:
    pid_file = shlex.quote(pid_file)
    return f'test -f {pid_file} && kill "$(cat {pid_file})" 2>/dev/null; rm -f {pid_file}; exit 0'


def start(clients: Clients, head: Head, port: int) -> Served:
    """Start TensorBoard on the head machine; its SSM command lasts as long as it does."""
    pid_file = f"/tmp/imagenet18-tensorboard-{uuid.uuid4().hex}.pid"  # this session's: others may serve too
    jobs.wait_for_agents(clients, [head.instance_id])
    command_id = jobs.send(clients, head.instance_id, start_script(head, port, pid_file),
                           f"imagenet18 tensorboard {head.folder}", SERVE_HOURS)
    return Served(command_id, pid_file)


def ended(clients: Clients, head: Head, served: Served) -> str | None:
    """None while TensorBoard's command runs on the machine; else how it ended."""
    try:
        invocation = clients.client("ssm").get_command_invocation(CommandId=served.command_id,
                                                                  InstanceId=head.instance_id)
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) == "InvocationDoesNotExist":  # not registered yet
            return None
        raise
    if invocation["Status"] in jobs.STILL_RUNNING:
        return None
    said = (invocation.get("StandardErrorContent") or invocation.get("StandardOutputContent") or "").strip()
    return (f"TensorBoard on machine 0 ({head.instance_id}) ended: {invocation['Status']}"
            + (f": {said.splitlines()[-1]}" if said else ""))


def stop(clients: Clients, head: Head, served: Served) -> None:
    """Stop TensorBoard on the head machine, and wait until SSM says the stop ran."""
    since = datetime.now(UTC)
    command_id = jobs.send(clients, head.instance_id, stop_script(served.pid_file),
                           f"imagenet18 tensorboard stop {head.folder}", 1.0)
    jobs.wait_for_commands(clients, {head.instance_id: command_id}, since, timeout=120.0)


def port_forward(clients: Clients, head: Head, local_port: int, remote_port: int, key_folder: Path) -> Forward:
    """ssh when the run admits it (a saved key, a public address, a security group open to ssh from somewhere);
    an SSM session otherwise. Both listen on 127.0.0.1 here."""
    key = key_path(key_folder, head.run_id)
    if head.public_ip and key.exists() and _admits_ssh(clients, head):
        command = ["ssh", "-i", str(key), "-N", "-o", "ExitOnForwardFailure=yes", "-o",
                   "StrictHostKeyChecking=accept-new", "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}",
                   f"{SSH_USER}@{head.public_ip}"]
        return Forward(command, None if shutil.which("ssh") else "an OpenSSH client (ssh)")
    parameters = json.dumps({"portNumber": [str(remote_port)], "localPortNumber": [str(local_port)]})
    command = ["aws", "ssm", "start-session", "--region", clients.region, "--target", head.instance_id,
               "--document-name", "AWS-StartPortForwardingSession", "--parameters", parameters]
    return Forward(command, None if all(shutil.which(tool) for tool in SSM_TOOLS) else INSTALL_SSM)


class HeadTensorBoard:
    """TensorBoard on one run's machine 0, as the backend contract's RemoteTensorBoard."""

    def __init__(self, clients: Clients, head: Head, key_folder: Path):
        self.clients, self.head, self.key_folder = clients, head, key_folder
        self.logdir = f"{head.logdir} on {head.instance_id}"
        self.served: Served | None = None

    def start(self, remote_port: int) -> None:
        self.served = start(self.clients, self.head, remote_port)

    def ended(self) -> str | None:
        return ended(self.clients, self.head, self.served) if self.served else None

    def stop(self) -> None:
        if self.served is not None:
            stop(self.clients, self.head, self.served)

    def forward(self, local_port: int, remote_port: int) -> tuple[list[str], str | None]:
        forward = port_forward(self.clients, self.head, local_port, remote_port, self.key_folder)
        return forward.command, forward.needs


def _admits_ssh(clients: Clients, head: Head) -> bool:
    if not head.security_group_ids:
        return False
    groups = clients.ec2.describe_security_groups(GroupIds=list(head.security_group_ids))["SecurityGroups"]
    return any(rule.get("IpRanges") and rule.get("FromPort", 0) <= 22 <= rule.get("ToPort", 65535)
               and rule.get("IpProtocol") in ("tcp", "-1")
               for group in groups for rule in group.get("IpPermissions", []))
