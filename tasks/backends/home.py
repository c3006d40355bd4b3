"""Where imagenet18 keeps what it makes on this machine: local runs, replicas, the demo dataset, AWS keys."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """IMAGENET18_HOME (`~` expanded, made absolute: the machines start in folders of their own, where a relative
    path would name another place) or ~/.imagenet18."""
    return Path(os.environ.get("IMAGENET18_HOME", Path.home() / ".imagenet18")).expanduser().resolve()
