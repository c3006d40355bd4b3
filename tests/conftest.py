"""Shared fixtures: one tiny demo dataset (with its -sz/160 copy) per test session."""

import shutil
from pathlib import Path

import pytest

from trainer.demo_data import make_demo_dataset
from trainer.prepare import prepare

TINY = {"classes": 10, "train_per_class": 120, "val_per_class": 10}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """10 classes, 120 + 10 images each, and the -sz/160 copy the cpu-tiny schedule reads. Read-only."""
    root = tmp_path_factory.mktemp("data") / "demo"
    make_demo_dataset(root, **TINY)
    prepare(root, sizes=[160])
    return root


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A private copy of the tiny dataset, for tests that break it."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_data, root)
    shutil.copytree(Path(str(tiny_data) + "-sz"), Path(str(root) + "-sz"))
    return root
