import json
from pathlib import Path

import pytest
from PIL import Image

from trainer.demo_data import CLASS_NAMES, MARKER, demo_dataset_ready, make_demo_dataset

TINY = {"classes": 3, "train_per_class": 4, "val_per_class": 2}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.JPEG"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **TINY)


def test_layout_and_counts(tiny: Path) -> None:
    for split, per_class in (("train", 4), ("validation", 2)):
        classes = sorted(p.name for p in (tiny / split).iterdir())
        assert classes == sorted(CLASS_NAMES[:3])
        for name in classes:
            names = sorted(p.name for p in (tiny / split / name).iterdir())
            assert names == [f"{name}_{i:04d}.JPEG" for i in range(per_class)]


def test_images_are_jpegs_of_varied_size_and_orientation(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path, classes=2, train_per_class=20, val_per_class=1)
    sizes = []
    for path in root.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.append(image.size)
    assert all(150 <= side <= 500 for size in sizes for side in size)
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert len(set(sizes)) > len(sizes) // 2


def test_same_arguments_give_identical_bytes(tiny: Path, tmp_path: Path) -> None:
    assert files(make_demo_dataset(tmp_path / "again", **TINY)) == files(tiny)


def test_seed_and_split_change_the_images(tiny: Path, tmp_path: Path) -> None:
    other = files(make_demo_dataset(tmp_path, **TINY, seed=1))
    assert other.keys() == files(tiny).keys()
    assert all(other[name] != data for name, data in files(tiny).items())
    name = CLASS_NAMES[0]
    assert (tiny / "train" / name / f"{name}_0000.JPEG").read_bytes() != \
        (tiny / "validation" / name / f"{name}_0000.JPEG").read_bytes()


def test_marker_makes_a_second_call_return_at_once(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path, **TINY)
    assert json.loads((root / MARKER).read_text())["classes"] == 3
    assert demo_dataset_ready(root, **TINY)
    sentinel = root / "train" / CLASS_NAMES[0] / f"{CLASS_NAMES[0]}_0000.JPEG"
    sentinel.write_bytes(b"left alone")
    make_demo_dataset(root, **TINY)
    assert sentinel.read_bytes() == b"left alone"


def test_missing_marker_regenerates(tiny: Path, tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path, **TINY)
    victim = root / "train" / CLASS_NAMES[1] / f"{CLASS_NAMES[1]}_0002.JPEG"
    victim.unlink()
    (root / MARKER).unlink()
    assert not demo_dataset_ready(root, **TINY)
    make_demo_dataset(root, **TINY)
    assert demo_dataset_ready(root, **TINY)
    assert files(root) == files(tiny)


def test_different_arguments_regenerate_without_leftovers(tmp_path: Path) -> None:
    make_demo_dataset(tmp_path, **TINY)
    assert not demo_dataset_ready(tmp_path, classes=2, train_per_class=3, val_per_class=2)
    make_demo_dataset(tmp_path, classes=2, train_per_class=3, val_per_class=2)
    assert demo_dataset_ready(tmp_path, classes=2, train_per_class=3, val_per_class=2)
    assert not demo_dataset_ready(tmp_path, **TINY)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(CLASS_NAMES[:2])
    assert len(list((tmp_path / "train").rglob("*.JPEG"))) == 6


def test_refuses_to_mix_into_a_foreign_dataset(tmp_path: Path) -> None:
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match="not part of a demo dataset"):
        make_demo_dataset(tmp_path, **TINY)


@pytest.mark.parametrize("arguments", [
    {"classes": 1}, {"classes": len(CLASS_NAMES) + 1}, {"classes": 2.5}, {"train_per_class": 0},
    {"val_per_class": -1}, {"seed": -1},
])
def test_bad_arguments_raise(tmp_path: Path, arguments: dict) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, **{**TINY, **arguments})
    assert not any(tmp_path.iterdir())


def test_too_many_classes_message_names_the_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"from 2 to {len(CLASS_NAMES)}"):
        make_demo_dataset(tmp_path, classes=len(CLASS_NAMES) + 1)
