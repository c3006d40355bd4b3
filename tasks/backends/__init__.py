"""Backends by name: where a run's replicas, machines and processes live. The one place that knows the names;
everything else asks the backend (tasks/backends/base.py's contract)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.backends.base import Backend, InputError

if TYPE_CHECKING:
    from tasks.backends.aws.options import AwsOptions

BACKENDS = ("local", "aws")


def backend_class(name: str) -> type[Backend]:
    if name == "local":
        from tasks.backends.local import LocalBackend

        return LocalBackend
    if name == "aws":
        from tasks.backends.aws import AwsBackend

        return AwsBackend
    raise InputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def takes_aws_options(name: str) -> bool:
    """Whether the backend `name` uses the AWS options (AwsOptions): another drops them."""
    return name == "aws"


def retry_may_pass(error: BaseException) -> bool:
    """Whether a stage's retry may pass where `error` failed it: not for bad input, nor for a refusal that any
    backend knows to be lasting."""
    return not isinstance(error, InputError) and all(backend_class(name).retry_may_pass(error) for name in BACKENDS)


def get_backend(name: str, aws: AwsOptions | Mapping[str, Any] | None = None, home: Path | None = None) -> Backend:
    """The backend `name`, with the AWS options where it is aws, and imagenet18's home on this machine."""
    backend = backend_class(name)
    if name == "aws":
        from tasks.backends.aws.options import AwsOptions

        return backend(aws if isinstance(aws, AwsOptions) else AwsOptions(**(aws or {})), home)
    return backend(home)
