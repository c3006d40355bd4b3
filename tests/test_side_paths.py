"""What only reports keeps what it could not deliver, tries again after a pause, and delivers it all once it can:
TensorBoard events and metrics records on a real, small tmpfs that fills (the pauses' clock in the test's hands),
the S3 mirror and the orchestrator's relay against the simulator's bucket refusing them for a while, artifacts
for a Prefect API that does not answer."""

import json
import logging
import subprocess
import sys

from prefect.artifacts import MarkdownArtifact
from prefect.settings import PREFECT_API_URL, temporary_settings
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tasks.artifacts import Outbox
from tasks.backends.aws import AwsBackend
from tasks.backends.base import Cluster, Machine
from tasks.relay import MetricsRelay, Relay
from tests.disks import fill, small_disk
from tests.aws_runs import BUCKET, cluster_spec, options
from tests.support import EPOCH_NUMBERS, free_port, wait_for
from trainer.recorder import JsonLines, TensorBoardEvents
from trainer.records import EpochRecord
from trainer.side_path import LONGEST_PAUSE


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tensorboard_values_added_while_the_disk_is_full_are_written_once_it_is_freed(tmp_path):
    clock = Clock()
    with small_disk(tmp_path / "disk", 1) as disk:
        events = TensorBoardEvents(disk / "run", clock)
        events.scalars({"loss": 0.0}, 0)
        ballast = fill(disk)
        for step in range(1, 300):  # more than the events file's last page holds
            events.scalars({"loss": float(step)}, step)
            clock.now += 0.5  # several tries fail
        assert events.side_path.failures > 1
        ballast.unlink()
        clock.now += LONGEST_PAUSE
        events.scalars({"loss": 300.0}, 300)
        assert not events.side_path.failing
        events.close()
        written = EventAccumulator(str(disk / "run"))
        written.Reload()
        assert sorted({event.step for event in written.Scalars("loss")}) == list(range(301))


def test_records_appended_while_the_disk_is_full_follow_once_it_is_freed_and_no_line_is_torn(tmp_path):
    clock = Clock()
    with small_disk(tmp_path / "disk", 1) as disk:
        records = JsonLines(disk / "metrics.jsonl", clock)
        records.append(json.dumps({"n": 0}) + "\n")
        ballast = fill(disk)
        for n in range(1, 100):  # more than the file's last page holds: one append is cut short by the full disk
            records.append(json.dumps({"n": n, "padding": "x" * 100}) + "\n")
            clock.now += 0.5
        assert records.side_path.failures > 1
        ballast.unlink()
        clock.now += LONGEST_PAUSE
        records.append(json.dumps({"n": 100}) + "\n")
        records.close()
        lines = (disk / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(101))


def test_the_mirror_outlasts_a_bucket_that_refuses_copies_for_a_while_and_copies_what_it_missed(aws, tmp_path):
    aws.make_bucket("results")
    source = tmp_path / "run"
    (source / "exit").mkdir(parents=True)
    metrics = source / "metrics.jsonl"
    metrics.write_text('{"type": "start"}\n')
    aws.add_fault("s3", "PutObject", "AccessDenied", times=2)
    command = [sys.executable, "-m", "trainer", "mirror", str(source), "s3://results/runs/run", "--every", "0.1",
               "--until-exits", "1"]
    with open(tmp_path / "mirror.log", "w") as out:
        mirror = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: aws.fault_counts()[0]["fired"] == 2 or mirror.poll() is not None, 60, "two refused copies")
        with open(metrics, "a") as file:
            file.write('{"type": "epoch"}\n')
        (source / "exit" / "train-0").write_text("0\n")
        assert mirror.wait(timeout=120) == 0, (tmp_path / "mirror.log").read_text()
    finally:
        if mirror.poll() is None:
            mirror.kill()
    log = (tmp_path / "mirror.log").read_text()
    assert f"copying {source} to s3://results/runs/run failed (PermissionError: " in log
    assert "works again after 2 failed tries" in log
    copied = aws.client("s3").get_object(Bucket="results", Key="runs/run/metrics.jsonl")["Body"].read()
    assert copied == metrics.read_bytes()


def test_the_relay_outlasts_run_storage_it_cannot_read_for_a_while_and_catches_up(aws, caplog):
    aws.make_bucket(BUCKET)
    storage = f"s3://{BUCKET}/runs/relayed"
    epoch = EpochRecord(**EPOCH_NUMBERS)
    for key, body in (("metrics.jsonl", epoch.line()), ("logs/train-0.log", "~~0\t0.1\n")):
        aws.client("s3").put_object(Bucket=BUCKET, Key=f"runs/relayed/{key}", Body=body.encode())
    cluster = Cluster(cluster_spec("relayed", 1), (Machine(0, "i-0", "10.0.0.1", "/data"),), storage, 1, "",
                      "/efs/runs/relayed", "python3")
    backend, logger = AwsBackend(options()), logging.getLogger("test-relay")
    relay = Relay("train", 1, MetricsRelay(), logger)
    aws.add_fault("s3", "GetObject", "AccessDenied", times=2)
    with caplog.at_level(logging.INFO, logger="test-relay"):
        assert relay.poll(backend, cluster) == [] and relay.poll(backend, cluster, force=True) == []
        assert relay.poll(backend, cluster, force=True) == [epoch], "caught up"
    messages = [record.getMessage() for record in caplog.records]
    assert sum("from the run's storage failed (AccessDenied: " in message for message in messages) == 1
    assert any("works again after 2 failed tries" in message for message in messages)
    assert "machine 0 | ~~0\t0.1" in messages


def test_artifacts_the_prefect_api_does_not_take_are_kept_and_named_in_the_end(caplog):
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):  # nothing listens
        outbox = Outbox()
        outbox.send(MarkdownArtifact(markdown="# plan", key="imagenet18-plan"))
        outbox.send(MarkdownArtifact(markdown="# summary", key="imagenet18-summary"))
        assert outbox.deliver_before(0) == ["imagenet18-plan", "imagenet18-summary"]
    failures = [r for r in caplog.records if "sending artifacts to the Prefect API failed" in r.getMessage()]
    assert len(failures) == 1, "reported once, not at every try"
