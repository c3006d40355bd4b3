"""The trainer's file contract (trainer/records.py): every metrics.jsonl record and summary.json read back as
written, and text that is none of them refused with the reason; the checkpoint state saved and restored whole,
including a checkpoint written as a plain dict before CheckpointState existed."""

import io
import json
import logging
import math
import random

import pytest
import torch

from tasks.relay import MetricsRelay
from tests.support import EPOCH_NUMBERS
from trainer import checkpoint
from trainer.model import build_model, build_optimizer
from trainer.records import (Best, CheckpointRecord, EndRecord, Epoch, EpochRecord, HeartbeatRecord, RecordError,
                             RunSummary, StartRecord, TargetRecord, WandbRecord, read_record)

RECORDS = [
    StartRecord(config={"schedule": "cpu-tiny", "world_size": 2}, train_images=640),
    HeartbeatRecord(epoch=1, batch=5, batches=20),
    EpochRecord(**EPOCH_NUMBERS),
    CheckpointRecord(epoch=4, path="/runs/r/checkpoints/checkpoint.pt"),
    TargetRecord(epoch=3, hours=0.0123456789, metric="top5", value=88.25, target=88.0),
    WandbRecord(status="offline", url=None, dir="/runs/r/wandb/offline-run-1", reason="wandb is unreachable"),
    EndRecord(status="failed", error="RuntimeError: boom"),
    EndRecord(status="completed", hours=0.05, top1=41.5, top5=88.25, target_epoch=3, target_hours=0.0123),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.type)
def test_every_metrics_record_reads_back_as_written(record):
    line = record.line()
    assert line.endswith("\n") and line.count("\n") == 1
    assert f'"type": "{record.type}"' in line, "readers that look for the kind in the text still find it"
    assert read_record(line) == record


def test_a_nan_loss_is_written_as_json_writes_it_and_read_back():
    line = EpochRecord(**{**EPOCH_NUMBERS, "train_loss": math.nan}).line()
    assert '"train_loss": NaN' in line
    assert math.isnan(read_record(line).train_loss)


@pytest.mark.parametrize("line,problem", [
    ('{"type": "epoch", "epoch": 0', "Invalid JSON"),
    ('{"type": "progress", "epoch": 0}', "Input tag 'progress' found using 'type' does not match"),
    ('{"epoch": 0}', "Unable to extract tag using discriminator 'type'"),
    ('{"type": "epoch", "epoch": 0, "time": 1}', "epoch.hours: Field required"),
    ('{"type": "heartbeat", "time": 1, "epoch": "one", "batch": 0, "batches": 1}', "heartbeat.epoch: Input should be"),
    ('{"type": "end", "time": 1, "status": "completed", "colour": "red"}', "end.colour: Extra inputs are not"),
])
def test_a_line_that_is_no_record_is_refused_saying_why(line, problem):
    with pytest.raises(RecordError, match="not a trainer record") as raised:
        read_record(line)
    assert problem in str(raised.value) and line[:20] in str(raised.value)


def test_the_relay_skips_a_line_that_is_no_record_and_keeps_the_rest(caplog):
    class Storage:
        def read_storage(self, cluster, name, offset=0):
            assert name == "metrics.jsonl"
            return (HeartbeatRecord(epoch=0, batch=1, batches=2).line() + '{"type": "progress"}\n'
                    + EpochRecord(**EPOCH_NUMBERS).line()).encode()[offset:]

    relay = MetricsRelay()
    with caplog.at_level(logging.WARNING):
        epochs = relay.poll(Storage(), None, logging.getLogger("test-records"))
    assert [record.numbers for record in epochs] == [Epoch(**EPOCH_NUMBERS)]
    assert "skipping a metrics line: not a trainer record (Input tag 'progress'" in caplog.text


