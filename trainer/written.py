"""Writes whose failure names what was written: a full disk says only "No space left on device"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def naming(path: str, what: str) -> Iterator[None]:
    """Re-raise an OSError from within as one that names `what` and `path`, chained to the original."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"{what} could not be written ({exc.strerror or exc})", str(path)) from exc
