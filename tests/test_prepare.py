import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import decode
from trainer.demo_data import make_demo_dataset
from trainer.layout import scan
from trainer import prepare as prepare_module
from trainer.prepare import LONGEST_SIDE, PrepareError, PrepareReport, prepare, resized_root
from trainer.recipe import facts

SIZES = (100, 160)
# file -> (width, height); relative to the dataset root
IMAGES = {
    "train/cat/landscape.JPEG": (300, 200),
    "train/cat/portrait.jpg": (181, 400),
    "train/dog/small.JPEG": (120, 90),
    "train/dog/exact.jpeg": (160, 250),
    "validation/cat/picture.png": (240, 320),
    "validation/dog/val.JPEG": (400, 300),
}


def make_dataset(root: Path) -> Path:
    for name, size in IMAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.linear_gradient("L").resize(size).convert("RGB")
        image.save(path, "PNG" if path.suffix == ".png" else "JPEG", quality=95)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "imagenet")


def test_output_roots_append_the_suffix_to_the_root_string(dataset: Path) -> None:
    report = prepare(dataset, SIZES, workers=1)
    assert report.output_roots == {100: Path(f"{dataset}-sz/100"), 160: Path(f"{dataset}-sz/160")}
    assert resized_root(dataset, 352) == dataset.parent / "imagenet-sz" / "352"


def test_short_side_becomes_the_size_with_aspect_kept(dataset: Path) -> None:
    prepare(dataset, SIZES, workers=1)
    for size in SIZES:
        for name, source_size in IMAGES.items():
            with Image.open(resized_root(dataset, size) / name) as image:
                width, height = image.size
            source_width, source_height = source_size
            assert min(width, height) == min(size, min(source_size)), name
            # the long side is what the source's aspect ratio gives, to within rounding
            if width <= height:
                assert abs(height - width * source_height / source_width) <= 1, name
            else:
                assert abs(width - height * source_width / source_height) <= 1, name


def test_small_images_are_copied_unchanged_and_formats_follow_the_name(dataset: Path) -> None:
    report = prepare(dataset, SIZES, workers=1)
    # small.JPEG for both sizes; exact.jpeg (short side 160) for 160
    assert (report.copied, report.resized, report.skipped_existing) == (3, 9, 0)
    for size in SIZES:
        copy = resized_root(dataset, size) / "train/dog/small.JPEG"
        assert copy.read_bytes() == (dataset / "train/dog/small.JPEG").read_bytes()
    assert (resized_root(dataset, 160) / "train/dog/exact.jpeg").read_bytes() == \
        (dataset / "train/dog/exact.jpeg").read_bytes()
    with Image.open(resized_root(dataset, 100) / "validation/cat/picture.png") as image:
        assert image.format == "PNG"
    with Image.open(resized_root(dataset, 100) / "train/cat/landscape.JPEG") as image:
        assert image.format == "JPEG"
    assert not (resized_root(dataset, 100) / "train/cat/notes.txt").exists()


def test_second_run_skips_everything_and_a_deleted_output_is_redone(dataset: Path) -> None:
    prepare(dataset, SIZES, workers=1)
    again = prepare(dataset, SIZES, workers=1)
    assert (again.resized, again.copied, again.skipped_existing, again.corrupt) == (0, 0, 12, [])
    victim = resized_root(dataset, 160) / "train/cat/landscape.JPEG"
    victim.unlink()
    redone = prepare(dataset, SIZES, workers=1)
    assert (redone.resized, redone.copied, redone.skipped_existing) == (1, 0, 11)
    with Image.open(victim) as image:
        assert image.size == (240, 160)
    assert not [p for p in resized_root(dataset, 160).rglob("*") if p.name.endswith(".tmp")]


