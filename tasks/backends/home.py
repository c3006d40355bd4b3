"""Where imagenet18 keeps what it makes on this machine: local runs, replicas, the demo dataset, AWS keys."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("IMAGENET18_HOME", Path.home() / ".imagenet18"))
