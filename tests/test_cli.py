"""`imagenet18`'s bad input: one clear line, exit code 2, and no flow run (the preflight runs first); and the
environment it gives Prefect."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import cli
from tasks.parameters import RunParameters
from tasks import stages
from tasks.backends.base import Cluster, Machine
from tasks.planning import plan_run
from tests.leftovers import local_leftovers
from tests.prefect_server import flow_run_logs
from trainer import cli as trainer_cli
from trainer import schedule

IMAGENET18 = str(Path(sys.executable).parent / "imagenet18")


@pytest.mark.parametrize("args,message", [
    (["run", "--dataset", "/nonexistent/imagenet"], "error: dataset /nonexistent/imagenet does not exist"),
    (["run", "--dataset", "s3://team/imagenet"], "error: the local backend replicates a local folder, not "
                                                 "s3://team/imagenet"),
    (["run", "--backend", "aws", "--schedule", "auto"], "error: schedule auto is derived from the dataset's images, "
     "read on this machine, and an AWS run's dataset is a snapshot: name a schedule"),
    (["run", "--schedule", "seed-3"], "error: unknown schedule 'seed-3'"),
    (["run", "--backend", "aws"], "error: no AWS credentials: set AWS_PROFILE"),
    (["run", "--backend", "aws", "--region", "moon-1"], "error: unknown AWS region 'moon-1'"),
    (["run", "--spot"], "error: --spot needs a cloud backend"),
    (["run", "--bucket", "team-results", "--zone", "us-east-1b"], "error: --zone, --bucket: the aws backend's, which "
     "a local run would ignore; add --backend aws, or leave them out"),
    (["run", "--max-hours", "0"], "error: max_hours: Input should be greater than 0"),
    (["run", "--backend", "aws", "--max-hours", "72"], "error: max_hours=72 is over the 48 h that SSM lets"),
    (["run", "--hang-minutes", "0"], "error: hang_minutes: Input should be greater than 0"),
    (["plan", "--budget-usd", "-1"], "error: budget_usd: Input should be greater than or equal to 0"),
    (["run", "--schedule", "cpu-tiny", "--epochs", "9"], "error: epochs=9 is past the end of schedule cpu-tiny, "
     "which trains 8 epochs: epochs stops a run early"),
    (["run", "--backend", "aws", "--schedule", "mine.toml"], "error: schedule file mine.toml: the machines install "
     "this checkout, and read the schedules in its trainer/schedules/"),
    (["replicate", "--backend", "aws", "--dataset", "imagenet18-backup"], "error: no AWS credentials: set AWS_PROFILE"),
    (["replicate", "--replicas", "0"], "error: replicas: Input should be greater than or equal to 1"),
    (["replicate", "--keep-hours", "0"], "error: keep_hours: Input should be greater than 0"),
    (["replicate", "--dataset", "/nonexistent/imagenet"], "error: dataset /nonexistent/imagenet does not exist"),
])
def test_bad_input_is_one_line_and_creates_no_flow_run(tmp_path, tiny_data, args, message):
    env = {"IMAGENET18_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    if "--dataset" not in args:
        args = [*args, "--dataset", str(tiny_data)]
    result = subprocess.run([IMAGENET18, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], "one line"
    assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "local").exists() and not (tmp_path / "runs").exists(), "nothing was created"


@pytest.mark.slow
def test_a_run_past_its_max_hours_is_stopped_and_says_where_its_results_are(tmp_path, tiny_data, prefect_api):
    """The command ended in a Python traceback (a TimeoutError), not saying where the run's checkpoints are."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "IMAGENET18_HOME": str(tmp_path / "home"), "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run([IMAGENET18, "run", "--machines", "1", "--dataset", str(tiny_data), "--max-hours",
                             "0.001"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.fullmatch(r"error: training ran past max_hours=0.001 and was stopped: its logs and checkpoints are in "
                        r"\S+/runs/\S+; a longer --max-hours gives it the time",
                        result.stderr.strip().splitlines()[-1]), result.stderr[-3000:]
    assert local_leftovers(tmp_path / "home") == {}


