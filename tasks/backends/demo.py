"""The demo dataset: the local backend's default, made on first use from images inside installed packages."""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.backends.home import default_home
from trainer.demo_data import demo_dataset_ready, make_demo_dataset
from trainer.prepare import prepare

log = logging.getLogger(__name__)


def demo_dataset_root() -> Path:
    return default_home() / "demo" / "imagenet18-demo"


def ensure_demo_dataset() -> None:
    """Made on first use (about 20 s, no download) and reused after."""
    root = demo_dataset_root()
    if not demo_dataset_ready(root) or not Path(f"{root}-sz/160").is_dir():
        log.info("making the demo dataset in %s (once; no download)", root)
        make_demo_dataset(root)
        prepare(root, sizes=[160])
