"""fsspec storage: checkpoints to a URL, data synced from a URL (fsspec's in-memory filesystem)."""

import fsspec
import pytest
import torch

from trainer import checkpoint, sync
from trainer.layout import DataError


@pytest.fixture
def memory_fs():
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/bucket"):
        fs.rm("/bucket", recursive=True)


def test_checkpoint_round_trip_through_a_url(memory_fs):
    state = {"arch": "resnet10", "epoch": 3, "model": {"w": torch.arange(4.0)}}
    path = checkpoint.save("memory://bucket/run1/checkpoints", state)
    assert path.endswith("run1/checkpoints/checkpoint.pt")
    assert checkpoint.exists("memory://bucket/run1/checkpoints")
    loaded = checkpoint.load("memory://bucket/run1/checkpoints")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))


def test_local_checkpoint_is_replaced_atomically(tmp_path):
    checkpoint.save(str(tmp_path), {"epoch": 1})
    checkpoint.save(str(tmp_path), {"epoch": 2})
    assert checkpoint.load(str(tmp_path / "checkpoint.pt"))["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file is left"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load(str(tmp_path))


def test_data_url_is_synced_once_and_resumes(memory_fs, tmp_path):
    for split in ("train", "validation"):
        for suffix in ("", "-sz/160"):
            memory_fs.pipe(f"/bucket/imagenet{suffix}/{split}/cat/a.JPEG", b"jpeg-bytes-" + suffix.encode())
    destination = sync.local_root("memory://bucket/imagenet", tmp_path)
    assert destination.is_relative_to(tmp_path)
    assert sync.sync("memory://bucket/imagenet", destination, ["", "-sz/160"]) == 4
    assert (destination / "train/cat/a.JPEG").read_bytes() == b"jpeg-bytes-"
    assert (tmp_path / destination.parent.name / "data-sz/160/validation/cat/a.JPEG").is_file()
    assert sync.sync("memory://bucket/imagenet", destination, ["", "-sz/160"]) == 0, "already there"


def test_missing_remote_folder(memory_fs, tmp_path):
    memory_fs.pipe("/bucket/imagenet/train/cat/a.JPEG", b"x")
    with pytest.raises(DataError, match="memory://bucket/imagenet-sz/352 does not exist"):
        sync.sync("memory://bucket/imagenet", tmp_path / "data", ["-sz/352"])


def test_local_paths_are_read_in_place(tmp_path):
    assert sync.local_root("file:///data/imagenet", tmp_path).as_posix() == "/data/imagenet"
    assert sync.local_root("/data/imagenet", tmp_path).as_posix() == "/data/imagenet"
    assert not sync.is_remote("file:///data/imagenet") and sync.is_remote("s3://b/imagenet")
