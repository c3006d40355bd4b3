"""Small, real filesystems for tests of a full disk: a tmpfs of a few megabytes, filled by a ballast file."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(path: Path, megabytes: int, files: int | None = None) -> Iterator[Path]:
    """A tmpfs of `megabytes` (and room for at most `files` files, links and folders, where given) mounted at
    `path` (made here) while the context lasts; skips the test where this process may not mount one (not root, no
    CAP_SYS_ADMIN). CI runs as root."""
    path.mkdir(parents=True)
    options = f"size={megabytes}m" + (f",nr_inodes={files}" if files else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk is full (ENOSPC); returns it, so that deleting it frees the disk."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):  # megabytes, then pages, then bytes: nothing left over
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return ballast
