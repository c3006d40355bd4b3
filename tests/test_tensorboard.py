"""`imagenet18 tensorboard`: real TensorBoard processes over real event files, from a local folder, from S3 (the
simulator) and on a simulated machine 0 behind a port forward; nothing listens beyond 127.0.0.1."""

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from deployments.cli import main
from tasks.tensorboard import open_session, select_run
from tasks.backends.aws import tags
from tasks.backends.aws import tensorboard as remote
from tasks.backends.aws.clients import Clients
from tasks.backends.base import InputError
from tests.awssim.images import UNDESCRIBED
from tests.processes import alive
from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
TAG = "losses/train_loss"  # one of the seed's tags
IMAGE = UNDESCRIBED
HEAD_RUN_ID = "5eed0000-1111-2222-3333-444455556666"
HEAD_FOLDER = "headrun-5eed0000"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Stands in for `aws ssm start-session ... AWS-StartPortForwardingSession`: records its arguments, then forwards
# 127.0.0.1:<localPortNumber> to <portNumber> on "the machine", which in the simulator is this one.
FAKE_AWS = """\
import asyncio, json, os, sys

args = sys.argv[1:]
with open(os.environ["FAKE_AWS_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
ports = json.loads(args[args.index("--parameters") + 1])
local, remote = int(ports["localPortNumber"][0]), int(ports["portNumber"][0])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def connect(reader, writer):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", remote)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


async def serve():
    server = await asyncio.start_server(connect, "127.0.0.1", local)
    async with server:
        await server.serve_forever()

asyncio.run(serve())
"""


def write_events(folder: Path, tag: str = TAG) -> Path:
    writer = SummaryWriter(str(folder))
    for step in range(3):
        writer.add_scalar(tag, 1.0 / (step + 1), step)
    writer.close()
    return folder


def get(url: str):
    with DIRECT.open(url, timeout=10) as response:
        return json.loads(response.read())


def scalar_tags(url: str) -> dict[str, list[str]]:
    return {run: sorted(found) for run, found in get(f"{url}data/plugin/scalars/tags").items()}


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # /proc writes each 32-bit word host-endian
    return socket.inet_ntop(socket.AF_INET6, words)


def listening() -> list[tuple[str, int, str]]:
    """Every TCP socket listening here: (address, port, inode)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A":  # LISTEN
                found.append((_address(address), int(port, 16), fields[9]))
    return found


def addresses_on(port: int) -> set[str]:
    return {address for address, bound, _ in listening() if bound == port}


def descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    family, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return family - {pid}


def sockets_of(pids: set[int]) -> set[tuple[str, int]]:
    """Where these processes listen."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return {(address, port) for address, port, inode in listening() if inode in inodes}



@pytest.fixture
def runs(tmp_path) -> Path:
    """IMAGENET18_HOME with two local runs of the same name and a third."""
    home = tmp_path / "home"
    write_events(home / "runs" / "demo-1a2b3c4d")
    write_events(home / "runs" / "demo-99887766", "sizes/imgsize")
    write_events(home / "runs" / "other-0abc0abc")
    return home


