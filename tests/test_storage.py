"""fsspec storage: checkpoints to a URL, data synced from a URL (fsspec's in-memory filesystem, and the AWS
simulator's S3)."""

import threading
import time

import fsspec
import pytest
import torch

from tasks.backends.aws import snapshots
from trainer import checkpoint, sync
from trainer.layout import DataError


def _state(epoch: int) -> checkpoint.CheckpointState:
    return checkpoint.CheckpointState("resnet10", ["cat"], "cpu-tiny", "f00d", epoch, 1.5, {"w": torch.arange(4.0)},
                                      {}, [], 0, {}, None, None)


@pytest.fixture
def memory_fs():
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/bucket"):
        fs.rm("/bucket", recursive=True)


def test_checkpoint_round_trip_through_a_url(memory_fs):
    path = _state(3).save("memory://bucket/run1/checkpoints")
    assert path.endswith("run1/checkpoints/checkpoint.pt")
    assert checkpoint.exists("memory://bucket/run1/checkpoints")
    loaded = checkpoint.CheckpointState.load("memory://bucket/run1/checkpoints")
    assert loaded.epoch == 3 and torch.equal(loaded.model["w"], torch.arange(4.0))


def test_local_checkpoint_is_replaced_atomically(tmp_path):
    _state(1).save(str(tmp_path))
    _state(2).save(str(tmp_path))
    assert checkpoint.CheckpointState.load(str(tmp_path / "checkpoint.pt")).epoch == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file is left"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.CheckpointState.load(str(tmp_path))


def test_data_url_is_synced_once(memory_fs, tmp_path):
    for split in ("train", "validation"):
        for suffix in ("", "-sz/160"):
            memory_fs.pipe(f"/bucket/imagenet{suffix}/{split}/cat/a.JPEG", b"jpeg-bytes-" + suffix.encode())
    destination = sync.local_root("memory://bucket/imagenet", tmp_path)
    assert destination.is_relative_to(tmp_path)
    assert sync.sync("memory://bucket/imagenet", destination, ["", "-sz/160"]) == 4
    assert (destination / "train/cat/a.JPEG").read_bytes() == b"jpeg-bytes-"
    assert (tmp_path / destination.parent.name / "data-sz/160/validation/cat/a.JPEG").is_file()
    assert sync.sync("memory://bucket/imagenet", destination, ["", "-sz/160"]) == 0, "already there"


def test_an_interrupted_data_sync_resumes_with_the_files_it_lacks(memory_fs, tmp_path, monkeypatch):
    for name in "abcd":
        memory_fs.pipe(f"/bucket/imagenet/train/cat/{name}.JPEG", name.encode() * 1000)
    destination = sync.local_root("memory://bucket/imagenet", tmp_path)
    get_file = memory_fs.get_file

    def cut_c_short(remote_path, local_path, **kwargs):
        if remote_path.endswith("/c.JPEG"):
            with open(local_path, "wb") as partial:
                partial.write(memory_fs.cat_file(remote_path)[:500])
            raise ConnectionError("injected: connection lost mid-file")
        return get_file(remote_path, local_path, **kwargs)

    monkeypatch.setattr(memory_fs, "get_file", cut_c_short)
    with pytest.raises(ConnectionError):
        sync.sync("memory://bucket/imagenet", destination, [""])
    monkeypatch.undo()
    sizes = {f.name: f.stat().st_size for f in (destination / "train/cat").iterdir()}
    assert sizes.pop("c.JPEG.part") == 500 and set(sizes) <= {"a.JPEG", "b.JPEG", "d.JPEG"}
    assert set(sizes.values()) <= {1000}, "a file is there whole, or under its .part name"
    (destination / "train/cat/b.JPEG").write_bytes(b"b" * 10)  # a copy cut short some other way
    whole = {n: (destination / f"train/cat/{n}.JPEG").stat().st_ino for n in "ad" if f"{n}.JPEG" in sizes}

    assert sync.sync("memory://bucket/imagenet", destination, [""]) == 4 - len(whole), "all but the whole ones"
    assert sorted(f.name for f in (destination / "train/cat").iterdir()) == [f"{n}.JPEG" for n in "abcd"]
    assert all((destination / f"train/cat/{n}.JPEG").read_bytes() == n.encode() * 1000 for n in "abcd")
    assert all((destination / f"train/cat/{n}.JPEG").stat().st_ino == inode for n, inode in whole.items()), \
        "a whole file is not copied again"


def test_a_data_sync_keeps_many_copies_in_flight_and_no_more(memory_fs, tmp_path, monkeypatch):
    """An object store answers each GET in tens of milliseconds: ImageNet's 1.3 million files copied one after
    another would take days (the snapshot builder has 6 hours), so copies overlap, up to copies_at_once."""
    for index in range(40):
        memory_fs.pipe(f"/bucket/imagenet/train/cat/{index}.JPEG", b"jpeg")
    get_file, lock, in_flight, peak = memory_fs.get_file, threading.Lock(), [0], [0]

    def a_round_trip_long(remote_path, local_path, **kwargs):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return get_file(remote_path, local_path, **kwargs)

    monkeypatch.setattr(memory_fs, "get_file", a_round_trip_long)
    assert sync.sync("memory://bucket/imagenet", tmp_path / "data", [""], copies_at_once=8) == 40
    assert 1 < peak[0] <= 8, peak[0]


def test_a_data_sync_from_s3_has_as_many_gets_in_flight_as_copies(aws, tmp_path):
    """s3fs's client keeps botocore's 10 connections unless told more: 20 copies at once would wait for 10."""
    s3 = aws.make_bucket("datasets")
    for index in range(40):
        s3.put_object(Bucket="datasets", Key=f"imagenet/train/cat/{index}.JPEG", Body=b"jpeg")
    aws.set_s3_round_trip(0.3)
    assert sync.sync("s3://datasets/imagenet", tmp_path / "data", [""], copies_at_once=20) == 40
    assert aws.s3_reads_at_once() > 10
    assert (tmp_path / "data/train/cat/39.JPEG").read_bytes() == b"jpeg"


def test_a_dataset_in_another_accounts_requester_pays_bucket_is_sized_and_synced(aws, tmp_path):
    """Big public datasets are often in Requester Pays buckets, which refuse (403) another account's reads that do
    not say they pay."""
    aws.make_foreign_bucket("public-datasets", requester_pays=True, objects={
        f"imagenet/train/cat/{n}.JPEG": "jpeg" for n in range(3)}, policy={"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
             "Resource": ["arn:aws:s3:::public-datasets", "arn:aws:s3:::public-datasets/*"]}]})
    assert snapshots.dataset_size_gb("s3://public-datasets/imagenet", []) == 10, "the smallest snapshot"
    assert sync.sync("s3://public-datasets/imagenet", tmp_path / "data", [""]) == 3
    assert (tmp_path / "data/train/cat/2.JPEG").read_bytes() == b"jpeg"


def test_missing_remote_folder(memory_fs, tmp_path):
    memory_fs.pipe("/bucket/imagenet/train/cat/a.JPEG", b"x")
    with pytest.raises(DataError, match="memory://bucket/imagenet-sz/352 does not exist"):
        sync.sync("memory://bucket/imagenet", tmp_path / "data", ["-sz/352"])


def test_local_paths_are_read_in_place(tmp_path):
    assert sync.local_root("file:///data/imagenet", tmp_path).as_posix() == "/data/imagenet"
    assert sync.local_root("/data/imagenet", tmp_path).as_posix() == "/data/imagenet"
    assert not sync.is_remote("file:///data/imagenet") and sync.is_remote("s3://b/imagenet")
