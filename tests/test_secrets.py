"""Canary secrets (AWS keys, WANDB_API_KEY) through a whole AWS run: in no log, artifact, parameter, user-data,
command line (the machines' processes, sampled from /proc while the run runs), file the system writes, or record
in the Prefect API's database."""

from pathlib import Path

import boto3
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

from flows.imagenet18 import imagenet18
from tests.awssim.player import INSTANCE_ENV
from tests.prefect_server import all_flow_run_logs
from tests.processes import command_lines_seen
from tests.aws_runs import DATASET, options

# Each test here trains or runs a flow: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow

CANARIES = {
    "AWS_ACCESS_KEY_ID": "AKIACANARY1800000000",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-" + "0123456789" * 2,
    "WANDB_API_KEY": "canary" + "0123456789abcdef" * 2 + "wxyz",  # 40 characters, like a real key
}


@pytest.fixture
def canaries(monkeypatch):
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")  # forwarded to the machines, which have no internet here
    return [value.encode() for value in CANARIES.values()]


def files_under(*roots):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def prefect_database() -> list[Path]:
    """The Prefect API's SQLite file and its write-ahead log, where recent writes may still be."""
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    return [path for path in (database, Path(f"{database}-wal")) if path.exists()]


def test_no_secret_is_written_anywhere(prefect_api, aws, tiny_data, canaries):
    aws.make_snapshot(tiny_data.parent, description=DATASET)
    with command_lines_seen(INSTANCE_ENV) as machine_commands:
        state = imagenet18(machines=2, backend="aws", instance_type="g5.xlarge", dataset=DATASET,
                           schedule="cpu-tiny", epochs=1, max_hours=1.0, aws=options(), return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id

    instances = {played["instance_id"] for played in aws.played()}
    assert len(instances) == 2, "both machines ran commands"
    sent = sorted(aws.root.glob("commands/*/*/script.sh"))
    assert sum('export WANDB_API_KEY="$value"' in path.read_text() for path in sent) == 2, "read on each machine"

    command_lines = [" ".join(line) for instance in instances for line in machine_commands[instance]]
    assert any("trainer train" in line for line in command_lines), "the trainer's own command lines were seen"
    for line in command_lines:
        assert not any(canary.decode() in line for canary in canaries), f"a secret is on the command line {line}"

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    published = "\n".join(f"{a.key} {a.description} {a.data}" for a in artifacts)
    assert artifacts and not any(canary.decode() in published for canary in canaries), "a secret is in an artifact"

    database = b"".join(path.read_bytes() for path in prefect_database())
    assert str(flow_run_id).encode() in database, "the run's own database"
    assert not any(canary in database for canary in canaries), "a secret is in the Prefect database"

    for path in files_under(aws.root, prefect_api):
        content = path.read_bytes()
        for canary in canaries:
            assert canary not in content, f"a secret is in {path}"

    s3, keys, machine_logs = boto3.client("s3"), [], []
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                keys.append(item["Key"])
                body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                assert not any(canary in body for canary in canaries), f"a secret is in s3://{item['Key']}"
                if "/logs/train-" in item["Key"]:
                    machine_logs.append(body.decode())
    assert any(key.endswith(".wandb") for key in keys), "wandb ran (offline) on the machines; its files are kept"
    assert len(machine_logs) == 2 and not any("could not read WANDB_API_KEY" in log for log in machine_logs), \
        "each machine read the key"
    assert not any("HOME are defined" in log for log in machine_logs), "wandb finds a home (SSM's agent sets none)"
    for command in boto3.client("ssm").list_commands()["Commands"]:
        assert not any(canary.decode() in str(command["Parameters"]) for canary in canaries)

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    logs = all_flow_run_logs(flow_run_id)
    recorded = str(run.parameters) + "\n".join(log.message for log in logs)
    assert logs and not any(canary.decode() in recorded for canary in canaries)
