"""GPU-only paths: one process with CUDA bf16 autocast, channels_last, pinned loader memory and (optionally)
torch.compile; two processes over NCCL where two GPUs are. Skipped with the reason elsewhere.

Self-sufficient, so a GPU machine with only the trainer's dependencies can run it without the suite's
conftest (which needs the AWS simulator's packages): `python3 -m pytest --noconftest tests/test_gpu.py`.
"""

import importlib.util
import json
import sys

import pytest
import torch

from tests.trainer_runs import run, train_command
from trainer import gpu_decode
from trainer.demo_data import make_demo_dataset
from trainer.prepare import prepare

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI and dev machines have none")


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    """The suite's tiny demo dataset (10 classes, 120 + 10 images each) and the -sz/160 copy cpu-tiny reads."""
    root = tmp_path_factory.mktemp("gpu-data") / "demo"
    make_demo_dataset(root, classes=10, train_per_class=120, val_per_class=10)
    prepare(root, sizes=[160])
    return root


@needs_cuda
@pytest.mark.parametrize("options", [(), ("--compile",), ("--decode", "device", "--compile", "--compile-mode",
                                                           "reduce-overhead")],
                         ids=["eager", "compiled", "device-decode-and-cuda-graphs"])
def test_one_epoch_on_the_gpu(gpu_data, tmp_path, options):
    logdir = tmp_path / "run"
    result = run(train_command(gpu_data, logdir, "--device", "cuda", "--epochs", "1", "--workers", "2", *options))
    assert result.returncode == 0, result.stderr[-3000:]
    start = json.loads((logdir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["config"]["bf16"] and start["config"]["channels_last"]
    assert start["config"]["compile"] is ("--compile" in options)
    assert start["config"]["decode"] == ("device" if "--decode" in options else "workers")
    if "--decode" in options:
        assert start["config"]["decoder"] == ("nvImageCodec" if _has_nvimgcodec() else "nvJPEG")
    assert start["config"]["pin_memory"] and start["config"]["process_group"] is None, "one process: no group"
    assert json.loads((logdir / "summary.json").read_text())["epochs"][0]["top5"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two processes needs two CUDA GPUs")
def test_two_processes_over_nccl(gpu_data, tmp_path):
    logdir = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    result = run(torchrun + train_command(gpu_data, logdir, "--device", "cuda", "--epochs", "1")[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    start = json.loads((logdir / "metrics.jsonl").read_text().splitlines()[0])
    assert (start["config"]["world_size"], start["config"]["process_group"]) == (2, "nccl")


@needs_cuda
def test_the_local_backend_sees_the_gpus_torch_sees():
    """Without torch or a CUDA context: the driver's list (or CUDA_VISIBLE_DEVICES) counts what CUDA will show."""
    from tasks.backends.local import LocalGpus

    gpus = LocalGpus.visible()
    assert len(gpus.devices) == torch.cuda.device_count()
    assert gpus.describe(1) == f"{torch.cuda.device_count()} GPU(s) each, one process per GPU"


def _has_nvimgcodec() -> bool:
    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ModuleNotFoundError:  # no nvidia package at all
        return False


@pytest.mark.skipif(not _has_nvimgcodec(), reason="needs nvImageCodec: pip install nvidia-nvimgcodec-cu13[nvjpeg]")
@needs_cuda
def test_nvimagecodec_decodes_as_nvjpeg_does_and_a_bad_image_fails_alone(gpu_data):
    from torchvision.io import read_file

    paths = sorted((gpu_data / "train").glob("*/*.JPEG"))[:32]
    payloads = [read_file(str(path)) for path in paths]
    device = torch.device("cuda")
    assert gpu_decode.decoder_for(device) == "nvImageCodec"
    by_nvimgcodec = gpu_decode.decode_jpegs(payloads, device, "nvImageCodec")
    by_nvjpeg = gpu_decode.decode_jpegs(payloads, device, "nvJPEG")
    assert len(by_nvimgcodec) == len(by_nvjpeg) == len(payloads) > 0
    for a, b in zip(by_nvimgcodec, by_nvjpeg):
        assert a.shape == b.shape and a.dtype == torch.uint8 and a.device.type == "cuda"
        assert (a.float() - b.float()).abs().mean().item() < 2, "the same pixels, up to the IDCT's rounding"
    garbage = torch.frombuffer(bytearray(payloads[0][:600].tolist() + [0] * 4000), dtype=torch.uint8)
    decoded = gpu_decode.decode_jpegs([garbage, payloads[1]], device, "nvImageCodec")
    assert len(decoded) == 2 and torch.equal(decoded[1], by_nvimgcodec[1])
