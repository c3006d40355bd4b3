"""The auto schedule: a dataset no schedule was made for is trained at its own resolution, long enough for its size,
with a warm-up and a decay; the planner and every node derive the same schedule from the same files."""

import json

import pytest
from PIL import Image

from tasks.parameters import RunParameters
from tasks.backends.base import InputError
from tasks.backends.local import LocalGpus
from tasks.planning import plan_run
from tests.trainer_runs import run, train_command
from trainer import recipe
from trainer.layout import DataError
from trainer.prepare import prepare


def _dataset(root, classes=3, train=40, validation=8, size=(25, 30)):
    for split, count in (("train", train), ("validation", validation)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", size, (40 * c, 7 * i % 256, 90)).save(folder / f"{i}.JPEG", "JPEG")
    return root


def test_facts_are_read_from_names_and_headers(tmp_path):
    assert recipe.facts(_dataset(tmp_path / "d", size=(30, 25))) == recipe.DatasetFacts(120, 3, 25)


@pytest.mark.parametrize("native,sizes,reads", [
    (8, [32], ""),                       # tiny images: no smaller than a ResNet's stem needs, read as they are
    (25, [32], ""),
    (64, [48, 64], ""),                  # progressive from 3/4, never above the data's own resolution
    (100, [80, 104], ""),
    (375, [96, 128], "-sz/160"),         # photos: capped, read from a resized copy the pipeline makes
])
def test_sizes_follow_the_data_and_stay_near_its_resolution(native, sizes, reads):
    schedule = recipe.schedule_for(recipe.DatasetFacts(5000, 10, native), world_size=2)
    assert [phase.sz for phase in schedule.data] == sizes
    assert {phase.trndir for phase in schedule.data} == {reads}
    assert max(sizes) <= max(recipe.MIN_SIZE, native + 8)


@pytest.mark.parametrize("images", [16, 160, 1_438, 50_000, 1_281_167])
def test_epochs_batch_and_learning_rate_fit_the_dataset(images):
    schedule = recipe.schedule_for(recipe.DatasetFacts(images, 10, 64), world_size=2)
    batch = schedule.data[0].bs
    assert recipe.MIN_EPOCHS <= schedule.epochs <= recipe.MAX_EPOCHS
    assert batch % 8 == 0 and recipe.MIN_BATCH <= batch <= recipe.MAX_BATCH
    assert images // (2 * batch) >= recipe.STEPS_PER_EPOCH or batch == recipe.MIN_BATCH
    warmup, decay = schedule.lr
    peak = recipe.PEAK_LR * batch * 2 / 256
    assert (warmup.lr_start, warmup.lr_end, decay.lr_start) == pytest.approx((peak / 10, peak, peak))
    assert schedule.lr_at(schedule.epochs - 1, 99, 100) < peak * 0.05, "a low learning rate at the end"
    assert schedule.data[-1].ep < schedule.epochs


def test_too_few_images_for_the_auto_schedule_are_refused():
    with pytest.raises(DataError, match=r"15 training images are too few for the auto schedule on 2 process\(es\)"):
        recipe.schedule_for(recipe.DatasetFacts(15, 3, 64), world_size=2)


def test_a_local_run_of_a_users_folder_is_planned_with_the_auto_schedule(tmp_path):
    root = _dataset(tmp_path / "mine")
    plan = plan_run(RunParameters(machines=2, dataset=str(root)), "run-id", "run-name")
    assert plan.schedule == "auto" and plan.epochs == recipe.MAX_EPOCHS and plan.reads == ("",)
    tiny = _dataset(tmp_path / "tiny", classes=2, train=4, validation=2)
    with pytest.raises(InputError, match="too few for the auto schedule"):
        plan_run(RunParameters(machines=2, dataset=str(tiny)), "run-id", "run-name")


def test_the_auto_schedule_is_planned_for_a_process_per_gpu(tmp_path, monkeypatch):
    """On an 8-GPU workstation `--machines 1` trains 8 processes: the plan derives the schedule the trainer will
    (its batch and learning rate), and refuses a folder too small for them before anything is made."""
    monkeypatch.setattr(LocalGpus, "visible", classmethod(lambda cls: LocalGpus(tuple("01234567"))))
    root = _dataset(tmp_path / "mine", classes=2, train=20, validation=4)  # 40: 8 per process for 5, not 8
    with pytest.raises(InputError, match=r"40 training images are too few for the auto schedule on 8 process"):
        plan_run(RunParameters(machines=1, dataset=str(root)), "run-id", "run-name")
    monkeypatch.setattr(LocalGpus, "visible", classmethod(lambda cls: LocalGpus(("0", "1"))))
    assert plan_run(RunParameters(machines=1, dataset=str(root)), "run-id", "run-name").schedule == "auto", \
        "enough for 2"


def test_the_trainer_derives_the_same_schedule_and_trains_it(tmp_path):
    root = _dataset(tmp_path / "mine", size=(40, 48))
    logdir = tmp_path / "run"
    result = run(train_command(root, logdir, "--epochs", "2") + ["--schedule", "auto"])
    assert result.returncode == 0, result.stderr[-3000:]
    expected = recipe.schedule_for(recipe.facts(root), world_size=1)
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["schedule"] == "auto" and summary["arch"] == recipe.ARCH
    assert [e["size"] for e in summary["epochs"]] == [expected.data[0].sz] * 2
    assert [e["global_batch"] for e in summary["epochs"]] == [expected.data[0].bs] * 2
    assert f"Schedule auto: {expected.description}" in result.stdout


def test_a_training_set_smaller_than_one_global_batch_trains_with_a_warning(tmp_path):
    root = _dataset(tmp_path / "small", classes=2, train=6, validation=2)
    prepare(root, [160], workers=1)  # cpu-tiny reads -sz/160
    logdir = tmp_path / "run"
    result = run(train_command(root, logdir, "--epochs", "1", "--schedule", "cpu-tiny"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the training set (12 images) is smaller than one global batch (32)" in result.stdout + result.stderr


def test_a_dataset_of_one_class_is_refused_by_the_trainer_too(tmp_path):
    """One class trains to 100% from its first step: refused before the first batch, as the run's check does."""
    root = _dataset(tmp_path / "one-class", classes=1, train=4, validation=2)
    prepare(root, [160], workers=1)
    result = run(train_command(root, tmp_path / "run", "--schedule", "cpu-tiny"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "has one class folder (" in result.stderr
    assert result.stderr.strip().endswith("): a classifier needs at least 2")


def test_epochs_past_the_schedules_end_are_refused_by_the_trainer_too(tiny_data, tmp_path):
    result = run(train_command(tiny_data, tmp_path / "run", "--schedule", "cpu-tiny", "--epochs", "9"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: epochs=9 is past the end of schedule cpu-tiny, which trains 8 epochs: "
                                     "epochs stops a run early, and a longer run needs a longer schedule")


def test_fewer_than_two_images_per_process_is_one_error_line(tmp_path):
    root = _dataset(tmp_path / "one", classes=1, train=1, validation=1)
    prepare(root, [160], workers=1)
    result = run(train_command(root, tmp_path / "run", "--schedule", "cpu-tiny"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: 1 training image(s) cannot be shared out to 1 process(es): BatchNorm "
                                     "needs at least 2 each")