def test_the_summary_reads_back_as_written(tmp_path):
    summary = RunSummary(run_name="r", logdir=str(tmp_path), schedule="cpu-tiny", arch="resnet10", world_size=2,
                         epochs=[Epoch(**EPOCH_NUMBERS)], target=88.0, target_epoch=3, target_hours=0.0123,
                         hours=0.05, best=Best(epoch=3, top1=41.5, top5=88.25, weights=None))
    summary.write(tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"][0] == EPOCH_NUMBERS
    assert RunSummary.read((tmp_path / "summary.json").read_text()) == summary
    assert summary.final == Epoch(**EPOCH_NUMBERS)


def test_a_summary_that_is_not_one_is_refused_saying_why():
    with pytest.raises(RecordError, match=r"not a run summary \(arch: Field required\)"):
        RunSummary.read('{"run_name": "r", "logdir": "/r", "schedule": "s", "world_size": 1}')
    with pytest.raises(RecordError, match=r"not a run summary \(epochs.0.hours: Field required\)"):
        RunSummary.read('{"run_name": "r", "logdir": "/r", "schedule": "s", "arch": "a", "world_size": 1, '
                        '"epochs": [{"epoch": 0}]}')


def _trained(steps: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model("resnet10", 3)
    optimizer = build_optimizer(model)
    for _ in range(steps):
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()
    return model, optimizer


def _old_format_checkpoint(model, optimizer, best: dict | None) -> dict:
    """A checkpoint as the trainer wrote it before CheckpointState: a dict of these keys."""
    state = {"format": 1, "arch": "resnet10", "classes": ["a", "b", "c"], "schedule_name": "cpu-tiny",
             "schedule_fingerprint": "f00d", "epoch": 4, "elapsed_seconds": 44.5, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "history": [EPOCH_NUMBERS], "examples_seen": 51200,
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "target_epoch": 3,
             "target_hours": 0.0123}
    return state if best is None else {**state, "best": best}


@pytest.mark.parametrize("best", [None, {"epoch": 3, "top1": 41.5, "top5": 88.25, "weights": "/c/best.pt"}],
                         ids=["before-best-pt", "with-best"])
def test_a_checkpoint_written_the_old_way_resumes_exactly(tmp_path, best):
    model, optimizer = _trained()
    buffer = io.BytesIO()
    torch.save(_old_format_checkpoint(model, optimizer, best), buffer)
    (tmp_path / "checkpoint.pt").write_bytes(buffer.getvalue())
    after_checkpoint = torch.rand(3)

    state = checkpoint.CheckpointState.load(str(tmp_path))
    assert (state.epoch, state.elapsed_seconds, state.examples_seen) == (4, 44.5, 51200)
    assert state.history == [Epoch(**EPOCH_NUMBERS)] and (state.target_epoch, state.target_hours) == (3, 0.0123)
    assert state.best == (Best(**best) if best else None)
    state.check_compatible("resnet10", "cpu-tiny", "f00d", ["a", "b", "c"])
    fresh_model = build_model("resnet10", 3)
    fresh_optimizer = build_optimizer(fresh_model)
    state.restore(fresh_model, fresh_optimizer)
    assert torch.equal(torch.rand(3), after_checkpoint), "the random generators continue where they were"
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], tensor), name
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh_optimizer.state_dict()["state"][0][key], value), key


def test_the_checkpoint_state_is_saved_as_the_dict_it_always_was(tmp_path):
    model, optimizer = _trained()
    best = {"epoch": 3, "top1": 41.5, "top5": 88.25, "weights": "/c/best.pt"}
    old = _old_format_checkpoint(model, optimizer, best)
    state = checkpoint.CheckpointState(
        "resnet10", ["a", "b", "c"], "cpu-tiny", "f00d", 4, 44.5, model.state_dict(), optimizer.state_dict(),
        [Epoch(**EPOCH_NUMBERS)], 51200, old["rng"], 3, 0.0123, Best(**best))
    state.save(str(tmp_path))
    written = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert written.keys() == old.keys()
    assert {k: v for k, v in written.items() if k not in ("model", "optimizer", "rng")} == \
        {k: v for k, v in old.items() if k not in ("model", "optimizer", "rng")}


def test_a_checkpoint_missing_a_field_is_refused_naming_it(tmp_path):
    model, optimizer = _trained(0)
    state = _old_format_checkpoint(model, optimizer, None)
    del state["examples_seen"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / "checkpoint.pt").write_bytes(buffer.getvalue())
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume from .*examples_seen"):
        checkpoint.CheckpointState.load(str(tmp_path))
