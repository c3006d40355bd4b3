"""Copy a run folder's small, changing files (metrics, heartbeats, logs, TensorBoard events) to an fsspec URL,
so an orchestrator that cannot mount the machines' shared file system (EFS) can follow the run.

Checkpoints and caches are not mirrored: checkpoints go to their own URL, caches are machine-local."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import fsspec

log = logging.getLogger(__name__)

# Exit codes go up only from their own machine, last, after everything they vouch for (`push` of named paths).
SKIPPED_FOLDERS = ("checkpoints", "cache", "exit")
SKIPPED_SUFFIXES = (".tmp", ".part")


class Mirror:
    def __init__(self, source: Path, url: str):
        self.source = source
        self.fs, self.base = fsspec.core.url_to_fs(url.rstrip("/"))
        self.copied: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) as last copied

    def files(self) -> Iterable[Path]:
        for path in sorted(self.source.rglob("*")):
            relative = path.relative_to(self.source)
            if path.is_file() and relative.parts[0] not in SKIPPED_FOLDERS and path.suffix not in SKIPPED_SUFFIXES:
                yield path

    def push(self, paths: Iterable[Path] | None = None) -> int:
        """Copy what changed since the last push; returns how many files were copied."""
        copied = 0
        for path in self.files() if paths is None else paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self.copied.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            self.fs.put_file(str(path), f"{self.base}/{path.relative_to(self.source).as_posix()}")
            self.copied[path] = (stat.st_size, stat.st_mtime_ns)
            copied += 1
        return copied

    def follow(self, done: Callable[[], bool], every: float) -> None:
        """Push every `every` seconds until `done()`, then once more so the last state is there."""
        while not done():
            self.push()
            time.sleep(every)
        self.push()


def exits_written(source: Path, expected: int, pattern: str = "*") -> Callable[[], bool]:
    """A stop condition: every machine has left its exit code in SOURCE/exit/ (files matching `pattern`)."""
    return lambda: len(list((source / "exit").glob(pattern))) >= expected
