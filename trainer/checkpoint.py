"""Checkpoints to a local folder or an fsspec URL (s3://...), written so a reader never sees half a file: the
state a restart resumes from (CheckpointState, checkpoint.pt) and the best epoch's weights (best.pt)."""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, fields

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from pydantic import ValidationError

from trainer.records import Best, Epoch
from trainer.written import naming

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the best epoch's weights: arch, classes, epoch, top1, top5, model
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot resume this run; the message says why."""


def checkpoint_path(location: str) -> str:
    """A folder (or URL prefix) holds `checkpoint.pt`; a path ending in .pt names the file itself."""
    return location if location.endswith(".pt") else location.rstrip("/") + "/" + CHECKPOINT_NAME


def best_path(location: str) -> str:
    """best.pt beside checkpoint.pt in a checkpoint folder (or URL prefix)."""
    return checkpoint_path(location).rsplit("/", 1)[0] + "/" + BEST_NAME


def exists(location: str) -> bool:
    """Whether the checkpoint is there, found by listing its folder rather than asking for the file: S3 answers
    a HEAD of a missing key with 403, not 404, to a caller who may list the bucket only under a prefix (a run's
    machines), and s3fs raises that as PermissionError
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html)."""
    fs, path = fsspec.core.url_to_fs(checkpoint_path(location))
    try:
        listed = fs.ls(fs._parent(path), detail=False, refresh=True)
    except FileNotFoundError:
        return False
    return fs._strip_protocol(path) in {fs._strip_protocol(name) for name in listed}


@dataclass
class CheckpointState:
    """What a restart resumes from, saved as a dict of these keys (and `format`) so checkpoints written before
    this class existed load too; `best` is None in those from before best.pt was kept."""
    arch: str
    classes: list[str]
    schedule_name: str
    schedule_fingerprint: str
    epoch: int  # the next epoch to train
    elapsed_seconds: float  # the training clock at the checkpoint
    model: dict  # the bare module's state_dict
    optimizer: dict
    history: list[Epoch]  # every epoch so far, the summary's `epochs`
    examples_seen: int  # TensorBoard's step
    rng: dict  # torch's, Python's, and CUDA's where there is CUDA: resume stays exact
    target_epoch: int | None
    target_hours: float | None
    best: Best | None = None

    def save(self, location: str) -> str:
        state = {field.name: getattr(self, field.name) for field in fields(self)}
        state["history"] = [epoch.model_dump() for epoch in self.history]
        state["best"] = self.best.model_dump() if self.best else None
        return _save(location, state, "the checkpoint")

    @classmethod
    def load(cls, location: str) -> CheckpointState:
        state = _load(location)
        try:
            return cls(**{field.name: state[field.name] for field in fields(cls)
                          if field.name in state and field.name not in ("history", "best")},
                       history=[Epoch(**epoch) for epoch in state["history"]],
                       best=Best(**state["best"]) if state.get("best") else None)
        except (KeyError, TypeError, ValidationError) as exc:
            raise CheckpointError(f"{checkpoint_path(location)} is an imagenet18 checkpoint this trainer cannot "
                                  f"resume from ({type(exc).__name__}: {exc})") from None

    def check_compatible(self, arch: str, schedule_name: str, fingerprint: str, classes: list[str]) -> None:
        """Refuse a resume from another model, schedule or class set before any training step."""
        if self.arch != arch:
            raise CheckpointError(f"checkpoint was trained as {self.arch}, this run is {arch}")
        if self.schedule_fingerprint != fingerprint:
            raise CheckpointError(f"checkpoint was trained with schedule {self.schedule_name!r} "
                                  f"({self.schedule_fingerprint}), this run uses {schedule_name!r} ({fingerprint})")
        if self.classes != classes:
            raise CheckpointError(f"checkpoint has {len(self.classes)} classes, the data has {len(classes)} "
                                  "(or they differ by name)")

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The weights, the optimizer's state and the random generators as they were at the checkpoint."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        torch.set_rng_state(self.rng["torch"])
        random.setstate(self.rng["python"])
        if "cuda" in self.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng["cuda"])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_best(location: str, arch: str, classes: list[str], best: Best, model: dict) -> str:
    """best.pt: the best epoch's weights, with what they are (arch, classes, epoch, top1, top5)."""
    return _save(location, {"arch": arch, "classes": classes, **best.model_dump(), "model": model}, "the best weights")


def _save(location: str, state: dict, what: str) -> str:
    """Not a side path: a checkpoint that cannot be written raises (naming it), and the run stops."""
    fs, path = fsspec.core.url_to_fs(checkpoint_path(location))
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    with naming(checkpoint_path(location), what):
        _write(fs, path, buffer)
    return path


def _write(fs: fsspec.AbstractFileSystem, path: str, buffer: io.BytesIO) -> None:
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)  # what a failed write filled
    else:
        # Object stores publish an object whole when its upload completes, so a direct write is atomic.
        with fs.open(path, "wb") as f:
            f.write(buffer.getbuffer())


def _load(location: str) -> dict:
    if not exists(location):
        raise CheckpointError(f"no checkpoint at {checkpoint_path(location)}")
    fs, path = fsspec.core.url_to_fs(checkpoint_path(location))
    with fs.open(path, "rb") as f:
        try:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a truncated or foreign file
            raise CheckpointError(f"{checkpoint_path(location)} is not a readable checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{checkpoint_path(location)} is not an imagenet18 checkpoint "
                              f"(format {FORMAT_VERSION})")
    return state
