"""Three small, real image-classification datasets that ship inside PyPI wheels, written as ImageNet-layout folders.

    pip install --require-hashes -r requirements-bench.lock        # scikit-learn and scikit-image, locked
    python bench/real_datasets.py /tmp/real                        # all three
    python bench/real_datasets.py /tmp/real --only digits lfw-faces

Writes OUT_DIR/<name>/{train,validation}/<class>/<class>_<i>.JPEG (JPEG quality 95, at the source's native
resolution and channels: nothing is upscaled) with a fixed, seeded split that holds out about 20% of every class, and
prints one line per dataset. Nothing is downloaded: every pixel comes from files inside the two wheels, so it runs
offline.

digits: scikit-learn 1.9.1, `sklearn.datasets.load_digits`. 1,797 handwritten digits, 8x8 grayscale (the wheel's
    0..16 counts scaled to 0..255), classes 0-9. A copy of the test set of the UCI "Optical Recognition of
    Handwritten Digits" data (E. Alpaydin, C. Kaynak, 1998). scikit-learn is BSD-3-Clause and states no separate
    licence for this file.

lfw-faces: scikit-image 0.26.0, `skimage.data.lfw_subset` (the wheel's data/lfw_subset.npy). 200 grayscale 25x25
    crops from Labeled Faces in the Wild: 100 faces and 100 non-faces cut from backgrounds in the same data set; classes
    face and non-face. scikit-image is BSD-3-Clause and states no separate licence for this file.

photo-patches: real colour photographs, NOT a labelled photo dataset. No wheel found on PyPI ships labelled colour
    photos in useful numbers, so this is a scene/texture recognition task: nine photographs cut into
    non-overlapping 64x64 RGB tiles, each tile labelled with the photo it came from. The retina photo is first cut
    to the square inside its circular field of view (so no tile is its black surround), and a photo that yields
    more than 100 tiles keeps a seeded random 100. Neighbouring tiles share texture and lighting, so this set
    rewards recognising a photo's texture, colour and lighting, not objects. Sources, with the licence each
    package states:
    - scikit-image 0.26.0, `skimage.data`: astronaut (NASA, public domain), chelsea (a cat; CC0, Stefan van der
      Walt), coffee (CC0, Rachel Michetti), hubble_deep_field (NASA, public domain), immunohistochemistry
      (stained tissue micrograph, CMMI; "no known copyright restrictions"), retina (fundus photograph; CC0, Mikael
      Haggstrom), rocket (SpaceX, public domain).
    - scikit-learn 1.9.1, `sklearn.datasets.load_sample_image`: china.jpg (a temple; CC BY 2.0, danielbuechele on
      Flickr) and flower.jpg (CC BY 2.0, vultilion on Flickr).
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

SEED = 0
VALIDATION_FRACTION = 0.2
JPEG_QUALITY = 95
TILE = 64
TILES_PER_PHOTO = 100
PIP = {"sklearn": "scikit-learn==1.9.1", "skimage": "scikit-image==0.26.0"}
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    images: list[np.ndarray]  # uint8, HxW (grayscale) or HxWx3 (RGB)
    labels: list[int]  # index into classes


def _source(module: str) -> ModuleType:
    """Import a source package, or stop with the pip command that provides it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SystemExit(f"cannot import {module} ({error}): pip install {PIP[top]}") from error


def _to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    return np.rint(values * (255.0 / top)).astype(np.uint8)


def load_digits() -> Dataset:
    digits = _source("sklearn.datasets").load_digits()
    images = _to_uint8(digits.images, 16.0)
    return Dataset("digits", tuple(str(d) for d in range(10)), list(images), digits.target.tolist())


def load_lfw_faces() -> Dataset:
    images = _to_uint8(_source("skimage.data").lfw_subset(), 1.0)  # 100 faces, then 100 non-faces
    return Dataset("lfw-faces", ("face", "non-face"), list(images), [0] * 100 + [1] * 100)


