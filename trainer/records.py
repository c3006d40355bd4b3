"""The files a run writes for the pipeline, typed: each kind of metrics.jsonl record and summary.json, with the
writer the trainer uses and the reader the pipeline uses, so both sides hold one definition of each field.

A line or summary that is not one of these (torn JSON, an unknown `type`, a missing or mistyped field) is a
RecordError that says which.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class RecordError(ValueError):
    """Text that is not one of the trainer's records; the message says what is wrong with it."""


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Epoch(_Fields):
    """One epoch's numbers: a line of metrics.jsonl (as EpochRecord) and an entry of the summary's `epochs`."""
    epoch: int
    hours: float  # training clock at the epoch's end, rounded to the microhour
    top1: float
    top5: float
    val_loss: float
    train_loss: float
    train_top1: float
    train_top5: float
    lr: float
    size: int
    global_batch: int
    train_seconds: float
    eval_seconds: float
    images_per_second: float
    examples_seen: int  # TensorBoard's step at the epoch's end


class Best(_Fields):
    """The best epoch so far by the target metric, and where its weights are (None when checkpoints are off)."""
    epoch: int
    top1: float
    top5: float
    weights: str | None


class _Line(_Fields):
    time: float = Field(default_factory=time.time)

    def line(self) -> str:
        """The record as one line of metrics.jsonl; json.dumps keeps NaN losses and the `"type": ...` spacing."""
        return json.dumps({"type": self.type, **self.model_dump(exclude={"type"})}) + "\n"


class StartRecord(_Line):
    type: Literal["start"] = "start"
    config: dict
    train_images: int


class HeartbeatRecord(_Line):
    type: Literal["heartbeat"] = "heartbeat"
    epoch: int
    batch: int
    batches: int


class EpochRecord(_Line, Epoch):
    type: Literal["epoch"] = "epoch"

    @property
    def numbers(self) -> Epoch:
        return Epoch(**self.model_dump(exclude={"type", "time"}))


class CheckpointRecord(_Line):
    type: Literal["checkpoint"] = "checkpoint"
    epoch: int  # the epoch a restart resumes at
    path: str


class TargetRecord(_Line):
    """The time to target, said when the trainer first sees the target metric reach the target."""
    type: Literal["target"] = "target"
    epoch: int
    hours: float
    metric: str
    value: float
    target: float


class WandbRecord(_Line):
    type: Literal["wandb"] = "wandb"
    status: str  # online, offline or off
    url: str | None
    dir: str | None
    reason: str | None  # why wandb went offline or off; None while it works as asked


class EndRecord(_Line):
    type: Literal["end"] = "end"
    status: Literal["completed", "failed"]
    error: str | None = None  # failed: the exception
    hours: float | None = None  # completed: the rest
    top1: float | None = None
    top5: float | None = None
    target_epoch: int | None = None
    target_hours: float | None = None


Record = Annotated[Union[StartRecord, HeartbeatRecord, EpochRecord, CheckpointRecord, TargetRecord, WandbRecord,
                         EndRecord], Field(discriminator="type")]
_RECORD = TypeAdapter(Record)


def read_record(line: str) -> Record:
    """One line of metrics.jsonl as its record."""
    try:
        return _RECORD.validate_json(line)
    except ValidationError as exc:
        raise RecordError(f"not a trainer record ({_first_problem(exc)}): {line.strip()[:200]}") from None


class RunSummary(_Fields):
    """summary.json: what the run did, written once at its end."""
    run_name: str
    logdir: str
    schedule: str
    arch: str
    world_size: int
    epochs: list[Epoch] = []
    target: float = 93.0
    target_metric: str = "top5"
    target_epoch: int | None = None  # the time to target: the first epoch whose target metric reached it,
    target_hours: float | None = None  # and the training clock then, as the trainer saw them (its `target` record)
    hours: float = 0.0
    resumed_from_epoch: int | None = None
    accuracy_of: str = "the last epoch"  # which weights top1/top5 in `final` describe; `best` names the others
    best: Best | None = None

    @property
    def final(self) -> Epoch | None:
        return self.epochs[-1] if self.epochs else None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(), indent=2))  # as json.dumps: a NaN loss stays NaN, not null

    @classmethod
    def read(cls, text: str | bytes) -> RunSummary:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise RecordError(f"not a run summary ({_first_problem(exc)})") from None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {error['msg']}" if where else error["msg"]
