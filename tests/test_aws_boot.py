"""The machines' boot script's own logic, run by bash here where it can run off a machine: the watch that restarts
an SSM agent that hibernated at boot (the simulator only reads the script; see tests/awssim/userdata.py)."""

import datetime as dt
import os
import re
import subprocess

import pytest

from tasks.backends.aws import machines
from tasks.backends.base import ClusterSpec

SNAP_UNIT = "snap.amazon-ssm-agent.amazon-ssm-agent.service"


def watch_function() -> str:
    spec = ClusterSpec("run-boot", "boot", 1, "p4d.24xlarge", False,
                       dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    shipped = machines.user_data(spec, ["vol-0123456789abcdef0"],
                                 machines.BootConfig("fs-0123", "us-east-1", "s3://bucket/code.tar.gz", 1.0))
    return re.search(r"^restart_hibernating_agent\(\) \{\n.*?^\}\n", shipped, re.M | re.S)[0]


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
    bin_dir, calls = tmp_path / "bin", tmp_path / "systemctl-calls"
    bin_dir.mkdir()
    for name, body in {"systemctl": f'echo "$*" >> {calls}', "sleep": "exit 0"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    agent_log = tmp_path / "amazon-ssm-agent.log"
    if log is not None:
        agent_log.write_text("".join(log))
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{watch_function()}restart_hibernating_agent {agent_log}"],
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert (calls.read_text().splitlines() if calls.exists() else []) == restarted