def _photos() -> dict[str, np.ndarray]:
    skimage_data = _source("skimage.data")
    sklearn_datasets = _source("sklearn.datasets")
    photos = {name.replace("_", "-"): getattr(skimage_data, name)() for name in SKIMAGE_PHOTOS}
    photos.update({name.removesuffix(".jpg"): sklearn_datasets.load_sample_image(name) for name in SKLEARN_PHOTOS})
    photos["retina"] = _inside_circle(photos["retina"])
    return photos


def _inside_circle(photo: np.ndarray) -> np.ndarray:
    """The square inscribed in a centred circular field of view that fills the frame, as the retina photo's does."""
    height, width = photo.shape[:2]
    side = int(min(height, width) / math.sqrt(2))
    top, left = (height - side) // 2, (width - side) // 2
    return photo[top:top + side, left:left + side]


def _tiles(photo: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Non-overlapping TILE x TILE tiles in reading order; a seeded random TILES_PER_PHOTO of them if there are more."""
    height, width = photo.shape[:2]
    tiles = [photo[top:top + TILE, left:left + TILE] for top in range(0, height - TILE + 1, TILE)
             for left in range(0, width - TILE + 1, TILE)]
    if len(tiles) > TILES_PER_PHOTO:
        keep = np.sort(rng.choice(len(tiles), TILES_PER_PHOTO, replace=False))
        tiles = [tiles[i] for i in keep]
    return tiles


def load_photo_patches() -> Dataset:
    rng = np.random.default_rng(SEED)
    photos = _photos()
    classes = tuple(sorted(photos))
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        tiles = _tiles(photos[name], rng)
        images += tiles
        labels += [label] * len(tiles)
    return Dataset("photo-patches", classes, images, labels)


LOADERS: dict[str, Callable[[], Dataset]] = {
    "digits": load_digits, "lfw-faces": load_lfw_faces, "photo-patches": load_photo_patches}


def validation_indices(labels: list[int], seed: int = SEED) -> set[int]:
    """A seeded, stratified hold-out: about VALIDATION_FRACTION of each class, at least one image each side."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    held_out: set[int] = set()
    for label in np.unique(labels_array):
        members = rng.permutation(np.flatnonzero(labels_array == label))
        count = min(len(members) - 1, max(1, round(len(members) * VALIDATION_FRACTION)))
        held_out.update(members[:count].tolist())
    return held_out


def write(dataset: Dataset, root: Path) -> dict[str, int]:
    """Write the dataset's JPEGs under root; returns the image count of each split."""
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty; remove it or pick another folder")
    held_out = validation_indices(dataset.labels)
    counts = {"train": 0, "validation": 0}
    for index, (image, label) in enumerate(zip(dataset.images, dataset.labels, strict=True)):
        split = "validation" if index in held_out else "train"
        name = dataset.classes[label]
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{name}_{index:05d}.JPEG", "JPEG", quality=JPEG_QUALITY)
        counts[split] += 1
    return counts


def summary(dataset: Dataset, counts: dict[str, int]) -> str:
    sizes = sorted({(image.shape[1], image.shape[0]) for image in dataset.images})
    modes = sorted({"RGB" if image.ndim == 3 else "L" for image in dataset.images})
    size_text = ", ".join(f"{w}x{h}" for w, h in sizes)
    return (f"{dataset.name}: {len(dataset.classes)} classes, {counts['train']} train, "
            f"{counts['validation']} validation, {size_text} {'/'.join(modes)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="writes OUT_DIR/<name>/{train,validation}/<class>/*.JPEG")
    parser.add_argument("--only", nargs="+", choices=sorted(LOADERS), metavar="NAME",
                        help=f"write only these datasets (of {', '.join(LOADERS)})")
    args = parser.parse_args(argv)
    for name in args.only or LOADERS:
        dataset = LOADERS[name]()
        print(summary(dataset, write(dataset, args.out_dir / name)))


if __name__ == "__main__":
    main()