class Output:
    """A command's output lines, read as they come."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, start: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line starting {start!r} in {timeout_s} s: {self.lines}") from None
            self.lines.append(line)
            if line.startswith(start):
                return line

    def rest(self) -> list[str]:
        """The lines not read yet, once the command has ended."""
        self._reader.join(timeout=10)
        return [self._queue.get() for _ in range(self._queue.qsize())]


@contextmanager
def command(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, Output]]:
    """`imagenet18 ARGS` running; whatever of it is left at the end is killed, children first."""
    process = subprocess.Popen([sys.executable, "-m", "deployments.cli", *args], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield process, Output(process)
    finally:
        if process.poll() is None:
            for pid in descendants(process.pid) | {process.pid}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        process.wait()


def interrupt(process: subprocess.Popen) -> set[int]:
    """Ctrl-C; returns the processes it had started, to check they are gone too."""
    started = descendants(process.pid)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    return started


def test_local_runs_are_served_on_127_0_0_1_only(runs):
    with open_session("local", home=runs) as session:
        url = session.wait_until_serving()
        assert url == f"http://127.0.0.1:{session.port}/"
        assert sorted(get(f"{url}data/runs")) == ["demo-1a2b3c4d", "demo-99887766", "other-0abc0abc"]
        found = scalar_tags(url)
        assert found["demo-1a2b3c4d"] == [TAG] and found["demo-99887766"] == ["sizes/imgsize"]
        tensorboard = session.children[0].process
        family = descendants(tensorboard.pid) | {tensorboard.pid}  # with its data server
        where = sockets_of(family)
        assert (("127.0.0.1", session.port)) in where
        assert {address for address, _ in where} == {"127.0.0.1"}, "no socket on any other address"
    assert not any(alive(pid) for pid in family), "TensorBoard and its data server are stopped"
    assert addresses_on(session.port) == set()


def test_the_command_serves_one_run_prints_its_url_and_stops_on_ctrl_c(runs):
    port = free_port()
    with command(["tensorboard", "--run", "1a2b", "--port", str(port)],
                 {**os.environ, "IMAGENET18_HOME": str(runs)}) as (process, output):
        line = output.wait_for("TensorBoard: ")
        assert line.startswith(f"TensorBoard: http://127.0.0.1:{port}/ ")
        assert str(runs / "runs" / "demo-1a2b3c4d") in line
        assert scalar_tags(f"http://127.0.0.1:{port}/") == {".": [TAG]}, "that run, and only it"
        assert addresses_on(port) == {"127.0.0.1"}
        started = interrupt(process)
    assert started and not any(alive(pid) for pid in started)
    assert addresses_on(port) == set()


def test_runs_are_selected_by_folder_name_or_id_prefix_and_bad_choices_refused(runs, tmp_path, monkeypatch, capsys):
    folders = sorted(p.name for p in (runs / "runs").iterdir())
    assert select_run(folders, "demo-99887766", "here") == "demo-99887766"
    assert select_run(folders, "other", "here") == "other-0abc0abc"
    assert select_run(folders, "998", "here") == "demo-99887766"
    assert select_run(folders, "0abc0abc-dead-beef-0000-000000000000", "here") == "other-0abc0abc", "a full run id"
    with pytest.raises(InputError, match="^3 runs in here: demo-1a2b3c4d, demo-99887766, other-0abc0abc; choose"):
        select_run(folders, None, "here")

    monkeypatch.setenv("IMAGENET18_HOME", str(runs))
    refused = {
        ("--run", "demo"): f"error: 'demo' matches 2 runs in {runs / 'runs'}: demo-1a2b3c4d, demo-99887766; "
                           "choose one with --run NAME_OR_ID_PREFIX",
        ("--run", "nope"): f"error: no run matches 'nope' in {runs / 'runs'}; runs there: demo-1a2b3c4d, "
                           "demo-99887766, other-0abc0abc",
        ("--via", "head"): "error: --via head serves TensorBoard on an AWS run's machine 0: add --backend aws",
        ("--logdir", str(tmp_path / "missing")): f"error: {tmp_path / 'missing'} does not exist",
    }
    for args, message in refused.items():
        assert main(["tensorboard", *args]) == 2
        assert capsys.readouterr().err.strip() == message
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["tensorboard", "--port", str(port)]) == 2
        assert capsys.readouterr().err.strip() == f"error: port {port} on 127.0.0.1 is in use; choose another " \
                                                  "with --port"
    monkeypatch.setenv("IMAGENET18_HOME", str(tmp_path / "empty"))
    assert main(["tensorboard"]) == 2
    assert "no runs yet in" in capsys.readouterr().err


def test_aws_runs_are_served_from_the_results_bucket(aws, tmp_path):
    bucket = f"imagenet18-{aws.client('sts').get_caller_identity()['Account']}-us-east-1"  # the default bucket
    s3 = aws.make_bucket(bucket)
    for folder, tag in (("s3run-0f1e2d3c", TAG), ("other-77777777", "sizes/imgsize")):
        for event_file in write_events(tmp_path / folder, tag).iterdir():
            s3.upload_file(str(event_file), bucket, f"runs/{folder}/{event_file.name}")

    with open_session("aws", run="0f1e", aws={"region": "us-east-1"}) as session:
        assert session.logdir == f"s3://{bucket}/runs/s3run-0f1e2d3c"
        assert scalar_tags(session.wait_until_serving()) == {".": [TAG]}
    with open_session("local", logdir=f"s3://{bucket}/runs") as session:  # any URL TensorBoard reads
        assert scalar_tags(session.wait_until_serving()) == {"other-77777777": ["sizes/imgsize"],
                                                            "s3run-0f1e2d3c": [TAG]}
    with pytest.raises(InputError, match="no run matches 'nope'.*runs there: other-77777777, s3run-0f1e2d3c"):
        with open_session("aws", run="nope", aws={"bucket": bucket}):
            pass


def running(ec2, launched: dict) -> str:
    """The id of the machine a launch made, once it runs (a run's machines are running when it is watched)."""
    instance_id = launched["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 1})
    return instance_id


@pytest.fixture
def machines(aws) -> dict[str, str]:
    """A run on the simulator: its EFS with TensorBoard events in the run's folder, its machine 0 ("head") and 1
    ("second") running; and machine 0 of another run with no EFS ("other"). Returns their instance ids."""
    ec2, efs = aws.client("ec2"), aws.client("efs")

    def machine(run_id: str, index: int, name: str) -> str:
        machine_tags = [{"Key": tags.RUN, "Value": run_id}, {"Key": tags.INDEX, "Value": str(index)},
                        {"Key": "Name", "Value": f"{index}.{name}"}]
        return running(ec2, ec2.run_instances(ImageId=IMAGE, InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
                                              TagSpecifications=[{"ResourceType": "instance", "Tags": machine_tags}]))

    file_system = efs.create_file_system(CreationToken=HEAD_RUN_ID, Tags=[{"Key": tags.RUN, "Value": HEAD_RUN_ID}])
    write_events(aws.root / "efs" / file_system["FileSystemId"] / "runs" / HEAD_FOLDER)
    return {"head": machine(HEAD_RUN_ID, 0, "headrun"), "second": machine(HEAD_RUN_ID, 1, "headrun"),
            "other": machine("0ther000-1111-2222-3333-444455556666", 0, "otherrun")}


def fake_aws(folder: Path) -> Path:
    folder.mkdir()
    (folder / "aws").write_text(f"#!{sys.executable}\n{FAKE_AWS}")
    (folder / "session-manager-plugin").write_text("#!/bin/sh\nexit 0\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder / "aws"


def ssm_scripts(aws, instance_id: str) -> list[str]:
    found = aws.client("ssm").list_commands(InstanceId=instance_id)["Commands"]
    return ["\n".join(c["Parameters"]["commands"]) for c in sorted(found, key=lambda c: c["RequestedDateTime"])]


def forward_command(instance_id: str, port: int, remote_port: int) -> list[str]:
    return ["aws", "ssm", "start-session", "--region", "us-east-1", "--target", instance_id, "--document-name",
            "AWS-StartPortForwardingSession", "--parameters",
            json.dumps({"portNumber": [str(remote_port)], "localPortNumber": [str(port)]})]


@pytest.mark.slow
def test_machine_0_serves_the_runs_efs_folder_through_an_ssm_port_forward(aws, machines, tmp_path):
    head = machines["head"]
    aws_command = fake_aws(tmp_path / "bin")
    port, remote_port = free_port(), free_port()
    env = {**os.environ, "PATH": str(aws_command.parent), "FAKE_AWS_LOG": str(tmp_path / "aws.log"),
           "IMAGENET18_HOME": str(tmp_path / "home")}
    args = ["tensorboard", "--backend", "aws", "--via", "head", "--port", str(port), "--remote-port", str(remote_port)]
    with command(args, env) as (process, output):
        assert "error: 2 runs in us-east-1 with machine 0 running: headrun-5eed0000, otherrun-0ther000; " \
               "choose one with --run NAME_OR_ID_PREFIX" in output.wait_for("error: ")
    with command([*args, "--run", "headrun"], env) as (process, output):
        line = output.wait_for("TensorBoard: ")
        assert line.startswith(f"TensorBoard: http://127.0.0.1:{port}/ ")
        assert scalar_tags(f"http://127.0.0.1:{port}/") == {".": [TAG]}, "the run's EFS folder, through the forward"
        [start] = ssm_scripts(aws, head)
        assert f"-m tensorboard.main --logdir /mnt/efs/runs/{HEAD_FOLDER} --host 127.0.0.1 --port {remote_port}" \
               in start and "bind_all" not in start
        assert addresses_on(remote_port) == {"127.0.0.1"}, "on the machine, TensorBoard is on its loopback only"
        assert addresses_on(port) == {"127.0.0.1"}
        [forwarded] = [json.loads(line) for line in (tmp_path / "aws.log").read_text().splitlines()]
        assert ["aws", *forwarded] == forward_command(head, port, remote_port)
        started = interrupt(process)
        assert not [line for line in output.rest() if "could not stop TensorBoard" in line]
    assert started and not any(alive(pid) for pid in started), "the port forward is stopped"
    assert len(ssm_scripts(aws, head)) == 2 and addresses_on(remote_port) == set(), "and TensorBoard on machine 0"
    assert ssm_scripts(aws, machines["second"]) == [], "nothing went to the run's other machines"

    with command([*args, "--run", "otherrun"], env) as (process, output):  # a run without its EFS folder
        assert f"TensorBoard on machine 0 ({machines['other']}) ended: Failed: no run folder " \
               in output.wait_for("error: ")
        assert process.wait(timeout=60) == 2
    assert len(ssm_scripts(aws, machines["other"])) == 2, "started, and stopped all the same"


def test_without_the_aws_cli_the_port_forward_command_is_printed_for_the_user(aws, machines, tmp_path):
    head = machines["head"]
    aws_command = fake_aws(tmp_path / "bin")
    port, remote_port = free_port(), free_port()
    env = {**os.environ, "PATH": str(tmp_path / "nothing"), "IMAGENET18_HOME": str(tmp_path / "home")}
    args = ["tensorboard", "--backend", "aws", "--via", "head", "--run", "5eed", "--port", str(port),
            "--remote-port", str(remote_port)]
    with command(args, env) as (process, output):
        printed = output.wait_for("  aws ssm start-session")
        assert "needs the AWS CLI and its Session Manager plugin" in "\n".join(output.lines)
        assert shlex.split(printed) == forward_command(head, port, remote_port)
        # The user runs it where the tools are (here: the stand-in); the URL is printed once it answers.
        forward = subprocess.Popen([str(aws_command), *shlex.split(printed)[1:]],
                                   env={**env, "FAKE_AWS_LOG": str(tmp_path / "aws.log")})
        try:
            assert output.wait_for("TensorBoard: ").startswith(f"TensorBoard: http://127.0.0.1:{port}/ ")
            assert scalar_tags(f"http://127.0.0.1:{port}/") == {".": [TAG]}
            interrupt(process)
        finally:
            forward.kill()
            forward.wait()
    wait_for(lambda: addresses_on(remote_port) == set(), seconds=10)


def test_a_run_that_admits_ssh_is_forwarded_through_an_ssh_tunnel(aws, tmp_path):
    with pytest.raises(InputError, match="^no runs in us-east-1 with machine 0 running$"):
        with open_session("aws", "head", home=tmp_path):
            pass
    ec2 = aws.client("ec2")
    keys = tmp_path / "aws" / "keys"
    group = ec2.create_security_group(GroupName="ssh-run", Description="test")["GroupId"]
    instance = running(ec2, ec2.run_instances(
        ImageId=IMAGE, InstanceType="g5.xlarge", MinCount=1, MaxCount=1, SecurityGroupIds=[group],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": tags.RUN, "Value": HEAD_RUN_ID}, {"Key": tags.INDEX, "Value": "0"},
            {"Key": "Name", "Value": "0.sshrun"}]}]))
    clients = Clients("us-east-1")
    [head] = remote.heads(clients)
    assert (head.instance_id, head.folder) == (instance, "sshrun-5eed0000") and head.public_ip

    assert remote.port_forward(clients, head, 16006, 6006, keys).command[:3] == ["aws", "ssm", "start-session"], \
        "no ssh rule, no key: SSM"
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}])
    assert remote.port_forward(clients, head, 16006, 6006, keys).command[0] == "aws", "an ssh rule, but no key: SSM"
    keys.mkdir(parents=True)
    (keys / f"imagenet18-{HEAD_RUN_ID}.pem").write_text("key")
    forward = remote.port_forward(clients, head, 16006, 6006, keys)
    assert forward.command == ["ssh", "-i", str(keys / f"imagenet18-{HEAD_RUN_ID}.pem"), "-N",
                               "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=accept-new",
                               "-L", "127.0.0.1:16006:127.0.0.1:6006", f"ubuntu@{head.public_ip}"]
