"""The machine player: runs the shell commands SSM was sent (moto only records them) as local process groups,
one per target instance, kills them when their instance stops or terminates, and reports back into moto."""

import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moto.ec2.models.instances import InstanceState, StateReason
from packaging.version import Version

from . import access, backends, encryption, gpus, images, network
from .backends import RUN_TAG
from .hibernation import AgentLife
from .client_tokens import ClientTokens
from .guardduty import RuntimeMonitoring
from .public_access import PublicAccessBlocks
from .s3_reads import S3Reads
from .encryption import Encryption
from .initialization import Initializations
from .rewrite import Rewrite
from .storage import ContentStore
from .userdata import UserData, inspect

INSTANCE_ENV = "IMAGENET18_SIM_INSTANCE"  # every process a machine's commands start inherits it
MACHINE_VENV = "/opt/imagenet18/.venv"  # user-data installs the project, torch with it, there
# How long after a machine runs its SSM agent first pings SSM (a minute or so on AWS): SendCommand refuses it until
# the agent has registered.
AGENT_DELAY_S = float(os.environ.get("AWSSIM_AGENT_DELAY_S", "1"))
PENDING_S = float(os.environ.get("AWSSIM_PENDING_S", "0.5"))  # from a machine's launch until it runs
# How EC2 ends a machine it launched but could not start (API_StateReason): the reason's code and message.
LAUNCH_ENDS = {"Server.InsufficientInstanceCapacity": "There was insufficient capacity available to satisfy the launch "
                                                      "request.",
               "Client.InternalError": "Client error on launch"}
SHUTTING_DOWN_S = float(os.environ.get("AWSSIM_SHUTTING_DOWN_S", "0.5"))  # from its termination until it is gone
REBOOT_S = float(os.environ.get("AWSSIM_REBOOT_S", "2"))  # from a reboot until the machine and its agent run again
# After a reboot, from its agent running again until /etc/fstab's nofail mounts are there: a boot waits for neither.
MOUNT_LAG_S = 3.0
# What SSM's agent, running again after a reboot, reports of a command whose process the reboot ended: Failed,
# code 1 (amazon-ssm-agent's generateUnexpectedFailResult, after its IPC with the gone worker times out).
PROCESS_LOST_OUTPUT = ("document process failed unexpectedly: ipc messaging received timeout signal, check "
                       "[ssm-document-worker]/[ssm-session-worker] log for crash reason")
VOLUME_CREATING_S = float(os.environ.get("AWSSIM_VOLUME_CREATING_S", "0.3"))  # from CreateVolume until available
BUCKET_SETTLING_S = float(os.environ.get("AWSSIM_BUCKET_SETTLING_S", "0.3"))  # from CreateBucket until it answers

ALIVE = ("pending", "running")
COMPILED = re.compile(r"(?<!\S)--compile(?!\S)")  # the trainer's flag: torch.compile, Triton's kernels on a GPU
NO_HEADERS_ERROR = ("/tmp/tmp0c2u5r1x/cuda_utils.c:5:10: fatal error: Python.h: No such file or directory\n"
                    "compilation terminated.\ntorch._inductor.exc.InductorError: CalledProcessError: Command "
                    "'['/usr/bin/gcc', '/tmp/tmp0c2u5r1x/cuda_utils.c', '-O3', '-shared', '-fPIC', ...]' returned "
                    "non-zero exit status 1.\n")
SEGFAULT_ERROR = ("Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f1d2c9ff640 (most recent call "
                  "first):\n  File \"/opt/imagenet18/.venv/lib/python3.11/site-packages/triton/compiler/compiler.py\", "
                  "line 297 in compile\nSegmentation fault (core dumped)\n")
# SSM keeps this much of an invocation's output for GetCommandInvocation.
STDOUT_LIMIT, STDERR_LIMIT = 24000, 8000
ERROR_HEADING = "----------ERROR-------"  # between a step's output and its errors, in its Output
DEFAULT_EXECUTION_TIMEOUT_S = 3600.0  # AWS-RunShellScript's executionTimeout when none is sent


