"""What is running on this machine, read from /proc."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def with_environment(variable: str, value: str) -> list[int]:
    """Live processes whose environment has `variable`=`value`."""
    return [pid for pid, environ in environments(variable) if environ[variable] == value]


def environments(variable: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Live processes whose environment sets `variable`, each with its whole environment."""
    wanted = f"{variable}=".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(wanted) for item in environ) and alive(int(entry.name)):
            yield int(entry.name), dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)


def command_line(pid: int) -> list[str]:
    """The process's arguments; none once it has ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@contextmanager
def command_lines_seen(variable: str, every_s: float = 0.2) -> Iterator[dict[str, set[tuple[str, ...]]]]:
    """The command lines of the processes whose environment sets `variable`, by its value, as sampled from /proc
    every `every_s` while the block runs (and once more as it ends)."""
    seen: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    done = threading.Event()

    def sample() -> None:
        for pid, environ in environments(variable):
            if arguments := tuple(command_line(pid)):
                seen[environ[variable]].add(arguments)

    def keep_sampling() -> None:
        while not done.wait(every_s):
            sample()

    sampler = threading.Thread(target=keep_sampling, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        done.set()
        sampler.join()
        sample()