def test_corrupt_images_are_skipped_reported_and_do_not_stop_the_rest(
        dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    garbage = dataset / "train/cat/garbage.JPEG"
    garbage.write_bytes(b"\x00not a jpeg at all" * 50)
    truncated = dataset / "validation/dog/truncated.JPEG"
    truncated.write_bytes((dataset / "validation/dog/val.JPEG").read_bytes()[:400])
    with caplog.at_level(logging.WARNING, logger="trainer.prepare"):
        report = prepare(dataset, SIZES, workers=1)
    assert report.corrupt == sorted([garbage, truncated])
    assert report.resized + report.copied == 2 * len(IMAGES)
    for size in SIZES:
        assert not (resized_root(dataset, size) / "train/cat/garbage.JPEG").exists()
        assert not (resized_root(dataset, size) / "validation/dog/truncated.JPEG").exists()
    assert str(garbage) in caplog.text and str(truncated) in caplog.text


def test_parallel_run_on_a_demo_dataset(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "demo", classes=3, train_per_class=4, val_per_class=2)
    report = prepare(root, (160, 352), workers=2)
    assert isinstance(report, PrepareReport)
    assert report.resized + report.copied == 2 * 18 and report.corrupt == []
    for size in (160, 352):
        for source in root.rglob("*.JPEG"):
            with Image.open(source) as original, \
                    Image.open(resized_root(root, size) / source.relative_to(root)) as copy:
                assert min(copy.size) == min(size, min(original.size))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="does not exist"):
        prepare(tmp_path / "nowhere")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_root_without_a_split(dataset: Path, split: str) -> None:
    shutil.rmtree(dataset / split)
    with pytest.raises(PrepareError, match=f"no {split}/ folder"):
        prepare(dataset)


def test_split_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "stray.JPEG").write_bytes(b"")
    with pytest.raises(PrepareError, match="no class folders"):
        prepare(tmp_path)


@pytest.mark.parametrize("sizes", [(), (0,), (160, -1), (160.0,), (True,), "160", 160])
def test_bad_sizes(dataset: Path, sizes: object) -> None:
    with pytest.raises(PrepareError, match="sizes"):
        prepare(dataset, sizes)  # type: ignore[arg-type]


def test_bad_workers(dataset: Path) -> None:
    with pytest.raises(PrepareError, match="workers"):
        prepare(dataset, workers=0)


def test_prepare_error_is_a_value_error() -> None:
    assert issubclass(PrepareError, ValueError)


def test_a_changed_source_is_made_again_and_a_removed_one_loses_its_outputs(dataset: Path) -> None:
    prepare(dataset, SIZES, workers=1)
    changed = dataset / "train/cat/landscape.JPEG"
    Image.linear_gradient("L").resize((500, 200)).convert("RGB").save(changed, "JPEG")
    (dataset / "train/dog/small.JPEG").unlink()
    shutil.rmtree(dataset / "validation/cat")
    again = prepare(dataset, SIZES, workers=1)
    assert (again.resized, again.copied, again.removed) == (2, 0, 4)
    for size in SIZES:
        with Image.open(resized_root(dataset, size) / "train/cat/landscape.JPEG") as image:
            assert image.size == (round(500 * size / 200), size)
        assert not (resized_root(dataset, size) / "train/dog/small.JPEG").exists()
        assert not (resized_root(dataset, size) / "validation/cat").exists(), "a class gone from ROOT goes"


def test_a_source_replaced_by_an_older_file_is_made_again(dataset: Path) -> None:
    """rsync -a, cp -p and tar x put a file in place with its own, older, modification time."""
    prepare(dataset, SIZES, workers=1)
    replaced = dataset / "train/cat/landscape.JPEG"
    before = replaced.stat().st_mtime_ns
    Image.linear_gradient("L").resize((500, 200)).convert("RGB").save(replaced, "JPEG")
    os.utime(replaced, ns=(before, before - 86_400 * 10**9))  # a day older than the one it replaced
    again = prepare(dataset, SIZES, workers=1)
    assert (again.resized, again.copied) == (2, 0)
    for size in SIZES:
        with Image.open(resized_root(dataset, size) / "train/cat/landscape.JPEG") as image:
            assert image.size == (round(500 * size / 200), size)
    assert prepare(dataset, SIZES, workers=1).resized == 0, "made from it as it is now"