def _compile_failure(user_data: UserData) -> tuple[int, str] | None:
    """(exit code, stderr) of torch.compile's first GPU kernel where it fails: Triton builds its launcher, a C file
    including Python.h, with gcc; and its compiler segfaults on a release candidate of Python, such as Ubuntu
    22.04's python3.11 (intel/intel-xpu-backend-for-triton#6607)."""
    if user_data.python_headers is False:
        return 1, NO_HEADERS_ERROR
    if user_data.python_version and Version(user_data.python_version).is_prerelease:
        return 139, SEGFAULT_ERROR
    return None


def _mount_table(scratch: Path, mounted: dict[str, Path]) -> Path:
    """The machine's /proc/mounts: its root disk and the disks mounted at their mount points (local folders)."""
    return _table(scratch / "proc-mounts", {point: str(disk) for point, disk in mounted.items()}, "rw,relatime")


def _fstab(scratch: Path, user_data: UserData, paths: dict[str, str]) -> Path:
    """The machine's /etc/fstab: the entries its user data added, at their mount points' local folders."""
    return _table(scratch / "fstab", {point: paths.get(point, point) for point in user_data.remounted},
                  "defaults,nofail")


def _table(file: Path, points: dict[str, str], options: str) -> Path:
    """Written whole at once, as the kernel gives /proc/mounts: a job's read never finds it cut short."""
    text = "/dev/root / ext4 rw,relatime 0 0\n" + "".join(
        f"{'fs-0.efs.us-east-1.amazonaws.com:/' if point == '/mnt/efs' else '/dev/nvme1n1'} {local} "
        f"{'nfs4' if point == '/mnt/efs' else 'ext4'} {options} 0 0\n" for point, local in points.items())
    if not file.exists() or file.read_text() != text:
        staged = file.with_name(f"{file.name}.new")
        staged.write_text(text)
        os.replace(staged, file)
    return file


def _boot_record(scratch: Path, user_data: UserData, booted_at: float, first: bool) -> dict[str, str]:
    """cloud-init's account of the machine's last boot, as files for its paths: `cloud-init status` ("status:
    running" until `booted_at`, which `--wait` waits for; then 1 and "status: error" where the user data would have
    failed on the image at the first boot, the one that runs it) and its output log, which ends with the user
    data's last words and cloud-init's own lines."""
    failed = first and user_data.boot_failed
    log, status = scratch / "cloud-init-output.log", scratch / "cloud-init"
    said = [user_data.check.removeprefix("boot failed: "), "2026-12-05 00:00:00,000 - cc_scripts_user.py[WARNING]: "
            "Failed to run module scripts-user (scripts in /var/lib/cloud/instance/scripts)"] if failed else []
    log.write_text("\n".join([*said, "Cloud-init v. 24.4.1-0ubuntu0~22.04.1 finished at Sat, 05 Dec 2026 00:00:00 "
                                    "+0000. Datasource DataSourceEc2Local.  Up 95.00 seconds"]) + "\n")
    status.write_text(f"""#!/bin/sh
while [ "$(date +%s)" -lt {math.ceil(booted_at)} ]; do
  [ "$*" = "status --wait" ] || {{ echo 'status: running'; exit 0; }}
  sleep 0.2
done
echo 'status: {'error' if failed else 'done'}'
exit {int(failed)}
""")
    status.chmod(0o755)
    return {"/usr/bin/cloud-init": str(status), "/var/log/cloud-init-output.log": str(log)}


