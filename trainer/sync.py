"""Data given as an fsspec URL (s3://, file://, ...) is copied to local disk before training reads it."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from trainer.layout import DataError

log = logging.getLogger(__name__)
COPIES_AT_ONCE = 64  # files copied at once (_copy_all)


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local_root(location: str, cache_dir: Path) -> Path:
    """Where the data is read from: the path itself, or the cache folder a URL is synced into."""
    if location.startswith("file://"):
        return Path(location[len("file://"):])
    if not is_remote(location):
        return Path(location)
    return cache_dir / hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16] / "data"


def sync(url: str, destination: Path, suffixes: list[str], copies_at_once: int = COPIES_AT_ONCE) -> int:
    """Copy URL + suffix for each suffix ("" and e.g. "-sz/160") to destination + suffix; files already
    there with the same size are kept, so an interrupted sync resumes. Returns the files copied."""
    fs, base = dataset_filesystem(url, copies_at_once)
    if isinstance(fs, LocalFileSystem):
        raise ValueError(f"{url} is local; read it in place")
    copied = 0
    for suffix in suffixes:
        source = base + suffix
        if not fs.isdir(source):
            raise DataError(f"{url.rstrip('/')}{suffix} does not exist or is not a folder")
        target = Path(str(destination) + suffix)
        copied += _copy_all(fs, _lacking(fs, source, target), copies_at_once)
        log.info("synced %s%s to %s (%d files copied)", url.rstrip("/"), suffix, target, copied)
    return copied


def dataset_filesystem(url: str, connections: int = COPIES_AT_ONCE) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and path of a dataset at URL. On s3://, reads say that they pay for their requests, so a
    Requester Pays bucket (as big public datasets often are) reads as any other, where S3 would answer 403 (a bucket
    that is not, or its owner, pays no heed); and the client has `connections` connections, where s3fs's keeps
    botocore's 10 and more copies at once than that would wait for one."""
    options = ({"requester_pays": True, "config_kwargs": {"max_pool_connections": connections}}
               if fsspec.utils.get_protocol(url) in ("s3", "s3a") else {})
    return fsspec.core.url_to_fs(url.rstrip("/"), **options)


def _lacking(fs, source: str, target: Path) -> Iterator[tuple[str, Path]]:
    """(remote, local) for each file under source not already whole under target."""
    for remote_path, info in fs.find(source, detail=True).items():
        local_path = target / os.path.relpath(remote_path, source)
        if not (local_path.is_file() and local_path.stat().st_size == info["size"]):
            yield remote_path, local_path


def _copy_all(fs, pairs: Iterable[tuple[str, Path]], copies_at_once: int) -> int:
    """Each (remote, local) pair copied, `copies_at_once` at a time: an object store answers each GET in tens of
    milliseconds, which one copy after another makes days for ImageNet's 1.3 million files. No more are submitted
    than are copying (4 million queued copies would hold gigabytes). The first failure stops what has not started;
    what has finishes, so the next sync keeps it. Returns the files copied."""
    copied, in_flight = 0, set()
    with ThreadPoolExecutor(copies_at_once, thread_name_prefix="sync") as pool:
        for remote_path, local_path in pairs:
            if len(in_flight) >= copies_at_once:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                copied += _finished(done)
            in_flight.add(pool.submit(_copy, fs, remote_path, local_path))
        copied += _finished(wait(in_flight)[0])
    return copied


def _finished(futures: set) -> int:
    for future in futures:
        future.result()  # the first failure raises, and the pool's exit waits for the copies still running
    return len(futures)


def _copy(fs, remote_path: str, local_path: Path) -> None:
    local_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = local_path.with_name(local_path.name + ".part")
    fs.get_file(remote_path, str(tmp))
    os.replace(tmp, local_path)
