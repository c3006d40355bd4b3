"""Backends by name: where a run's replicas, machines and processes live."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.backends.base import Backend, InputError

if TYPE_CHECKING:
    from tasks.backends.aws.options import AwsOptions

BACKENDS = ("local", "aws")


def get_backend(name: str, aws: AwsOptions | None = None) -> Backend:
    if name == "local":
        from tasks.backends.local import LocalBackend

        return LocalBackend()
    if name == "aws":
        from tasks.backends.aws import AwsBackend

        return AwsBackend(aws)
    raise InputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
