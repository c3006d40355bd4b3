"""The machines' boot script's own logic, run by bash here where it can run off a machine: the watch that restarts
an SSM agent that hibernated at boot, apt-get asked again while another apt holds its locks and the project's
install asked again after a download cut off (the simulator only reads the script; see tests/awssim/userdata.py)."""

import datetime as dt
import os
import re
import subprocess

import pytest

from tasks.backends.aws import machines
from tasks.backends.base import ClusterSpec

SNAP_UNIT = "snap.amazon-ssm-agent.amazon-ssm-agent.service"


def shipped_user_data() -> str:
    """The user-data a machine gets, as a string."""
    spec = ClusterSpec("run-boot", "boot", 1, "p4d.24xlarge", False,
                       dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return machines.user_data(spec, ["vol-0123456789abcdef0"],
                              machines.BootConfig("fs-0123", "us-east-1", "s3://bucket/code.tar.gz", 1.0))


def shipped_function(name: str) -> str:
    return re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", shipped_user_data(), re.M | re.S)[0]


def fake_commands(folder, commands: dict[str, str]) -> dict[str, str]:
    """An environment whose PATH finds these shell scripts first."""
    folder.mkdir()
    for name, body in commands.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def agent_line(when: dt.datetime, message: str) -> str:
    """A line of amazon-ssm-agent.log: seelog's %Date(2006-01-02 15:04:05.0000), local time."""
    return f"{when:%Y-%m-%d %H:%M:%S}.0000 INFO [ssm-agent-worker] {message}\n"


NOW = dt.datetime.now()
HIBERNATED = "Entering SSM Agent hibernate - RequestError: send request failed caused by: dial tcp: i/o timeout"


@pytest.mark.parametrize("log,restarted", [
    ([agent_line(NOW, "Starting Core Agent"), agent_line(NOW, HIBERNATED)], [f"restart --no-block {SNAP_UNIT}"]),
    ([agent_line(dt.datetime(2020, 1, 1), HIBERNATED), agent_line(NOW, "Starting Core Agent")], []),  # the image's
    ([agent_line(NOW, "Starting Core Agent")], []),
    (None, []),  # no agent log at all
])
def test_an_agent_that_hibernated_this_boot_is_restarted_once(tmp_path, log, restarted):
    calls = tmp_path / "systemctl-calls"
    env = fake_commands(tmp_path / "bin", {"systemctl": f'echo "$*" >> {calls}', "sleep": "exit 0"})
    agent_log = tmp_path / "amazon-ssm-agent.log"
    if log is not None:
        agent_log.write_text("".join(log))
    watch = shipped_function("restart_hibernating_agent")
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{watch}restart_hibernating_agent {agent_log}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert (calls.read_text().splitlines() if calls.exists() else []) == restarted


LISTS_LOCKED = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1093 (apt-get)"
NOT_FOUND = "E: Unable to locate package python3.99"
HASHES_DIFFER = "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE."
DISK_FULL = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"
MIRROR_HICCUP = ("E: Failed to fetch https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu/pool/main/p/python3.11/"
                 "python3.11-dev_3.11.15-1+jammy1_amd64.deb  Hash Sum mismatch")
UPDATE = 'retrying 60 "$apt_again" apt-get -q -o DPkg::Lock::Timeout=600 update'  # every source's lists
APT_INSTALL = 'retrying 60 "$apt_again" apt-get -q -y'
INSTALL = 'retrying 3 "$cut_off" /opt/imagenet18/.venv/bin/pip install'


@pytest.mark.parametrize("shipped_start,command,failing,failure,returncode,calls", [
    (UPDATE, "apt-get", 0, LISTS_LOCKED, 0, 1), (UPDATE, "apt-get", 2, LISTS_LOCKED, 0, 3),
    (UPDATE, "apt-get", 60, LISTS_LOCKED, 100, 60), (UPDATE, "apt-get", 1, NOT_FOUND, 100, 1),
    (APT_INSTALL, "apt-get", 2, MIRROR_HICCUP, 0, 3),
    (APT_INSTALL, "apt-get", 1, NOT_FOUND, 100, 1),
    (INSTALL, "pip", 2, HASHES_DIFFER, 0, 3), (INSTALL, "pip", 3, HASHES_DIFFER, 100, 3),
    (INSTALL, "pip", 1, DISK_FULL, 100, 1)])
def test_the_boots_commands_are_asked_again_while_they_fail_as_they_may_in_a_while_no_longer(
        tmp_path, shipped_start, command, failing, failure, returncode, calls):
    """`apt-get update` fails at once while the image's first-boot apt-daily holds /var/lib/apt/lists/lock, and apt
    install fails where a mirror hiccups (a file caught mid-sync, a name not resolved for a moment): asked again
    every 10 s, 60 times at most; any other failure of apt stops the boot at once. The project's install,
    gigabytes of wheels, fails where a download is cut off midway: asked again, 3 times in all (not after, say, a
    full disk). Either way the
    command's own words are the last line of the boot's log (traced as the boot is: set -x)."""
    tries, slept = tmp_path / "tries", tmp_path / "slept"
    env = fake_commands(tmp_path / "bin", {
        command: f'echo "$*" >> {tries}\n'
                 f'[ "$(wc -l < {tries})" -gt {failing} ] || {{ echo "{failure}" >&2; exit 100; }}\n'
                 'echo "Done"',
        "sleep": f'echo "$1" >> {slept}'})
    shipped = shipped_user_data().splitlines()
    words = "\n".join(line for line in shipped if line.startswith(("apt_again=", "cut_off=")))
    [line] = [line.replace("/opt/imagenet18/.venv/bin/", "") for line in shipped if line.startswith(shipped_start)]
    script = f"set -euxo pipefail\n{words}\n{shipped_function('retrying')}{line}"
    done = subprocess.run(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60)
    assert done.returncode == returncode, done.stdout
    assert tries.read_text().splitlines() == [line.split(f"{command} ", 1)[1]] * calls
    assert (slept.read_text().split() if slept.exists() else []) == ["10"] * (calls - 1)
    assert done.stdout.splitlines()[-1] == ("Done" if returncode == 0 else failure)


def test_a_reboot_arms_the_runs_shutdown_again_for_what_is_left_of_its_first_boots_deadline(tmp_path):
    """The first boot's `shutdown -h +N` is held in /run, which a reboot empties, and user-data does not run again:
    the per-boot script it leaves (run as cloud-init runs it, an executable file) arms the shutdown for what is left,
    powers the machine off past the deadline, and arms the run's whole time where it cannot read the deadline."""
    state, per_boot = tmp_path / "state", tmp_path / "per-boot"
    text = shipped_user_data().replace("/var/lib/imagenet18", str(state)).replace(
        "/var/lib/cloud/scripts/per-boot", str(per_boot))
    first_boot = re.search(r"^shutdown -h \+.*?^chmod [^\n]*\n", text, re.M | re.S)[0]
    shutdowns = tmp_path / "shutdowns"
    env = fake_commands(tmp_path / "bin", {"shutdown": f'echo "$1 $2" >>{shutdowns}',
                                           "date": '[ "$1" = "+%s" ] && echo "$FAKE_NOW" || exec /bin/date "$@"'})
    start = 1_800_000_000

    def boot(script: list[str], seconds_after_start: int) -> str:
        subprocess.run(script, env={**env, "FAKE_NOW": str(start + seconds_after_start)}, check=True)
        said = shutdowns.read_text().splitlines()[-1]
        return said

    assert boot(["bash", "-euc", first_boot], 0) == "-h +60"
    [script] = per_boot.iterdir()
    assert boot([str(script)], 30 * 60 + 10) == "-h +30"
    assert boot([str(script)], 59 * 60 + 1) == "-h +1"
    assert boot([str(script)], 61 * 60) == "-h now"
    (state / "deadline").write_text("")
    assert boot([str(script)], 61 * 60) == "-h +60", "a deadline it cannot read: the run's whole time again"
