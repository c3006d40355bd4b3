"""GPU-only paths (NCCL, CUDA bf16 autocast, pinned memory): run where a GPU is, skipped with the reason elsewhere."""

import json

import pytest
import torch

from tests.trainer_runs import run, train_command

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI and dev machines have none")


@needs_cuda
def test_one_epoch_on_the_gpu(tiny_data, tmp_path):
    logdir = tmp_path / "run"
    result = run(train_command(tiny_data, logdir, "--device", "cuda", "--epochs", "1", "--workers", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    start = json.loads((logdir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["config"]["bf16"] and start["config"]["channels_last"]
    assert json.loads((logdir / "summary.json").read_text())["epochs"][0]["top5"] > 0
