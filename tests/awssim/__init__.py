"""An AWS simulator for tests: moto in server mode, wrapped to add what moto lacks, plus a machine player.

Start one with `tests.awssim.start(root)` (a context manager yielding an `AwsSim` handle)."""

from .client import AwsSim, client_environment, start

__all__ = ["AwsSim", "client_environment", "start"]
