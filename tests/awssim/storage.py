"""Contents of EBS volumes, snapshots and EFS file systems as directories, kept in step with moto's resources."""

import datetime as dt
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from . import backends

KINDS = ("volumes", "snapshots", "efs")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _copy(src: Path, dst: Path, link: bool, written_before: float | None = None) -> None:
    """Copy a tree; link=True shares the files' inodes (cp -al), so copies are instant and writers must replace
    files rather than edit them in place. A tree that changes while it is copied copies what could be read.
    written_before: leave out files modified at or after that time."""
    def unwritten(folder: str, names: list[str]) -> set[str]:
        if written_before is None:
            return set()
        return {name for name in names if os.path.isfile(os.path.join(folder, name))
                and os.path.getmtime(os.path.join(folder, name)) >= written_before}

    try:
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy if link else shutil.copy2,
                        ignore=unwritten, dirs_exist_ok=True)
    except shutil.Error:
        pass


def _cached_since(volume: Any) -> float | None:
    """A snapshot holds only what was written to the volume when it was asked for, not what the machine's OS
    still caches (AWS's CreateSnapshot documentation); the cache is written out when the volume is unmounted or
    the machine stops. Linux also writes back data older than 30 s, so a real snapshot misses only the last
    files written; here, to fail every time rather than now and then, nothing written since the volume was
    attached to its running machine is in it."""
    attachment = volume.attachment
    if attachment is None or attachment.instance.state != "running":
        return None
    return attachment.attach_time.replace(tzinfo=dt.timezone.utc).timestamp()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        for kind in KINDS:
            (root / kind).mkdir(parents=True, exist_ok=True)

    def volume_dir(self, volume_id: str) -> Path:
        return self.root / "volumes" / volume_id

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.root / "snapshots" / snapshot_id

    def efs_dir(self, file_system_id: str) -> Path:
        return self.root / "efs" / file_system_id

    def sync(self) -> None:
        """Give every moto volume, snapshot and file system a directory, and drop directories of deleted ones.

        Run right after each call that creates or deletes them, so a new snapshot copies its volume as it is
        then, and a volume made from a snapshot starts as a (linked) copy of it."""
        volumes, snapshots = {}, {}
        for _, _, ec2 in backends.ec2_all():
            volumes.update(dict(ec2.volumes))
            snapshots.update({k: s for k, s in list(ec2.snapshots.items()) if s.from_ami is None})
        file_systems = {k for _, _, efs in backends.efs_all() for k in list(efs.file_systems_by_id)}
        with self._lock:
            for snapshot_id, snapshot in snapshots.items():
                self._create(self.snapshot_dir(snapshot_id), self.volume_dir(snapshot.volume.id), link=False,
                             written_before=_cached_since(snapshot.volume))
            for volume_id, volume in volumes.items():
                source = self.snapshot_dir(volume.snapshot_id) if volume.snapshot_id else None
                self._create(self.volume_dir(volume_id), source, link=True)
            for file_system_id in file_systems:
                self.efs_dir(file_system_id).mkdir(exist_ok=True)
            for kind, live in (("volumes", volumes), ("snapshots", snapshots), ("efs", file_systems)):
                for path in (self.root / kind).iterdir():
                    if path.name not in live:
                        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _create(target: Path, source: Path | None, link: bool, written_before: float | None = None) -> None:
        if target.exists():
            return
        if source is not None and source.is_dir():
            _copy(source, target, link, written_before)
        else:
            target.mkdir()

    def seed_snapshot(self, snapshot_id: str, source: Path) -> None:
        """Fill a snapshot with the files of a local directory (hard links where possible)."""
        with self._lock:
            target = self.snapshot_dir(snapshot_id)
            shutil.rmtree(target, ignore_errors=True)
            _copy(source, target, link=True)

    def wipe(self) -> None:
        with self._lock:
            for kind in KINDS:
                shutil.rmtree(self.root / kind, ignore_errors=True)
                (self.root / kind).mkdir()
