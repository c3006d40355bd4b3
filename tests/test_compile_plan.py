"""Compile when it pays: the plan weighs the training minutes torch.compile saves against the minutes of compiling
(tasks/compile_plan.py, from the rates in BENCHMARKS.md), decides `auto` by that, and the trainer gets `--compile`
only when the decision is on. No training: the plans are made with the backends' own devices and no cloud."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import planning, stages
from tasks.backends.aws.backend import IMAGENET_TRAIN_IMAGES, AwsBackend
from tasks.backends.base import Cluster, CostPlan, Machine
from tasks.backends.local import LocalBackend, LocalGpus
from tasks.compile_plan import MEASURED
from tasks.parameters import RunParameters

IMAGENET18 = str(Path(sys.executable).parent / "imagenet18")
H100 = "NVIDIA H100 80GB HBM3"  # as the driver names them on the lent machines (BENCHMARKS.md)
H200 = "NVIDIA H200"


class PricelessAws(AwsBackend):
    """The aws backend's devices, without the account checks and prices that need AWS."""

    def check(self, spec, dataset, reads=("",)) -> None:
        pass

    def plan(self, spec, dataset, hours) -> CostPlan:
        return CostPlan((), hours)


class ImageNetSizedLocal(LocalBackend):
    """The local backend, with a dataset that counts as ImageNet's training images."""

    def train_images(self, dataset: str) -> int:
        return IMAGENET_TRAIN_IMAGES


@pytest.fixture
def aws_plan(monkeypatch):
    monkeypatch.setattr(planning, "backend_for", lambda params: PricelessAws())

    def plan(**options) -> planning.RunPlan:
        return planning.plan_run(RunParameters(backend="aws", **options), "run-id", "run-name")
    return plan


@pytest.fixture
def workstation_plan(monkeypatch, tmp_path, tiny_data):
    """A local plan on this many GPUs (H100s unless told), whose dataset counts as ImageNet's training images."""
    def plan(gpus: int, gpu: str = H100, **options) -> planning.RunPlan:
        backend = ImageNetSizedLocal(tmp_path, LocalGpus(tuple(map(str, range(gpus))), gpu))
        monkeypatch.setattr(planning, "backend_for", lambda params: backend)
        return planning.plan_run(RunParameters(dataset=str(tiny_data), **options), "run-id", "run-name")
    return plan


def test_a_seed_16_run_on_h100s_compiles_longer_than_it_trains(aws_plan):
    """128 H100s train the seed's 50 epochs in about 2 minutes; its 5 (size, batch) graphs take 6 to compile."""
    plan = aws_plan(machines=16, instance_type="p5.48xlarge")
    assert str(plan.compile) == ("compile: off (would save ~0.6 of ~2.1 min of training for ~6.0 min compiling 5 "
                                 "graph(s), under 1.5x the compiling; --compile forces it)")
    assert "--compile" not in plan.trainer_flags()


def test_a_one_machine_run_on_h100s_saves_more_than_it_compiles_but_not_by_the_margin(aws_plan):
    plan = aws_plan(machines=1, instance_type="p5.48xlarge")
    assert str(plan.compile) == ("compile: off (would save ~4.5 of ~16.0 min of training for ~3.6 min compiling 3 "
                                 "graph(s), under 1.5x the compiling; --compile forces it)")


def test_one_h100_trains_the_one_machine_schedule_long_enough_to_compile(workstation_plan, tiny_data):
    plan = workstation_plan(1, machines=1, schedule="seed-1")
    assert str(plan.compile) == "compile: on (saves ~35.6 of ~127.9 min of training for ~3.6 min compiling 3 graph(s))"
    machines = (Machine(0, "local-0", "127.0.0.1", str(tiny_data)),)
    cluster = Cluster(plan.spec, machines, "/runs/run-name", 1, "", "/runs/run-name", sys.executable)
    assert "--compile" in stages.trainer_command(plan, cluster, 0, 29500)


def test_gpus_whose_compile_gain_is_not_measured_are_left_eager(aws_plan):
    plan = aws_plan(machines=1)  # the default type: 8 x A100
    assert str(plan.compile) == "compile: off (no measured compile gain on A100 40 GB GPUs; --compile forces it)"


def test_compile_forces_it_where_the_estimate_says_off_or_nothing_is_measured(aws_plan):
    forced = aws_plan(machines=16, instance_type="p5.48xlarge", compile="on")
    assert str(forced.compile) == ("compile: on (--compile; it would save ~0.6 of ~2.1 min of training for ~6.0 min "
                                   "compiling 5 graph(s))")
    assert forced.trainer_flags()[-1] == "--compile"
    assert str(aws_plan(machines=1, compile="on").compile) == "compile: on (--compile)"


def test_no_compile_refuses_it_where_the_estimate_says_on(workstation_plan):
    refused = workstation_plan(1, machines=1, schedule="seed-1", compile="off")
    assert str(refused.compile).startswith("compile: off (--no-compile; it would save ~35.6 of ~127.9 min")
    assert "--compile" not in refused.trainer_flags()


def test_training_on_cpus_is_eager(tiny_data):
    plan = planning.plan_run(RunParameters(dataset=str(tiny_data), schedule="cpu-tiny"), "run-id", "run-name")
    assert str(plan.compile) == ("compile: off (training on CPUs, where compiling made the step slower; --compile "
                                 "forces it)")


def test_only_the_epochs_a_run_trains_count(aws_plan):
    """--epochs 10 of seed-1 stays in its first phase: one graph, 10 of the 13 epochs at 128 px."""
    full = aws_plan(machines=1, instance_type="p5.48xlarge")
    short = aws_plan(machines=1, instance_type="p5.48xlarge", epochs=10)
    assert str(short.compile).startswith("compile: off (would save ~1.1 of ~3.5 min of training for ~1.2 min "
                                         "compiling 1 graph(s)"), short.compile
    assert full.compile != short.compile


def test_the_rate_model_gives_the_measured_rates_and_errs_towards_eager_at_288_px():
    h100 = MEASURED["H100"]
    assert [round(h100.images_per_second(size, compiled)) for compiled in (False, True) for size in (128, 224)] == \
        [7607, 3841, 11090, 5249]
    assert 2357 < h100.images_per_second(288, compiled=False) < 1.15 * 2357  # measured 2026-11-26 (BENCHMARKS.md)


def test_the_rate_model_gives_each_measured_size_its_own_rate_and_keeps_between_its_neighbours():
    h200 = MEASURED["H200"]
    assert [round(h200.images_per_second(size, compiled)) for compiled in (False, True) for size in (128, 224, 288)] \
        == [9614, 4657, 2839, 9960, 6601, 4042]
    assert 6601 > h200.images_per_second(256, compiled=True) > 4042 > h200.images_per_second(320, compiled=True)


def test_an_h200_workstation_compiles_the_one_machine_schedule_at_its_own_compile_time(workstation_plan):
    plan = workstation_plan(1, machines=1, schedule="seed-1", gpu=H200)
    assert str(plan.compile) == "compile: on (saves ~23.9 of ~106.5 min of training for ~2.4 min compiling 3 graph(s))"



def test_imagenet18_plan_prints_the_decision(prefect_api, tiny_data):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "IMAGENET18_HOME": str(prefect_api)}
    result = subprocess.run([IMAGENET18, "plan", "--dataset", str(tiny_data), "--schedule", "cpu-tiny", "--compile"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "compile: on (--compile)", result.stdout
    assert "plan: compile: on (--compile)" in result.stderr, "and in the flow run's log"
