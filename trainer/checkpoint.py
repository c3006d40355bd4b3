"""Checkpoints to a local folder or an fsspec URL (s3://...), written so a reader never sees half a file."""

from __future__ import annotations

import io
import os

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

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


def save(location: str, state: dict) -> str:
    """Not a side path: a checkpoint that cannot be written raises (naming it), and the run stops."""
    fs, path = fsspec.core.url_to_fs(checkpoint_path(location))
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    with naming(checkpoint_path(location), "the checkpoint"):
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


def load(location: str) -> dict:
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


def check_compatible(state: dict, arch: str, schedule_name: str, fingerprint: str, classes: list[str]) -> None:
    """Refuse a resume from another model, schedule or class set before any training step."""
    if state["arch"] != arch:
        raise CheckpointError(f"checkpoint was trained as {state['arch']}, this run is {arch}")
    if state["schedule_fingerprint"] != fingerprint:
        raise CheckpointError(f"checkpoint was trained with schedule {state['schedule_name']!r} "
                              f"({state['schedule_fingerprint']}), this run uses {schedule_name!r} ({fingerprint})")
    if state["classes"] != classes:
        raise CheckpointError(f"checkpoint has {len(state['classes'])} classes, the data has {len(classes)} "
                              "(or they differ by name)")