def test_machine_counts_are_the_seeds():
    result = subprocess.run([IMAGENET18, "run", "--machines", "3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice: 3 (choose from 1, 2, 4, 8, 16)" in result.stderr


BACKEND_LOG_SCRIPT = """
import logging, os
from deployments.cli import PREFECT_ENVIRONMENT
for name, value in PREFECT_ENVIRONMENT.items():  # as `imagenet18` sets them, before Prefect is imported
    os.environ.setdefault(name, value)
from prefect import flow, task

@task
def provision():
    logging.getLogger("tasks.backends.aws.clients").warning("ec2.RunInstances: RequestLimitExceeded, attempt 2")

@flow
def run():
    provision()

print(run(return_state=True).state_details.flow_run_id)
"""


def test_the_backends_own_logs_reach_the_flow_runs_log(prefect_api):
    """AWS retries are logged by the backend (no Prefect there); with the CLI's environment they reach the UI."""
    from prefect.settings import PREFECT_API_URL

    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_LOGGING")}
    result = subprocess.run([sys.executable, "-c", BACKEND_LOG_SCRIPT], capture_output=True, text=True, timeout=120,
                            env={**env, "PREFECT_API_URL": PREFECT_API_URL.value()})
    assert result.returncode == 0, result.stderr[-3000:]
    flow_run_id = result.stdout.strip().splitlines()[-1]
    messages = [log.message for log in flow_run_logs(flow_run_id, until="RequestLimitExceeded, attempt 2")]
    assert any("RequestLimitExceeded, attempt 2" in m for m in messages), \
        f"the backend's warning is not in the flow run's log: {messages}"


@pytest.mark.parametrize("flag", [[], ["--compile"], ["--no-compile"]], ids=["auto", "compiled", "eager"])
def test_run_options_reach_the_trainer_command_each_machine_runs(tiny_data, flag):
    """On this machine's CPUs auto is off: the trainer gets --compile only when it is forced."""
    args = cli.parser().parse_args(["run", "--dataset", str(tiny_data), "--epochs", "3", *flag])
    command = _trainer_command(args, tiny_data)
    trainer_args = trainer_cli.parser().parse_args(command[command.index("trainer") + 1:])
    assert (trainer_args.compile, trainer_args.epochs, trainer_args.data) == (flag == ["--compile"], 3, str(tiny_data))
    assert "--node_rank=1" in command and "--nnodes=2" in command


def _trainer_command(args, data) -> list[str]:
    """What machine 1 of a two-machine run of the CLI's `args` runs."""
    plan = plan_run(RunParameters(**cli._flow_parameters(args, dry_run=False)), "run-id", "run-name")
    machines = (Machine(0, "local-0", "127.0.0.1", str(data)), Machine(1, "local-1", "127.0.0.1", str(data)))
    cluster = Cluster(plan.spec, machines, "/runs/run-name", 1, "", "/runs/run-name", sys.executable)
    return stages.trainer_command(plan, cluster, 1, 29500)


def test_a_schedule_file_named_from_here_reaches_the_machines_as_its_absolute_path(tiny_data, tmp_path, monkeypatch):
    """The trainer runs in each machine's own folder: `--schedule mine.toml` there would be another file."""
    (tmp_path / "mine.toml").write_text((Path(schedule.__file__).parent / "schedules" / "cpu-tiny.toml").read_text())
    monkeypatch.chdir(tmp_path)
    args = cli.parser().parse_args(["run", "--dataset", str(tiny_data), "--schedule", "mine.toml"])
    command = _trainer_command(args, tiny_data)
    assert trainer_cli.parser().parse_args(command[command.index("trainer") + 1:]).schedule == str(
        tmp_path / "mine.toml")


def test_a_gp3_replicas_throughput_is_a_cli_option():
    """gp3's free 3,000 IOPS allow 750 MiB/s: the refusal of the default 1,000 names `--throughput`."""
    args = cli.parser().parse_args(["run", "--backend", "aws", "--volume-type", "gp3", "--iops", "3000",
                                    "--throughput", "750"])
    assert cli._aws(args) == {"volume_type": "gp3", "iops": 3000, "throughput_mbps": 750}


@pytest.mark.parametrize("home, expected", [("rel", "work/rel"), ("~/x", "user/x")], ids=["relative", "tilde"])
def test_a_home_named_relative_or_with_a_tilde_is_the_absolute_folder_it_names(tmp_path, monkeypatch, home, expected):
    """The machines start in folders of their own (a local run's trainers in its run folder): a relative
    IMAGENET18_HOME would name another place to each, and `~` none at all (a systemd unit, prefect.yaml's env)."""
    from tasks.backends.local import LocalBackend
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("IMAGENET18_HOME", home)
    assert LocalBackend().runs == tmp_path.resolve() / expected / "runs"


def test_a_commands_own_runtime_error_is_raised_not_taken_for_an_api_that_does_not_answer(monkeypatch, capsys):
    """Only Prefect's "Failed to reach API" is said to be the configured API not answering."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def boom(args):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "serve", boom)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens on port 9
        with pytest.raises(RuntimeError, match="^boom$"):
            cli.main(["serve"])
    assert "does not answer" not in capsys.readouterr().err
