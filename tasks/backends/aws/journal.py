"""A run's journal on this machine (`<folder>/<run id>.jsonl`): what each process made for the run in EC2, and
deleted, so that a teardown in another process awaits what EC2 does not list yet (consistency.py). An aid, not a
record the run depends on: a journal that cannot be written or read is logged and passed over, never raised into
the AWS call it follows (which has done what it did)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)


def process() -> str:
    """This process, among those that may share the folder (a home on a shared disk: pids repeat across hosts)."""
    return f"{socket.gethostname()}/{os.getpid()}"


def made(folder: Path, run_id: str, region: str, ids: list[str]) -> None:
    _append(folder, run_id, [{"made": i, "region": region, "at": time.time(), "by": process()} for i in ids])


def gone(folder: Path, run_id: str, ids: list[str]) -> None:
    _append(folder, run_id, [{"gone": i} for i in ids])


def others_made(folder: Path, run_id: str, within_s: float) -> list[tuple[str, str, float]]:
    """(id, region, seconds since it was made) of what other processes made for the run in the last `within_s` and
    have not deleted. A line cut short (a process killed as it wrote) is passed over."""
    try:
        lines = _path(folder, run_id).read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("could not read the journal of run %s (%s): a teardown elsewhere may miss what EC2 does not "
                    "list yet", run_id, exc)
        return []
    entries = []
    for line in lines:
        try:
            entries.append(dict(json.loads(line)))
        except (ValueError, TypeError):
            continue
    deleted = {entry.get("gone") for entry in entries}
    now, me = time.time(), process()
    return [(entry["made"], entry.get("region", ""), now - entry["at"]) for entry in entries
            if isinstance(entry.get("made"), str) and isinstance(entry.get("at"), (int, float))
            and entry["made"] not in deleted and entry.get("by") != me and now - entry["at"] < within_s]


def remove(folder: Path, run_id: str) -> None:
    try:
        _path(folder, run_id).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the journal of run %s: %s", run_id, exc)


def prune(folder: Path, older_than_s: float) -> None:
    """The journals last written more than `older_than_s` ago: nothing in them is awaited any more."""
    try:
        for path in folder.glob("*.jsonl"):
            if time.time() - path.stat().st_mtime >= older_than_s:
                path.unlink(missing_ok=True)
    except OSError:
        pass  # another process pruned it first, or the folder is not there yet


def _path(folder: Path, run_id: str) -> Path:
    return folder / f"{run_id}.jsonl"


def _append(folder: Path, run_id: str, entries: list[dict]) -> None:
    """In one write, so that processes writing one journal at once do not interleave their lines."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(_path(folder, run_id), "a") as file:
            file.write("".join(json.dumps(entry) + "\n" for entry in entries))
    except OSError as exc:
        log.warning("could not write the journal of run %s (%s): a teardown elsewhere may miss what EC2 does not "
                    "list yet", run_id, exc)
