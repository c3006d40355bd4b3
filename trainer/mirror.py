"""Copy a run folder's small, changing files (metrics, heartbeats, logs, TensorBoard events) to an fsspec URL,
so an orchestrator that cannot mount the machines' shared file system (EFS) can follow the run.

Checkpoints and caches are not mirrored: checkpoints go to their own URL, caches are machine-local. Mirroring is
a side path: a copy that fails (the bucket unreachable, throttled, refused for a while) is reported and tried
again after a pause, and the next copy that works copies everything changed since the last one that did."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import fsspec

from trainer.side_path import SidePath

log = logging.getLogger(__name__)
LAST_COPY_SECONDS = 600.0  # how long the copy that ends a job (its exit code, its last log lines) keeps trying

# Exit codes go up only from their own machine, last, after everything they vouch for (`push` of named paths).
SKIPPED_FOLDERS = ("checkpoints", "cache", "exit")
SKIPPED_SUFFIXES = (".tmp", ".part")


class Mirror:
    def __init__(self, source: Path, url: str):
        self.source = source
        self.fs, self.base = fsspec.core.url_to_fs(url.rstrip("/"))
        self.copied: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) as last copied
        self.side_path = SidePath(f"copying {source} to {url}", log)

    def files(self) -> Iterable[Path]:
        for path in sorted(self.source.rglob("*")):
            relative = path.relative_to(self.source)
            if path.is_file() and relative.parts[0] not in SKIPPED_FOLDERS and path.suffix not in SKIPPED_SUFFIXES:
                yield path

    def push(self, paths: Iterable[Path] | None = None) -> None:
        """Copy what changed since the last push."""
        for path in self.files() if paths is None else paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self.copied.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            self.fs.put_file(str(path), f"{self.base}/{path.relative_to(self.source).as_posix()}")
            self.copied[path] = (stat.st_size, stat.st_mtime_ns)

    def follow(self, done: Callable[[], bool], every: float) -> None:
        """Push every `every` seconds until `done()` (a push that fails waits for its pause), then until the last
        state is there."""
        while not done():
            if self.side_path.due():
                self._try(None)
            time.sleep(every)
        self.push_until_copied()

    def push_until_copied(self, paths: list[Path] | None = None, seconds: float = LAST_COPY_SECONDS) -> None:
        """Push, and while that fails, push again after each pause; raises the last error after `seconds`."""
        deadline = time.monotonic() + seconds
        while (error := self._try(paths)) is not None:
            if time.monotonic() + self.side_path.pause() > deadline:
                raise error
            time.sleep(self.side_path.pause())

    def _try(self, paths: list[Path] | None) -> Exception | None:
        """Push; the error, reported, if it failed."""
        try:
            self.push(paths)
        except Exception as exc:  # noqa: BLE001 - fsspec's stores raise OSError, botocore's errors, timeouts...
            self.side_path.failed(exc)
            return exc
        self.side_path.succeeded()
        return None


def exits_written(source: Path, expected: int, pattern: str = "*") -> Callable[[], bool]:
    """A stop condition: every machine has left its exit code in SOURCE/exit/ (files matching `pattern`)."""
    return lambda: len(list((source / "exit").glob(pattern))) >= expected
