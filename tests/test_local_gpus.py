"""A local machine with GPUs is used whole: its GPUs are shared out among the run's local machines, one process
per GPU; the logic runs here on the CPU, with the GPUs a workstation would show (a lent GPU checks the real path)."""

import datetime as dt
import sys
import time
from pathlib import Path

import pytest

from tasks.parameters import RunParameters
from tasks import stages
from tasks.backends.base import ClusterSpec, Devices
from tasks.backends.local import LocalBackend, LocalGpus
from tasks.planning import RunPlan
from tests.leftovers import local_leftovers


@pytest.mark.parametrize("environ,driver_gpus,devices", [
    ({}, 0, ()),
    ({}, 4, ("0", "1", "2", "3")),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, 8, ("2", "3")),
    ({"CUDA_VISIBLE_DEVICES": ""}, 8, ()),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, 8, ("0",)),  # CUDA ignores the ids after an invalid one
    ({"CUDA_VISIBLE_DEVICES": "GPU-5ad2,GPU-77c1"}, 2, ("GPU-5ad2", "GPU-77c1")),
])
def test_the_gpus_a_run_may_use_are_the_ones_cuda_would_show(tmp_path, environ, driver_gpus, devices):
    driver = tmp_path / "gpus"
    driver.mkdir()
    for i in range(driver_gpus):
        (driver / f"0000:0{i}:00.0").mkdir()
    assert LocalGpus.visible(environ, driver).devices == devices


def test_no_nvidia_driver_means_no_gpus(tmp_path):
    assert LocalGpus.visible({}, tmp_path / "absent").devices == ()


def test_the_plan_knows_the_model_of_the_gpus_each_machine_trains_on(tmp_path):
    """As the driver names it, for the plan's compile estimate: its information file as the lent H200's read
    (2026-12-04), with an H100's name."""
    driver = tmp_path / "gpus"
    for bus in ("0000:19:00.0", "0000:3b:00.0"):
        (driver / bus).mkdir(parents=True)
        (driver / bus / "information").write_text(DRIVER_INFORMATION)
    backend = LocalBackend(tmp_path, LocalGpus.visible({}, driver))
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    devices = {machines: backend.devices(ClusterSpec("run", "run", machines, "local", False, expires))
               for machines in (1, 2, 4)}
    assert devices == {1: Devices("NVIDIA H100 80GB HBM3", 2), 2: Devices("NVIDIA H100 80GB HBM3", 1),
                       4: Devices(None, 1)}
    assert LocalBackend(tmp_path, LocalGpus(("0",))).devices(ClusterSpec("run", "run", 1, "local", False, expires)) \
        == Devices("unnamed", 1), "GPUs CUDA_VISIBLE_DEVICES names without the driver's files are GPUs all the same"


DRIVER_INFORMATION = """Model: \t\t NVIDIA H100 80GB HBM3
IRQ:   \t\t 41
GPU UUID: \t GPU-93a6d0a9-c834-08ce-8b2d-5f4870748c56
Video BIOS: \t 96.00.a5.00.1a
Bus Type: \t PCIe
DMA Size: \t 52 bits
DMA Mask: \t 0xfffffffffffff
Bus Location: \t 0000:00:06.0
Device Minor: \t 0
GPU Firmware: \t 580.159.04
GPU Excluded:\t No
"""


@pytest.mark.parametrize("devices,machines,shares,described", [
    (("0", "1", "2", "3", "4", "5", "6", "7"), 1, ["0,1,2,3,4,5,6,7"], "8 GPU(s) each, one process per GPU"),
    (("0", "1", "2", "3", "4", "5", "6", "7"), 2, ["0,1,2,3", "4,5,6,7"], "4 GPU(s) each, one process per GPU"),
    (("0", "1", "2"), 2, ["0", "1"], "1 GPU(s) each, one process per GPU"),
    (("0",), 2, ["", ""], "1 CPU process each: 1 GPU(s) here cannot give each of 2 machines its own; --machines 1 "
                          "would train on them"),
    ((), 2, ["", ""], "1 CPU process each"),
])
def test_each_machine_gets_its_own_share(devices, machines, shares, described):
    gpus = LocalGpus(devices)
    assert [gpus.for_machine(i, machines) for i in range(machines)] == shares
    assert gpus.describe(machines) == described


def test_a_four_gpu_workstation_runs_two_processes_on_each_of_two_machines(tmp_path, tiny_data):
    backend = LocalBackend(tmp_path, LocalGpus(("0", "1", "2", "3")))
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    spec = ClusterSpec("run-gpus", "run-gpus", 2, "local", False, expires)
    plan_item = backend.plan(spec, str(tiny_data), 1.0).items[0]
    assert plan_item.what == "torchrun node process on this machine (2 GPU(s) each, one process per GPU)"
    cluster = backend.provision(spec, backend.replicate(spec, str(tiny_data), 2))
    try:
        assert cluster.gpus_per_machine == 2
        params = RunParameters(machines=2, dataset=str(tiny_data), schedule="cpu-tiny")
        plan = RunPlan(params, spec, str(tiny_data), "cpu-tiny", 1, backend.plan(spec, str(tiny_data), 1.0))
        assert "--nproc_per_node=2" in stages.trainer_command(plan, cluster, 1, 29500)
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        backend.launch(cluster, {0: sleeper, 1: sleeper}, "train")
        seen = {}
        for process in _wait_for_jobs(backend, 2):
            environ = Path(f"/proc/{process['pid']}/environ").read_bytes().split(b"\0")
            seen[process["job"]] = next(v for v in environ if v.startswith(b"CUDA_VISIBLE_DEVICES=")).decode()
        assert seen == {"train-0": "CUDA_VISIBLE_DEVICES=0,1", "train-1": "CUDA_VISIBLE_DEVICES=2,3"}
    finally:
        backend.teardown("run-gpus")
    assert local_leftovers(tmp_path, "run-gpus") == {}


def _wait_for_jobs(backend, count, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = {p["job"]: p for p in backend.processes("run-gpus")}
        if len(found) == count:
            return list(found.values())
        time.sleep(0.1)
    raise AssertionError(f"{count} jobs did not start")
