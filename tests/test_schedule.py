"""The seed's schedules equal reference.md's tables; bad schedule files are refused with clear errors."""

import pytest

from trainer import schedule
from trainer.schedule import ScheduleError

# (machines, epoch, image size, per-GPU batch, train dir suffix, rect_val) from reference.md
DATA_TABLE = [
    (16, 0, 128, 64, "-sz/160", False), (16, 6, 128, 128, "-sz/160", False),
    (16, 16, 224, 64, "", False), (16, 19, 224, 192, "", False), (16, 37, 288, 128, "", True),
    (16, 49, 288, 128, "", True),
    (8, 0, 128, 128, "-sz/160", False), (8, 6, 128, 256, "-sz/160", False),
    (8, 14, 224, 128, "-sz/352", False), (8, 17, 224, 224, "-sz/352", False), (8, 29, 288, 128, "", True),
    (4, 0, 128, 256, "-sz/160", False), (4, 6, 128, 512, "-sz/160", False),
    (4, 13, 224, 224, "-sz/352", False), (4, 28, 288, 128, "", True),
    (2, 0, 128, 256, "-sz/160", False), (2, 6, 128, 512, "-sz/160", False),
    (2, 13, 224, 224, "-sz/352", False), (2, 28, 288, 128, "", True),
    (1, 0, 128, 512, "-sz/160", False), (1, 13, 224, 224, "-sz/352", False), (1, 25, 288, 128, "", True),
]

# (machines, epoch, batch, batches, expected lr)
LR_TABLE = [
    (16, 0, 0, 100, 1.88), (16, 3, 0, 100, 2.82), (16, 5, 50, 100, 1.88 + 1.88 * 5.5 / 6),
    (16, 6, 0, 100, 3.76), (16, 15, 99, 100, 3.76), (16, 16, 0, 100, 1.88), (16, 19, 0, 100, 0.564),
    (16, 31, 0, 100, 0.0564), (16, 37, 0, 100, 0.0376), (16, 38, 0, 100, 0.00376), (16, 49, 99, 100, 0.00376),
    (8, 0, 0, 10, 1.92), (8, 6, 0, 10, 3.84), (8, 11, 0, 10, 3.84), (8, 12, 5, 10, 3.84 - 1.92 * 1.5 / 3),
    (8, 14, 0, 10, 1.92), (8, 17, 0, 10, 1.92), (8, 20, 0, 10, (1.92 + 0.336) / 2), (8, 23, 0, 10, 0.336),
    (8, 29, 0, 10, 0.0192), (8, 35, 9, 10, 0.0192 - (0.0192 - 0.00192) * 6.9 / 7),
    (4, 0, 0, 10, 2.0), (4, 3, 0, 10, 3.0), (4, 6, 0, 10, 4.0), (4, 12, 0, 10, 3.0), (4, 13, 0, 10, 1.75),
    (4, 16, 0, 10, 1.75), (4, 20, 0, 10, (1.75 + 0.175) / 2), (4, 24, 0, 10, 0.175), (4, 28, 0, 10, 0.01),
    (4, 29, 0, 10, 0.0055),
    (2, 0, 0, 10, 1.5), (2, 6, 0, 10, 3.0), (2, 12, 0, 10, 2.25), (2, 13, 0, 10, 1.3125),
    (2, 23, 0, 10, 0.13125), (2, 28, 0, 10, 0.0075),
    (1, 0, 0, 10, 1.0), (1, 7, 0, 10, 2.0), (1, 10, 0, 10, 2.0 - 1.75 / 2), (1, 13, 0, 10, 0.4375),
    (1, 22, 0, 10, 0.04375), (1, 25, 0, 10, 0.0025), (1, 27, 5, 10, 0.0025 - 0.00225 * 2.5 / 3),
]

EPOCHS = {16: 50, 8: 36, 4: 30, 2: 30, 1: 28}


@pytest.mark.parametrize("machines,epoch,size,batch,trndir,rect_val", DATA_TABLE)
def test_seed_data_phases_match_reference(machines, epoch, size, batch, trndir, rect_val):
    phase = schedule.load(f"seed-{machines}").data_phase(epoch)
    assert (phase.sz, phase.bs, phase.trndir, phase.rect_val) == (size, batch, trndir, rect_val)


@pytest.mark.parametrize("machines,epoch,batch,batches,lr", LR_TABLE)
def test_seed_learning_rates_match_reference(machines, epoch, batch, batches, lr):
    assert schedule.load(f"seed-{machines}").lr_at(epoch, batch, batches) == pytest.approx(lr, rel=1e-9)


@pytest.mark.parametrize("machines,epochs", EPOCHS.items())
def test_seed_schedule_lengths(machines, epochs):
    plan = schedule.load(schedule.seed_schedule_name(machines))
    assert plan.epochs == epochs
    assert plan.arch == "resnet50" and plan.machines == machines


