"""Data given as an fsspec URL (s3://, file://, ...) is copied to local disk before training reads it."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from trainer.layout import DataError

log = logging.getLogger(__name__)


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local_root(location: str, cache_dir: Path) -> Path:
    """Where the data is read from: the path itself, or the cache folder a URL is synced into."""
    if location.startswith("file://"):
        return Path(location[len("file://"):])
    if not is_remote(location):
        return Path(location)
    return cache_dir / hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16] / "data"


def sync(url: str, destination: Path, suffixes: list[str]) -> int:
    """Copy URL + suffix for each suffix ("" and e.g. "-sz/160") to destination + suffix; files already
    there with the same size are kept, so an interrupted sync resumes. Returns the files copied."""
    fs, base = fsspec.core.url_to_fs(url.rstrip("/"))
    if isinstance(fs, LocalFileSystem):
        raise ValueError(f"{url} is local; read it in place")
    copied = 0
    for suffix in suffixes:
        source = base + suffix
        if not fs.isdir(source):
            raise DataError(f"{url.rstrip('/')}{suffix} does not exist or is not a folder")
        target = Path(str(destination) + suffix)
        for remote_path, info in fs.find(source, detail=True).items():
            local_path = target / os.path.relpath(remote_path, source)
            if local_path.is_file() and local_path.stat().st_size == info["size"]:
                continue
            local_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = local_path.with_name(local_path.name + ".part")
            fs.get_file(remote_path, str(tmp))
            os.replace(tmp, local_path)
            copied += 1
        log.info("synced %s%s to %s (%d files copied)", url.rstrip("/"), suffix, target, copied)
    return copied
