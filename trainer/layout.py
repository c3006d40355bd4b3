"""The dataset's folders: the ImageNet layout (ROOT/{train,validation}/<class>/*.JPEG, resized copies at
ROOT-sz/<px>/...), scanned by name only. No torch here: the orchestrator checks a dataset with it before it
creates anything, and the trainer scans what a schedule reads before its first batch."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.schedule import Schedule

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp")
SPLITS = ("train", "validation")


class DataError(ValueError):
    """The data cannot serve the schedule; the message names the folder or file."""


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]  # (path, class index)


def is_image_name(name: str) -> bool:
    """An image by its name. Hidden files are not: macOS's AppleDouble `._x.jpg` beside each image copied from a
    Mac (tar, exFAT, SMB) holds metadata, not an image."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def split_dir(root: str | Path, trndir: str, split: str) -> Path:
    """`ROOT` + `-sz/160` + `/train`: the seed's layout of resized copies beside the full-size set."""
    return Path(str(root).rstrip("/") + trndir) / split


def scan(folder: Path) -> ImageFolder:
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    classes = tuple(sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataError(f"data folder {folder} has no class folders (expected {folder}/<class>/*.JPEG)")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(f.name for f in os.scandir(folder / name) if f.is_file() and is_image_name(f.name))
        if not files:
            raise DataError(f"class folder {folder / name} has no images (.JPEG, .jpg, .png or .webp)")
        samples.extend((str(folder / name / f), index) for f in files)
    return ImageFolder(folder, classes, tuple(samples))


def check_layout(root: str | Path, schedule: Schedule) -> dict[str, ImageFolder]:
    """Scan every folder the schedule reads; fail before training if one is missing or the classes differ."""
    if not Path(root).is_dir():
        raise DataError(f"data folder {root} does not exist")
    folders: dict[str, ImageFolder] = {}
    for trndir in dict.fromkeys(p.trndir for p in schedule.data):
        for split in SPLITS:
            path = split_dir(root, trndir, split)
            if not path.is_dir() and trndir:
                raise DataError(f"the schedule's phase with trndir {trndir!r} needs {path}, which does not "
                                f"exist: make the resized copies with `python -m trainer prepare {root}`")
            folders[f"{trndir}:{split}"] = scan(path)
    _check_same_classes(list(folders.values()))
    return folders


def check_source(root: str | Path) -> dict[str, ImageFolder]:
    """The full-size train/ and validation/ folders, scanned (names only, nothing decoded): every class folder
    has images, and both splits have the same classes. What a run checks before it creates anything. Files that
    are not images by their name, and links to nothing, are left out with a warning naming them."""
    if not Path(root).is_dir():
        raise DataError(f"dataset {root} {'is not a folder' if Path(root).exists() else 'does not exist'}")
    for split in SPLITS:
        if not (Path(root) / split).is_dir():
            raise DataError(f"dataset {root} has no {split}/ folder (expected ROOT/{{train,validation}}/"
                            "<class>/*.JPEG)")
    folders = {split: scan(Path(root) / split) for split in SPLITS}
    _check_same_classes(list(folders.values()))
    check_classes(folders[SPLITS[0]])
    others, broken = [], []
    for folder in folders.values():
        for name in folder.classes:
            for entry in os.scandir(folder.root / name):
                if entry.is_symlink() and not os.path.exists(entry.path):
                    broken.append(entry.path)
                elif not entry.name.startswith(".") and not is_image_name(entry.name):
                    others.append(entry.path)
    _warn_left_out(f"file(s) that are not images ({', '.join(IMAGE_EXTENSIONS)})", others)
    _warn_left_out("link(s) to nothing", broken)
    return folders


def check_classes(folder: ImageFolder) -> None:
    """One class trains to a loss of 0 and 100% accuracy from its first step, whatever the images."""
    if len(folder.classes) < 2:
        raise DataError(f"{folder.root} has one class folder ({folder.classes[0]}): a classifier needs at least 2")


def _warn_left_out(what: str, paths: list[str]) -> None:
    if paths:
        paths = sorted(paths)
        log.warning("leaving out %d %s: %s%s", len(paths), what, ", ".join(paths[:5]),
                    ", ..." if len(paths) > 5 else "")


def _check_same_classes(folders: list[ImageFolder]) -> None:
    reference = folders[0]
    for folder in folders[1:]:
        if folder.classes != reference.classes:
            extra = sorted(set(folder.classes) - set(reference.classes))
            missing = sorted(set(reference.classes) - set(folder.classes))
            raise DataError(f"class folders of {folder.root} differ from {reference.root}: "
                            f"extra {extra[:5]}, missing {missing[:5]}")