def test_progress_is_reported_up_to_every_image_to_make(dataset: Path) -> None:
    calls: list[tuple[int, int]] = []
    prepare(dataset, SIZES, workers=1, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (len(IMAGES), len(IMAGES))
    calls.clear()
    prepare(dataset, SIZES, workers=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [], "nothing to make, nothing to report"


def test_a_16_bit_png_named_jpeg_is_copied_at_its_levels_not_clipped_white(dataset: Path) -> None:
    """Pillow's convert() clips 16-bit levels to 255; the copy, a JPEG by its name, has each level / 257."""
    levels = np.linspace(0, 65535, 200 * 300, dtype=np.uint16).reshape(200, 300)
    Image.fromarray(levels).save(dataset / "train" / "dog" / "sixteen-bit.JPEG", "PNG")
    prepare(dataset, [100], workers=1)
    with Image.open(resized_root(dataset, 100) / "train/dog/sixteen-bit.JPEG") as copy:
        assert copy.format == "JPEG"
        copied = np.asarray(copy.convert("L"), dtype=float)
    assert copied.min() < 10 and 120 < copied.mean() < 135, "the gradient's levels, 0 to 255, not all 255"


@pytest.mark.parametrize("made_as", ["WEBP", "animated WEBP", "16-bit PNG"])
def test_a_webp_image_is_resized_as_webp_and_read_as_the_others(dataset: Path, made_as: str) -> None:
    """WebP, common in datasets gathered from the web, is an image like the others: scanned, resized into a WebP
    of the same name (a 16-bit PNG named .webp at its levels, not clipped white), decoded by the trainer (an
    animated one, which torchvision refuses, as its first frame) full size or resized."""
    source = dataset / "train" / "dog" / "web.webp"
    gradient = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    if made_as == "WEBP":
        gradient.save(source, "WEBP", quality=95)
    elif made_as == "animated WEBP":
        later = [Image.new("RGB", gradient.size, colour) for colour in ("white", "red")]
        gradient.save(source, "WEBP", quality=95, save_all=True, append_images=later, duration=100)
    else:
        Image.fromarray(np.linspace(0, 65535, 200 * 300, dtype=np.uint16).reshape(200, 300)).save(source, "PNG")
    assert str(source) in {path for path, _ in scan(dataset / "train").samples}
    prepare(dataset, [100], workers=1)
    with Image.open(resized_root(dataset, 100) / "train/dog/web.webp") as copy:
        assert (copy.format, min(copy.size)) == ("WEBP", 100)
        levels = np.asarray(copy.convert("L"), dtype=float)
    assert levels.min() < 10 and 100 < levels.mean() < 160, "the gradient's levels, 0 to 255"
    assert decode(str(resized_root(dataset, 100) / "train/dog/web.webp")).shape == (3, 100, 150)
    full_size = decode(str(source)).float()
    assert full_size.shape == (3, 200, 300) and full_size.min() < 10 and 100 < full_size.mean() < 160


@pytest.mark.parametrize("name, kind, long_side", [("strip.webp", "WEBP", 24_000), ("strip.jpg", "JPEG", 80_000)])
def test_a_strip_too_long_for_its_names_format_is_prepared_centre_cropped_to_what_the_format_holds(
        dataset: Path, name: str, kind: str, long_side: int) -> None:
    """A PNG of a long strip named .webp or .jpg (files from the web are often named for another format) resizes
    to a long side past what WebP (16,383 pixels) or libjpeg (65,500) holds: its copy keeps the middle, and the rest
    of the dataset is prepared."""
    source = dataset / "train" / "dog" / name
    Image.linear_gradient("L").resize((120, long_side)).save(source, "PNG")
    report = prepare(dataset, [100], workers=1)
    assert report.corrupt == []
    with Image.open(resized_root(dataset, 100) / "train/dog" / name) as copy:
        assert (copy.format, copy.size) == (kind, (100, LONGEST_SIDE[kind]))
        middle = np.asarray(copy.convert("L"), dtype=float)[LONGEST_SIDE[kind] // 2].mean()
    assert 120 < middle < 135, "the strip's middle, not its top"


@pytest.mark.parametrize("made_as, name", [("CMYK JPEG", "cmyk.png"), ("float TIFF", "float.png"),
                                           ("32-bit TIFF", "int.png"), ("float TIFF", "float.JPEG")])
def test_an_image_in_a_mode_its_names_format_cannot_hold_is_written_in_one_it_can(
        dataset: Path, made_as: str, name: str) -> None:
    """Pillow writes no CMYK, float or 32-bit PNG: such a file named .png (a CMYK JPEG, a scientific TIFF) failed
    the whole prepare. Its copy is RGB, or 8-bit grey scaled from the range its levels fit in (a float image's 0 to
    1, 8-bit levels in a 32-bit image), not clipped, nor taken for 16-bit levels (all black)."""
    source = dataset / "train" / "dog" / name
    if made_as == "CMYK JPEG":
        Image.linear_gradient("L").resize((300, 200)).convert("RGB").convert("CMYK").save(source, "JPEG")
    else:
        top = 1.0 if made_as == "float TIFF" else 255
        levels = np.linspace(0, top, 200 * 300).reshape(200, 300)
        Image.fromarray(levels.astype(np.float32 if made_as == "float TIFF" else np.int32)).save(source, "TIFF")
    report = prepare(dataset, [100], workers=1)
    assert report.corrupt == [] and report.made == len(IMAGES) + 1
    with Image.open(resized_root(dataset, 100) / "train/dog" / name) as copy:
        assert (copy.format, copy.mode, copy.size) == (
            "JPEG" if name.endswith(".JPEG") else "PNG", "RGB" if made_as == "CMYK JPEG" else "L", (150, 100))
        copied = np.asarray(copy.convert("L"), dtype=float)
    assert copied.min() < 10 and 120 < copied.mean() < 135, "the gradient's levels, 0 to 255"


def test_an_image_whose_copy_cannot_be_written_is_skipped_with_a_warning_naming_it(
        dataset: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """What Pillow's encoder refuses is the image's problem, not the dataset's: the image is left out, without the
    copies made of it at other sizes, as an unreadable one is, and the rest is prepared."""
    save = Image.Image.save

    def refusing(image: Image.Image, path: Path, *args: object, **kwargs: object) -> None:
        if image.size == (240, 160):  # landscape.JPEG's 160 px copy, made after its 100 px one
            raise OSError("encoder error -2 when writing image file")
        save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", refusing)
    refused = dataset / "train/cat/landscape.JPEG"
    with caplog.at_level(logging.WARNING, logger="trainer.prepare"):
        report = prepare(dataset, SIZES, workers=1)
    assert report.corrupt == [refused]
    assert f"skipping image {refused}: its copy cannot be written (encoder error -2" in caplog.text
    assert report.made == 2 * len(IMAGES) - 2
    for size in SIZES:
        assert not (resized_root(dataset, size) / "train/cat/landscape.JPEG").exists()
    assert not [p for p in resized_root(dataset, 160).parent.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_still_fails_prepare(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the file system refuses (no space, no permission) is the output folder's problem, not an image's:
    prepare fails rather than skip every image."""
    def full(image: Image.Image, path: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError) as raised:
        prepare(dataset, SIZES, workers=1)
    assert raised.value.errno == errno.ENOSPC


def test_a_name_of_nearly_255_bytes_is_prepared(dataset: Path) -> None:
    """A legal name of 250 bytes: the temporary file a copy is written to is named shortly, not after it (which
    passed the 255 bytes a name may have, failing the whole prepare)."""
    name = "猫" * 82 + ".jpg"
    assert len(name.encode()) == 250
    Image.linear_gradient("L").resize((300, 200)).convert("RGB").save(dataset / "train" / "cat" / name, "JPEG")
    report = prepare(dataset, SIZES, workers=1)
    assert report.corrupt == [] and report.made == 2 * len(IMAGES) + 2
    for size in SIZES:
        with Image.open(resized_root(dataset, size) / "train" / "cat" / name) as copy:
            assert min(copy.size) == size
    assert not [p for p in resized_root(dataset, 160).parent.rglob("*") if p.name.endswith(".tmp")]


def test_an_image_past_pillows_pixel_limit_is_prepared_from_a_reduced_decode_and_sized_by_the_recipe(
        dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow refuses to open an image of over twice MAX_IMAGE_PIXELS (a 200-megapixel phone's photo, 16320 x
    12240), which prepare skipped as unreadable. It is the user's own data, which the trainer reads: its copies are
    made, a JPEG's from the smallest of libjpeg's reduced decodes (1/2 to 1/8) that holds the largest size, and the
    auto recipe counts its size; Pillow's limit is left as it was."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # as a 180-megapixel image meets the default
    gradient = Image.linear_gradient("L").convert("RGB")
    gradient.resize((3200, 1600)).save(dataset / "train" / "cat" / "huge.JPEG", quality=95)
    gradient.resize((1200, 1800)).save(dataset / "train" / "dog" / "huge.png")
    decoded: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording(image: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        decoded.append(image.size)
        return resize(image, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    report = prepare(dataset, SIZES, workers=1)
    assert report.corrupt == [] and report.made == 2 * len(IMAGES) + 4
    assert decoded.count((400, 200)) == 2, "the JPEG decoded at 1/8, short side 200 >= 160"
    assert decoded.count((1200, 1800)) == 2, "a PNG has no reduced decode"
    for name, sizes in {"train/cat/huge.JPEG": [(200, 100), (320, 160)],
                        "train/dog/huge.png": [(100, 150), (160, 240)]}.items():
        for size, expected in zip(SIZES, sizes):
            with Image.open(resized_root(dataset, size) / name) as copy:
                assert copy.size == expected, name
                levels = np.asarray(copy.convert("L"), dtype=float)
            assert levels.min() < 10 and 120 < levels.mean() < 135, "the gradient's levels, 0 to 255"
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    # the median of the training images' short sides, 200, 181, 90 and 160, and the two past the limit, 1600, 1200
    assert facts(dataset).short_side == 190
    with pytest.raises(Image.DecompressionBombError):
        Image.open(dataset / "train" / "cat" / "huge.JPEG")


def test_an_image_too_large_to_decode_in_bounded_memory_is_skipped_as_unreadable(
        dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past Pillow's pixel limit only a JPEG has a reduced decode: another format past DECODED_PIXELS_AT_MOST (a
    40,000 x 40,000 PNG would take 4.8 GB in each worker, whose death hangs the pool) is skipped, not decoded."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    monkeypatch.setattr(prepare_module, "DECODED_PIXELS_AT_MOST", 2_000_000)
    gradient = Image.linear_gradient("L").convert("RGB")
    gradient.resize((3200, 1600)).save(dataset / "train" / "cat" / "huge.JPEG", quality=95)  # decoded at 1/8
    gradient.resize((1200, 1800)).save(dataset / "train" / "dog" / "huge.png")
    report = prepare(dataset, SIZES, workers=1)
    assert report.corrupt == [dataset / "train" / "dog" / "huge.png"]
    assert (resized_root(dataset, 160) / "train/cat/huge.JPEG").exists()
