"""Backends by name: where a run's replicas, machines and processes live."""

from __future__ import annotations

from tasks.backends.base import Backend, BackendError, InputError

BACKENDS = ("local", "aws")


def get_backend(name: str) -> Backend:
    if name == "local":
        from tasks.backends.local import LocalBackend

        return LocalBackend()
    if name == "aws":
        raise BackendError("the aws backend is not built yet (issue 'AWS backend'); use backend='local'")
    raise InputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