def test_keep_dl_phases_keep_the_loader_and_change_only_the_batch():
    plan = schedule.load("seed-16")
    before, after = plan.data_phase(5), plan.data_phase(6)
    assert after.keep_dl and not before.keep_dl
    assert (after.sz, after.trndir, after.min_scale) == (before.sz, before.trndir, before.min_scale)
    assert plan.data_phase(37).min_scale == 0.5
    assert schedule.load("seed-8").data_phase(14).min_scale == 0.087


def test_every_builtin_schedule_loads():
    names = schedule.builtin_names()
    assert {"seed-1", "seed-2", "seed-4", "seed-8", "seed-16", "cpu-demo", "cpu-tiny"} <= set(names)
    for name in names:
        assert schedule.load(name).epochs > 0


def test_fingerprint_changes_with_content(tmp_path):
    text = (schedule.resources.files("trainer") / "schedules" / "cpu-tiny.toml").read_text()
    same, other = tmp_path / "same.toml", tmp_path / "other.toml"
    same.write_text(text)
    other.write_text(text.replace("lr = [0.02", "lr = [0.06"))
    assert schedule.load(same).fingerprint() == schedule.load("cpu-tiny").fingerprint()
    assert schedule.load(other).fingerprint() != schedule.load("cpu-tiny").fingerprint()


GOOD_DATA = '[[data]]\nep = 0\nsz = 32\nbs = 8\n'
GOOD_LR = '[[lr]]\nep = [0, 2]\nlr = [0.1, 0.2]\n'


@pytest.mark.parametrize("text,message", [
    (GOOD_LR, "no [[data]] phases"),
    (GOOD_DATA, "no [[lr]] phases"),
    ('[[data]]\nep = 1\nsz = 32\nbs = 8\n' + GOOD_LR, "first data phase must start at epoch 0"),
    (GOOD_DATA + '[[data]]\nep = 0\nsz = 64\nbs = 8\n' + GOOD_LR, "strictly increasing"),
    ('[[data]]\nep = 0\nbs = 8\n' + GOOD_LR, "missing ['sz']"),
    ('[[data]]\nep = 0\nsz = 30\nbs = 8\n' + GOOD_LR, "multiple of 8"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\nmin_scale = 1.5\n' + GOOD_LR, "min_scale"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\ntrndir = "small"\n' + GOOD_LR, "trndir"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\ntrndir = "-sz/abc"\n' + GOOD_LR, "trndir"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\ntrndir = "-sz/160/"\n' + GOOD_LR, "trndir"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\ntrndir = "-sz/0"\n' + GOOD_LR, "trndir"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\ntrndir = "-sz/096"\n' + GOOD_LR, "'-sz/<pixels>' suffix, got '-sz/096'"),
    ('arch = "ResNet50"\n' + GOOD_DATA + GOOD_LR, "unknown arch 'ResNet50': choose one of resnet10, resnet18"),
    ('[[data]]\nep = 0\nsz = 32\nbs = 8\ncolour = 1\n' + GOOD_LR, "unknown keys ['colour']"),
    (GOOD_DATA + '[[data]]\nep = 1\nsz = 64\nkeep_dl = true\n' + GOOD_LR, "only changes 'bs'"),
    (GOOD_DATA + '[[lr]]\nep = [0, 4]\nlr = [0.1, 0.2]\n[[lr]]\nep = 2\nlr = 0.1\n', "overlaps"),
    (GOOD_DATA + '[[lr]]\nep = 3\nlr = 0.1\n[[lr]]\nep = [0, 2]\nlr = 0.1\n', "first lr phase"),
    (GOOD_DATA + '[[lr]]\nep = 0\nlr = 0.1\n[[lr]]\nep = 0\nlr = 0.2\n', "overlaps"),
    (GOOD_DATA + '[[lr]]\nep = [2, 1]\nlr = 0.1\n', "start < end"),
    (GOOD_DATA + '[[lr]]\nep = [0, 2]\nlr = [0.1, -0.2]\n', "must not be negative"),
    (GOOD_DATA + '[[data]]\nep = 4\nsz = 64\nbs = 8\n' + GOOD_LR, "after the end of training"),
    (GOOD_DATA + GOOD_LR + "machines = [", "not valid TOML"),
    ('reference_minutes = "18:06"\n' + GOOD_DATA + GOOD_LR, "reference_minutes must be a positive number"),
    ('reference_minutes = 0\n' + GOOD_DATA + GOOD_LR, "reference_minutes must be a positive number"),
])
def test_bad_schedules_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScheduleError) as error:
        schedule.load(path)
    assert message in str(error.value)


def test_unknown_schedule_name_lists_the_builtins():
    with pytest.raises(ScheduleError, match="built-in schedules are .*seed-16"):
        schedule.load("seed-3")


def test_missing_schedule_file():
    with pytest.raises(ScheduleError, match="does not exist"):
        schedule.load("/nonexistent/plan.toml")
