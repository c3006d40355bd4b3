"""Folders, augmentation, rectangular validation and the bad-data errors, on real JPEG files."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import odd_files
from tests.trainer_runs import run, train_command
from trainer import data, gpu_decode, layout, loaders, recipe, schedule
from trainer.demo_data import make_demo_dataset
from trainer.layout import DataError
from trainer.prepare import prepare


def _settings(tmp_path, rank=0, world=1):
    return loaders.LoaderSettings(rank=rank, world=world, workers=0, seed=0, pin_memory=False,
                               cache_dir=tmp_path / "cache")


def test_rect_val_batches_sort_by_aspect_ratio_and_crop_to_multiples_of_8():
    ratios = [2.0, 0.5, 1.5, 0.75, 1.0]
    batches, crops = data.rect_val_batches(ratios, batch_size=2, size=64)
    assert batches == [[1, 3], [4, 2], [0]]
    assert crops[1] == crops[3] == (96, 64)  # mean 0.625: portrait, taller than wide
    assert crops[4] == crops[2] == (64, 80)  # mean 1.25
    assert crops[0] == (64, 128)


def test_loaders_yield_uint8_batches_of_each_phase_shape(tiny_data, tmp_path):
    plan = schedule.load("cpu-tiny")
    folders = layout.check_layout(tiny_data, plan)
    built = loaders.build_loaders(tiny_data, plan, folders, _settings(tmp_path))
    assert len(built) == len(plan.data)
    first = built[0]
    images, labels = next(iter(first.train))
    assert images.dtype == torch.uint8 and images.shape == (32, 3, 48, 48)
    assert labels.dtype == torch.int64 and labels.max() < 10
    assert built[1].train.dataset is first.train.dataset  # keep_dl: same data, new batch size
    assert built[1].train.batch_size == 48

    rect = built[2]
    assert rect.phase.rect_val
    ratios = data.aspect_ratios(folders["-sz/160:validation"], tmp_path / "cache")
    _, expected = data.rect_val_batches(ratios, rect.phase.bs, rect.phase.sz)
    seen = 0
    for (images, _), indices in zip(rect.val, rect.val.batch_sampler):
        height, width = images.shape[2:]
        assert (height, width) == expected[indices[0]]
        assert min(height, width) == 64 and max(height, width) % 8 == 0
        seen += len(images)
    assert seen == 100
    assert list((tmp_path / "cache").glob("aspect-*.json")), "aspect ratios are cached"


def test_validation_is_split_across_ranks_without_overlap(tiny_data, tmp_path):
    plan = schedule.load("cpu-tiny")
    folders = layout.check_layout(tiny_data, plan)
    shards = [loaders.build_loaders(tiny_data, plan, folders, _settings(tmp_path, rank, 3))[2] for rank in range(3)]
    indices = [i for shard in shards for batch in shard.val.batch_sampler for i in batch]
    assert sorted(indices) == list(range(100))
    assert {shard.val_steps for shard in shards} == {1}


def test_augmentation_is_a_function_of_seed_epoch_and_index(tiny_data):
    folder = layout.scan(layout.split_dir(tiny_data, "-sz/160", "train"))
    dataset = data.TrainImages(folder, 32, 0.35, seed=0)
    same = [dataset[(5, 1)][0] for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(dataset[(5, 1)][0], dataset[(5, 2)][0])
    assert not torch.equal(dataset[(5, 1)][0], data.TrainImages(folder, 32, 0.35, seed=1)[(5, 1)][0])


def test_random_resized_crop_box_stays_inside_the_image():
    import random

    rng = random.Random(0)
    for height, width in [(100, 400), (400, 100), (160, 213), (9, 9)]:
        for _ in range(200):
            top, left, h, w = data.random_resized_crop_box(rng, height, width, 0.08)
            assert 0 <= top and 0 <= left and top + h <= height and left + w <= width and h > 0 and w > 0


def test_corrupt_jpeg_is_skipped_with_a_warning_naming_it(data_copy, caplog):
    victim = sorted((data_copy / "train").glob("*/*.JPEG"))[0]
    victim.write_bytes(b"\xff\xd8 this is not a jpeg")
    folder = layout.scan(data_copy / "train")
    index = [p for p, _ in folder.samples].index(str(victim))
    logging.getLogger("trainer.data").addHandler(caplog.handler)
    try:
        image, label = data.TrainImages(folder, 32, 0.5, seed=0)[(index, 0)]
    finally:
        logging.getLogger("trainer.data").removeHandler(caplog.handler)
    assert image.shape == (3, 32, 32)
    assert label == folder.samples[index + 1][1]  # the stand-in's own label
    assert str(victim) in caplog.text and "skipping corrupt image" in caplog.text


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        layout.check_layout(tmp_path / "nowhere", schedule.load("cpu-tiny"))


def test_missing_resized_copy_names_the_prepare_command(data_copy):
    shutil.rmtree(Path(str(data_copy) + "-sz"))
    with pytest.raises(DataError, match=r"trndir '-sz/160' needs .*-sz/160/train.*python -m trainer prepare"):
        layout.check_layout(data_copy, schedule.load("cpu-tiny"))


def test_folder_without_classes(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        layout.scan(tmp_path / "train")


def test_empty_class_folder(data_copy):
    (data_copy / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra has no images"):
        layout.scan(data_copy / "train")


def test_class_sets_that_differ_between_train_and_validation(data_copy):
    shutil.rmtree(Path(str(data_copy) + "-sz/160/validation/circle"))
    with pytest.raises(DataError, match=r"differ .*missing \['circle'\]"):
        layout.check_layout(data_copy, schedule.load("cpu-tiny"))


@pytest.mark.slow
def test_odd_but_readable_files_train_and_unreadable_ones_are_named_and_skipped(tmp_path, caplog):
    """Grayscale, CMYK, 1x1, 16-bit PNG, PNG-named-.JPEG, animated GIF and Latin-1-named images train, macOS's
    `._` metadata files beside them are not images; a truncated JPEG and a text file named .JPEG are skipped with a
    warning naming each (by prepare, and by the trainer reading full-size images); a file not named like an image
    is left out with a warning at the check a run makes before it creates anything."""
    root = make_demo_dataset(tmp_path / "odd", classes=2, train_per_class=8, val_per_class=4)
    odd = odd_files(root)
    sixteen_bit = data.decode(str(odd["sixteen_bit"]))
    with Image.open(odd["sixteen_bit"]) as png:
        levels = torch.from_numpy(np.asarray(png, dtype=np.int64) // 257)
    assert sixteen_bit.dtype == torch.uint8, "the network's normalisation is for 8 bits"
    assert all(torch.equal(channel.long(), levels) for channel in sixteen_bit)
    assert data.decode(str(odd["latin1"])).shape[0] == 3
    assert data.decode(str(odd["animated"])).shape == data.decode(str(odd["sixteen_bit"])).shape, "its first frame"
    with caplog.at_level(logging.WARNING):
        folders = layout.check_source(root)
        report = prepare(root, [160], workers=1)
    assert str(odd["apple_double"]) not in {path for path, _ in folders["train"].samples}, "not an image"
    assert set(report.corrupt) == {odd["truncated"], odd["text"]}
    assert f"leaving out 1 file(s) that are not images (.jpeg, .jpg, .png, .webp): {odd['notes']}" in caplog.text
    assert str(odd["truncated"]) in caplog.text and str(odd["text"]) in caplog.text
    full_size = tmp_path / "full-size.toml"  # the odd files as they are, not as prepare rewrote them
    full_size.write_text('arch = "resnet10"\n[[data]]\nep = 0\nsz = 32\nbs = 32\n[[lr]]\nep = [0, 1]\nlr = 0.05\n')
    for schedule_name in ("cpu-tiny", str(full_size)):
        logdir = tmp_path / Path(schedule_name).stem
        result = run(train_command(root, logdir, "--epochs", "1") + ["--schedule", schedule_name])
        assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping corrupt image {odd['truncated']}" in result.stderr + result.stdout
    assert f"skipping corrupt image {odd['text']}" in result.stderr + result.stdout
    assert "caf" not in result.stderr + result.stdout, "the Latin-1 name is read, not skipped"
    assert "._" not in result.stderr + result.stdout and "._" not in caplog.text, "macOS's metadata is not read"


def test_an_image_past_pillows_pixel_limit_is_read_as_one_not_a_crash(tmp_path, monkeypatch):
    """Pillow refuses to open an image of over twice MAX_IMAGE_PIXELS (a 200-megapixel photo, a scan or a
    satellite tile): the auto recipe's size sample and rect_val's aspect ratios read its header all the same, and
    --decode device leaves it to the workers' decoder."""
    root = make_demo_dataset(tmp_path / "big", classes=2, train_per_class=4, val_per_class=2)
    huge = sorted((root / "train").iterdir())[0] / "huge.JPEG"
    Image.new("RGB", (2400, 1600)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # as a 180-megapixel image meets the default
    assert recipe.facts(root).train_images == 9
    folder = layout.scan(root / "train")
    ratios = data.aspect_ratios(folder, tmp_path / "cache")
    assert ratios[[path for path, _ in folder.samples].index(str(huge))] == 1.5
    assert gpu_decode.baseline_jpeg_size(data.read_bytes(str(huge))) is None, "decoded by the workers' path"