# Where the commands played while boots take time find the compressed torchrun default (machine_site/).
MACHINE_SITE = Path(__file__).resolve().parent / "machine_site"
# The PATH SSM's agent gives a command (https://github.com/aws/amazon-ssm-agent/issues/427).
AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def agent_environment(instance: Any, command_id: str, region: str) -> dict[str, str]:
    """The environment SSM's agent gives a command: it passes on none of its own, so no HOME and no region for
    the SDKs (aws/amazon-ssm-agent#427, a maintainer's listing). Added, what stands in for the machine's world
    here: the simulator's endpoint for AWS's, the role's keys for those its instance metadata serves (none
    without a role; metadata is off, as a real machine's has none to give then), empty AWS config files for
    root's, and the marker that finds the machine's processes."""
    return {"PATH": AGENT_PATH, "LANG": "en_US.UTF-8", "AWS_SSM_INSTANCE_ID": instance.id,
            "AWS_SSM_REGION_NAME": region, "SSM_COMMAND_ID": command_id, INSTANCE_ENV: instance.id,
            "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            **access.machine_credentials(instance)}


@dataclass
class Played:
    command_id: str
    instance_id: str
    dir: Path
    process: subprocess.Popen[bytes] | None
    command: Any  # moto's Command, whose status the player keeps
    invocation: dict[str, Any]  # moto's record of this instance's run, updated in place
    started: float = field(default_factory=time.time)
    exit_code: int | None = None
    swept: bool = False  # its machine's processes were killed
    cut_short: bool = False  # it was still running when they were
    cold_data: bool = False  # it started on a machine whose dataset volume was still fetching blocks from S3
    timeout_s: float = DEFAULT_EXECUTION_TIMEOUT_S  # its executionTimeout: the agent kills it past that
    held: tuple[str, str, str] | None = None  # sent while its machine rebooted: (account, region, script)
    plugin_output: str = ""  # its step's Output, as its agent reported it (ListCommandInvocations' details)
    # Its process ended under it (a reboot: when the agent, running again, reports it Failed; a machine that
    # failed: math.inf, never)
    lost_report_at: float | None = None

    def record(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "instance_id": self.instance_id,
            "exit_code": self.exit_code,
            "cut_short": self.cut_short,
            "cold_data": self.cold_data,
            "stdout": str(self.dir / "stdout"),
            "stderr": str(self.dir / "stderr"),
        }


@dataclass
class Machine:
    instance_id: str
    user_data: UserData
    shutdown_at: float | None  # time.time() when its user-data timer fires
    agent: AgentLife
    booted_at: float  # time.time() when its last boot ends (the first: its user data)
    boots: int = 1
    up_at: float = 0.0  # time.time() when it runs again after its last reboot, its agent with it
    mounted: frozenset[str] | None = None  # after a reboot: what /etc/fstab mounts; None: what user data mounted
    disks: dict[str, Path] = field(default_factory=dict)  # mount point -> local folder, once a command ran
    table: Path | None = None  # its /proc/mounts, once a command ran, rewritten as late mounts come

    def record(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "user_data_check": self.user_data.check,
                "shutdown_after_s": self.user_data.shutdown_after_s, "agent": self.agent.state,
                "agent_hibernated": self.agent.hibernated, "agent_restarted": self.agent.restarted,
                "boots": self.boots,
                "shutdown_in_s": None if self.shutdown_at is None else self.shutdown_at - time.time()}

    def rebooted(self, now: float, reboot_s: float) -> None:
        """Its OS restarted: user data runs no more, so only /etc/fstab's mounts come back (a while after the
        machine), and a shutdown it armed (in /run) is gone unless a per-boot script arms it again (for the same
        deadline, its own)."""
        self.boots += 1
        self.up_at = self.booted_at = now + reboot_s
        self.mounted = self.user_data.remounted
        if not self.user_data.rearms_shutdown:
            self.shutdown_at = None

    def down(self, now: float) -> bool:
        return now < self.up_at

    def mounts_now(self) -> dict[str, Path]:
        """Its disks mounted now (at their mount points' local folders)."""
        if self.mounted is None:
            return dict(self.disks)
        late = time.time() < self.up_at + MOUNT_LAG_S
        return {point: disk for point, disk in self.disks.items() if point in self.mounted and not late}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Player:
    def __init__(self, root: Path, repo: Path, store: ContentStore, interval_s: float = 0.2) -> None:
        # repo: what the machines install, the project's source as user-data unpacks it into /opt/imagenet18.
        self.root, self.repo, self.store, self.interval_s = root, repo, store, interval_s
        self._lock = threading.RLock()
        self._seen: set[str] = set()  # command ids
        self._played: list[Played] = []
        self._machines: dict[str, Machine] = {}
        self._ports: dict[str, int] = {}  # run tag (or instance id) -> torchrun master port
        self.agent_delay_s = AGENT_DELAY_S  # for machines seen from now on
        self.pending_s = PENDING_S  # for machines launched from now on
        self.boot_s = 0.0  # for machines seen from now on: from running to the end of their first boot
        self.shutting_down_s = SHUTTING_DOWN_S  # for machines terminated from now on
        self.reboot_s = REBOOT_S  # for machines rebooted from now on
        self.snapshot_pending_s = 0.0  # for snapshots made from now on
        self.volume_creating_s = VOLUME_CREATING_S  # for volumes made from now on
        self.bucket_settling_s = BUCKET_SETTLING_S  # for buckets made from now on
        self.launch_ends: list[tuple[str, str]] = []  # (instance type, state reason code) of machines to end
        self.initializations = Initializations()
        self.encryption = Encryption()
        self.launch_tokens = ClientTokens()  # RunInstances' client tokens, and the launch each made
        self.local_zone_regions: set[str] = set()  # regions whose Local Zone the account opted in to
        self.public_access = PublicAccessBlocks()  # VPC Block Public Access, where a test turns it on
        self.guardduty = RuntimeMonitoring()  # GuardDuty's endpoints in VPCs with machines, where a test turns it on
        self.s3_reads = S3Reads()  # their round trip, where a test sets one, and the most at once
        self.unreachable_hosts: set[str] = set()  # hosts the machines seen from now on cannot reach

    def start(self) -> None:
        threading.Thread(target=gpus.arch_flags, name="awssim-arch-flags", daemon=True).start()  # seconds: early
        threading.Thread(target=self._loop, name="awssim-player", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                self.tick()
            except Exception:  # a tick racing a reset or a request; the next one sees a settled state
                traceback.print_exc()

    def tick(self) -> None:
        with self._lock:
            instances = {i.id: i for _, _, ec2 in backends.ec2_all() for i in backends.instances(ec2)}
            self._watch_machines(instances)
            self._ping()
            self._kill_where_gone(instances)
            self._time_out()
            self._reap()
            self._report_lost(instances)
            self._deliver_held(instances)
            self._mount_late()
            self.store.sync()
            self._launch_new(instances)

    def plugin_output(self, command_id: str, instance_id: str) -> str:
        with self._lock:
            return next((p.plugin_output for p in self._played
                         if (p.command_id, p.instance_id) == (command_id, instance_id)), "")

    def played(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p.record() for p in self._played]

    def machines(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m.record() for m in self._machines.values()]

    def paused(self) -> threading.RLock:
        """Hold it (`with player.paused():`) to keep the player still while moto's state is replaced."""
        return self._lock

    def reset(self) -> None:
        with self._lock:
            for played in self._played:
                self._kill(played)
            self._reap()
            self._played.clear()
            self._seen.clear()
            self._machines.clear()
            self._ports.clear()
            self.agent_delay_s = AGENT_DELAY_S
            self.pending_s = PENDING_S
            self.boot_s = 0.0
            self.shutting_down_s = SHUTTING_DOWN_S
            self.reboot_s = REBOOT_S
            self.snapshot_pending_s = 0.0
            self.volume_creating_s = VOLUME_CREATING_S
            self.bucket_settling_s = BUCKET_SETTLING_S
            self.launch_ends.clear()
            self.initializations.clear()
            self.encryption.reset()
            self.launch_tokens.clear()
            self.local_zone_regions.clear()
            self.public_access.reset()
            self.guardduty.reset()
            self.s3_reads.reset()
            self.unreachable_hosts.clear()

    def end_launches(self, instance_type: str, machines: int, code: str) -> None:
        if code not in LAUNCH_ENDS:
            raise ValueError(f"no launch ends with {code!r}: one of {', '.join(LAUNCH_ENDS)}")
        with self._lock:
            self.launch_ends += [(instance_type, code)] * machines

    # Machines: user-data and its shutdown timer.

    def _watch_machines(self, instances: dict[str, Any]) -> None:
        for instance_id, instance in instances.items():
            if instance.state == "pending" and instance_id not in self._machines and self._ends(instance):
                continue
            if instance.state == "pending" and time.time() >= getattr(instance, "running_at", 0):
                instance._state = InstanceState("running", 16)  # what EC2 does once the machine has started
            if instance.state == "shutting-down" and time.time() >= getattr(instance, "terminated_at", 0):
                instance.finish_termination()
            if instance_id not in self._machines and instance.state in ALIVE:
                user_data = inspect(str(instance.user_data) if instance.user_data else None,
                                    self.root / "instances" / instance_id / "user-data",
                                    images.facts(instance.image_id), self.repo, frozenset(self.unreachable_hosts))
                delay = user_data.shutdown_after_s
                shutdown_at = None if delay is None else time.time() + delay
                self._machines[instance_id] = Machine(instance_id, user_data, shutdown_at,
                                                      AgentLife(time.time() + self.agent_delay_s),
                                                      time.time() + self.boot_s)
            machine = self._machines.get(instance_id)
            if machine and getattr(instance, "reboots", 0) >= machine.boots and instance.state == "running":
                self._reboot(machine)
            if machine and machine.shutdown_at and time.time() >= machine.shutdown_at and instance.state in ALIVE:
                machine.shutdown_at = None  # an OS shutdown ignores API termination protection
                if instance.instance_initiated_shutdown_behavior == "terminate":
                    instance.terminate()
                else:
                    instance.stop()

    def _reboot(self, machine: Machine) -> None:
        """The machine restarts: every process of its commands ends with it, and its agent, once it runs again,
        reports those commands Failed."""
        now = time.time()
        machine.rebooted(now, self.reboot_s)
        for played in self._played:
            if played.instance_id == machine.instance_id and played.exit_code is None and played.held is None \
                    and played.process is not None and played.process.poll() is None:  # else it ended first
                self._kill(played)
                played.lost_report_at = machine.up_at

    def impair(self, instance_id: str, check: str, ago_s: float) -> None:
        """The machine's hardware failed (its system status check) or its OS stopped answering (its instance status
        check) `ago_s` seconds ago: its processes end with no word to anyone, its commands stay in progress, its
        agent's ping is lost, and the check fails since then; EC2 still describes it running."""
        if check not in ("system", "instance"):
            raise ValueError(f"no status check {check!r}: system or instance")
        with self._lock:
            instance = backends.find_instance(instance_id)
            if instance is None:
                raise ValueError(f"no instance {instance_id}")
            instance.impaired = (check, datetime.now(UTC) - timedelta(seconds=ago_s))
            for played in self._played:
                if played.instance_id == instance_id and played.process is not None and played.exit_code is None \
                        and played.process.poll() is None:
                    self._kill(played)
                    played.lost_report_at = math.inf

    def _ends(self, instance: Any) -> bool:
        """Whether EC2 ends this new machine as it launches (`end_launches`, or a disk EBS cannot encrypt): it is
        shut down, with the reason."""
        code = next((code for kind, code in self.launch_ends if kind == instance.instance_type), None)
        if code is not None:
            self.launch_ends.remove((instance.instance_type, code))
        elif encryption.launch_fails(instance):
            code = "Client.InternalError"
        else:
            return False
        instance.terminate()
        instance.state_reason = StateReason(f"{code}: {LAUNCH_ENDS[code]}", code)
        instance._reason = ""  # no one's call ended it ("This might be an empty string": API_Instance)
        return True

    def _ping(self) -> None:
        """Each running machine's SSM agent, until it registers (through the machine's way out, once it has one)."""
        now = time.time()
        for _, _, ec2 in backends.ec2_all():
            for instance in backends.instances(ec2):
                machine = self._machines.get(instance.id)
                if machine and not machine.agent.registered and instance.state == "running":
                    machine.agent.advance(now, network.reaches_out(instance, ec2, self.public_access),
                                          images.SSM_AGENT_UNIT in machine.user_data.restarted_units)

    def agents(self) -> dict[str, str]:
        """The PingStatus of each machine whose SSM agent has registered: Online while the machine runs and
        reaches out, ConnectionLost while it is stopped, on its way out or cut off; a terminated machine's agent
        is gone."""
        with self._lock:
            instances = {i.id: (i, ec2) for _, _, ec2 in backends.ec2_all() for i in backends.instances(ec2)}
            pings = {}
            for instance_id, machine in self._machines.items():
                instance, ec2 = instances.get(instance_id, (None, None))
                if instance is None or instance.state == "terminated" or not machine.agent.registered:
                    continue
                out = network.reaches_out(instance, ec2, self.public_access)
                up = instance.state == "running" and out and not machine.down(time.time()) \
                    and not getattr(instance, "impaired", None)
                pings[instance_id] = "Online" if up else "ConnectionLost"
            return pings

    def rebooting(self) -> set[str]:
        """The machines down for a reboot, whose agents are registered and run again once they are up."""
        with self._lock:
            now = time.time()
            return {instance_id for instance_id, machine in self._machines.items()
                    if machine.agent.registered and machine.down(now)}

    # Processes.

    def _kill_where_gone(self, instances: dict[str, Any]) -> None:
        for played in self._played:
            instance = instances.get(played.instance_id)
            if not played.swept and (instance is None or instance.state not in ALIVE):
                self._kill(played)

    @staticmethod
    def _kill(played: Played) -> None:
        """The command's process group, and whatever left it: torchrun starts its workers in new sessions, so
        a machine that goes away takes every process that carries its instance id."""
        played.swept = True
        if played.process is not None and played.process.poll() is None:
            played.cut_short = True
            try:
                os.killpg(played.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            played.process.wait(timeout=5)
        marker = f"{INSTANCE_ENV}={played.instance_id}".encode()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def _time_out(self) -> None:
        """As the agent ends a command still running past its executionTimeout: its process group killed, the
        invocation TimedOut with StatusDetails ExecutionTimedOut."""
        for played in self._played:
            if played.exit_code is None and played.process is not None and played.process.poll() is None \
                    and time.time() - played.started > played.timeout_s:
                try:
                    os.killpg(played.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                played.process.wait(timeout=5)
                self._finish(played, -1, "ExecutionTimedOut", "TimedOut")

    def _reap(self) -> None:
        for played in self._played:
            if played.exit_code is None and played.process is not None and played.process.poll() is not None \
                    and played.lost_report_at is None:
                code = played.process.returncode
                self._finish(played, code if code >= 0 else 128 - code)  # as a shell reports a signal

    def _report_lost(self, instances: dict[str, Any]) -> None:
        """Commands a reboot ended, once the agent runs again; where the machine went meanwhile, its agent never
        does, and the command ends as one whose machine went does."""
        for played in self._played:
            if played.exit_code is None and played.lost_report_at is not None and time.time() >= played.lost_report_at:
                instance = instances.get(played.instance_id)
                if instance is None or instance.state not in ALIVE:
                    self._finish(played, 128 + signal.SIGKILL)
                    continue
                (played.dir / "stdout").write_text("")
                (played.dir / "stderr").write_text("")
                self._finish(played, 1, output=PROCESS_LOST_OUTPUT)

    def _mount_late(self) -> None:
        for machine in self._machines.values():
            if machine.table is not None and machine.mounted is not None:
                _mount_table(machine.table.parent, machine.mounts_now())

    def _deliver_held(self, instances: dict[str, Any]) -> None:
        """Commands sent while their machine rebooted, once its agent runs again (or it is gone)."""
        for played in [p for p in self._played if p.held is not None]:
            machine, instance = self._machines.get(played.instance_id), instances.get(played.instance_id)
            if instance is not None and instance.state in ALIVE and machine and machine.down(time.time()):
                continue
            self._played.remove(played)
            self._launch(played.command, played.invocation, instances, *played.held)

    def _finish(self, played: Played, exit_code: int, details: str | None = None,
                status: str | None = None, output: str | None = None) -> None:
        """`output`: the agent's own account in its step's Output, else the script's output and errors there."""
        played.exit_code = exit_code
        (played.dir / "exit_code").write_text(f"{exit_code}\n")
        status = status or ("Success" if exit_code == 0 else "Failed")
        stdout, stderr = ((played.dir / name).read_text(errors="replace") for name in ("stdout", "stderr"))
        played.plugin_output = output if output is not None else stdout + (f"\n{ERROR_HEADING}\n{stderr}" if stderr
                                                                            else "")
        played.invocation.update(
            Status=status,
            StatusDetails=details or status,
            ResponseCode=exit_code,
            ExecutionEndDateTime=_now(),
            ExecutionElapsedTime=f"PT{time.time() - played.started:.3f}S",
            StandardOutputContent=stdout[:STDOUT_LIMIT],
            StandardErrorContent=stderr[:STDERR_LIMIT],
        )
        self._summarise(played.command)

    def _launch_new(self, instances: dict[str, Any]) -> None:
        for account, region, ssm in backends.ssm_all():
            for command in list(ssm._commands):
                if command.command_id in self._seen:
                    continue
                self._seen.add(command.command_id)
                if command.document_name != "AWS-RunShellScript":
                    continue  # left as moto reports it
                script = "\n".join(command.parameters.get("commands", []))
                for invocation in command.invocations:
                    self._launch(command, invocation, instances, account, region, script)
                self._summarise(command)

    def _launch(self, command: Any, invocation: dict[str, Any], instances: dict[str, Any], account: str,
                region: str, script: str) -> None:
        instance_id = invocation["InstanceId"]
        folder = self.root / "commands" / command.command_id / instance_id
        folder.mkdir(parents=True, exist_ok=True)
        invocation.update(Status="InProgress", StatusDetails="InProgress", ResponseCode=-1,
                          ExecutionStartDateTime=_now(), ExecutionEndDateTime="", ExecutionElapsedTime="")
        instance = instances.get(instance_id)
        played = Played(command.command_id, instance_id, folder, None, command, invocation,
                        timeout_s=float(command.parameters.get("executionTimeout", [DEFAULT_EXECUTION_TIMEOUT_S])[0]))
        self._played.append(played)
        machine = self._machines.get(instance_id)
        if instance is not None and instance.state in ALIVE and machine and machine.down(time.time()):
            invocation.update(Status="Pending", StatusDetails="Pending")
            played.held = (account, region, script)
            return
        if instance is None or instance.state not in ALIVE:
            (folder / "stdout").touch()
            (folder / "stderr").write_text(f"awssim: instance {instance_id} is not running\n")
            self._finish(played, -1, "Undeliverable")
            return
        if MACHINE_VENV in script and (error := gpus.no_kernel_error(instance.instance_type)):
            # The project's python, torch with it, stops at its first CUDA kernel: before it writes anything else.
            (folder / "stdout").touch()
            (folder / "stderr").write_text(error)
            self._finish(played, 1)
            return
        if MACHINE_VENV in script and COMPILED.search(script) and gpus.gpu(instance.instance_type) and (
                failure := _compile_failure(self._machines[instance_id].user_data)):
            (folder / "stdout").touch()
            (folder / "stderr").write_text(failure[1])
            self._finish(played, failure[0])
            return
        # As the agent runs AWS-RunShellScript: the commands, one a line, in an executable file that `sh -c` runs
        # (dash on Ubuntu and here), so the kernel honours a #! line and dash runs a script without one.
        data_volume = self._data_volume_id(instance)
        played.cold_data = data_volume is not None and not self.initializations.warm(data_volume)
        script_file = folder / "script.sh"
        script_file.write_text(self._rewrite(instance, instances, account, region).apply(script) + "\n")
        script_file.chmod(0o755)
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            played.process = subprocess.Popen(
                ["sh", "-c", str(script_file)], cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env={**agent_environment(instance, command.command_id, region), **self._compressed_time()},
                start_new_session=True,
            )

    def _compressed_time(self) -> dict[str, str]:
        """While boots take time here, torchrun's default wait for its rendezvous in proportion: half a boot."""
        if not self.boot_s:
            return {}
        return {"PYTHONPATH": str(MACHINE_SITE), "AWSSIM_TORCHRUN_DEFAULT_WAIT_S": str(math.ceil(self.boot_s / 2))}

    def _summarise(self, command: Any) -> None:
        """moto's command status, from its invocations: InProgress until all are done."""
        mine = [p for p in self._played if p.command is command]
        done = [p for p in mine if p.exit_code is not None]
        command.completed_count = len(done)
        command.error_count = sum(p.exit_code != 0 for p in done)
        ended = {p.invocation["Status"] for p in done}
        command.status = "InProgress" if len(done) < len(mine) else next(
            (status for status in ("Failed", "TimedOut") if status in ended), "Success")
        command.status_details = command.status

    def _rewrite(self, instance: Any, instances: dict[str, Any], account: str, region: str) -> Rewrite:
        run = instance.get_filter_value(f"tag:{RUN_TAG}")
        port_key = run or instance.id
        if port_key not in self._ports:
            self._ports[port_key] = _free_port()
        scratch = self.root / "instances" / instance.id
        machine = self._machines[instance.id]
        booted = not machine.user_data.boot_failed
        # What the machine has mounted, or will once its late mounts come (a reboot leaves /etc/fstab's alone),
        # where it would have them; a mount point without its disk is an empty folder of the root disk.
        disks = {"/mnt/data": self._data_volume(instance), "/mnt/efs": self._efs(run, account, region)}
        machine.disks = {point: disk for point, disk in disks.items()
                         if disk is not None and (machine.mounted is None or point in machine.mounted)}
        paths = {
            # A machine whose boot failed has no venv: its commands find no python there, as on a real one.
            MACHINE_VENV: sys.prefix if booted else str(scratch / "no-venv"),
            "/opt/imagenet18": str(self.repo),
            **{point: str(machine.disks.get(point) or scratch / point.strip("/").replace("/", "-")) for point in disks},
            **self._efa(instance, scratch),
        }
        for path in paths.values():
            Path(path).mkdir(parents=True, exist_ok=True)
        paths.update(_boot_record(scratch, machine.user_data, machine.booted_at, first=machine.boots == 1))
        machine.table = _mount_table(scratch, machine.mounts_now())
        paths.update({"/proc/mounts": str(machine.table), "/etc/fstab": str(_fstab(scratch, machine.user_data, paths))})
        ips = [i.private_ip for i in instances.values() if i.private_ip]
        return Rewrite(paths, ips, self._ports[port_key])

    @staticmethod
    def _efa(instance: Any, scratch: Path) -> dict[str, str]:
        """The machine's EFA devices (/sys/class/infiniband) and its image's EFA software (/opt/amazon), as files
        that say they are there."""
        devices, software = scratch / "sys-class-infiniband", scratch / "opt-amazon"
        devices.mkdir(parents=True, exist_ok=True)
        for number in range(network.efa_devices(instance)):
            (devices / f"rdmap{number}s0").touch()
        image = images.facts(instance.image_id)
        if image and image.ofi_nccl:
            plugin = software / image.ofi_nccl.removeprefix("/opt/amazon/")
            plugin.mkdir(parents=True, exist_ok=True)
            (plugin / "libnccl-net.so").touch()
            (software / "efa" / "lib").mkdir(parents=True, exist_ok=True)
        return {"/sys/class/infiniband": str(devices), "/opt/amazon": str(software)}

    def _data_volume(self, instance: Any) -> Path | None:
        volume_id = self._data_volume_id(instance)
        return self.store.volume_dir(volume_id) if volume_id else None

    @staticmethod
    def _data_volume_id(instance: Any) -> str | None:
        attached = sorted(
            (v.attachment.device, v.id)
            for v in list(instance.ec2_backend.volumes.values())
            if v.attachment and v.attachment.instance.id == instance.id
            and v.attachment.device != instance.root_device_name
        )
        return attached[0][1] if attached else None

    def _efs(self, run: str | None, account: str, region: str) -> Path | None:
        if not run:
            return None
        for file_system_id in list(backends.efs(account, region).file_systems_by_id):
            if backends.efs_tags(account, region, file_system_id).get(RUN_TAG) == run:
                return self.store.efs_dir(file_system_id)
        return None
