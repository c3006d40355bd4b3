"""A deterministic, learnable demo dataset in the ImageNet folder layout, made without any download.

Each class is a shape (circle, square, ...) drawn at a random position, scale, rotation and colour on a
noisy background, so only the shape identifies the class. Images are JPEGs of varied sizes and aspect
ratios, like ImageNet's, written as ROOT/{train,validation}/<class>/<class>_<i>.JPEG.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainer.layout import SPLITS
from trainer.process_pool import process_pool

logger = logging.getLogger(__name__)

MARKER = "DEMO_DATASET.json"
# Bump when the images change, so datasets made by an older version are regenerated.
GENERATOR_VERSION = 2
MIN_SIDE, MAX_SIDE = 150, 500
JPEG_QUALITY = 90
MIN_LUMINANCE_CONTRAST = 80

Polygon = np.ndarray  # (n, 2) vertices in unit coordinates, roughly within [-1, 1]
Shape = list[tuple[Polygon, int]]  # polygons in drawing order with their mask value: 255 draws, 0 cuts a hole


def _ngon(n: int, radius: float = 1.0, phase: float = 0.0, center: tuple[float, float] = (0.0, 0.0)) -> Polygon:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius + np.asarray(center)


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _star() -> Shape:
    outer, inner = _ngon(5, 1.0, -math.pi / 2), _ngon(5, 0.4, -math.pi / 2 + math.pi / 5)
    return [(np.stack([outer, inner], axis=1).reshape(-1, 2), 255)]


def _stripes(horizontal: bool) -> Shape:
    bands = 5  # three bars with two gaps between them, wide enough to survive shrinking to 32 px
    bars = [_rect(-1, -1 + 2 * b / bands, 1, -1 + 2 * (b + 1) / bands) for b in range(0, bands, 2)]
    return [(bar if horizontal else bar[:, ::-1], 255) for bar in bars]


def _checker() -> Shape:
    cells = 4
    return [(_rect(-1 + 2 * x / cells, -1 + 2 * y / cells, -1 + 2 * (x + 1) / cells, -1 + 2 * (y + 1) / cells), 255)
            for x in range(cells) for y in range(cells) if (x + y) % 2 == 0]


def _arrow() -> Shape:
    return [(np.array([[-1, -0.2], [0.1, -0.2], [0.1, -0.6], [1, 0], [0.1, 0.6], [0.1, 0.2], [-1, 0.2]]), 255)]


FULL_TURN = 180.0
# Some classes differ only in orientation, so they may only tilt a little: a quarter turn makes hstripes
# vstripes, and an eighth turn makes a square a diamond.
TILT = 15.0

# name -> (shape, maximum rotation in degrees either way); the first ten are the default classes.
GENERATORS: dict[str, tuple[Callable[[], Shape], float]] = {
    "circle": (lambda: [(_ngon(72), 255)], FULL_TURN),
    "square": (lambda: [(_rect(-1, -1, 1, 1), 255)], TILT),
    "triangle": (lambda: [(_ngon(3, phase=-math.pi / 2), 255)], FULL_TURN),
    "cross": (lambda: [(_rect(-1, -0.3, 1, 0.3), 255), (_rect(-0.3, -1, 0.3, 1), 255)], FULL_TURN),
    "ring": (lambda: [(_ngon(72), 255), (_ngon(72, 0.55), 0)], FULL_TURN),
    "star": (_star, FULL_TURN),
    "hstripes": (lambda: _stripes(horizontal=True), TILT),
    "vstripes": (lambda: _stripes(horizontal=False), TILT),
    "checker": (_checker, FULL_TURN),
    "diamond": (lambda: [(_ngon(4), 255)], TILT),
    "crescent": (lambda: [(_ngon(72), 255), (_ngon(72, 0.8, center=(0.45, 0.0)), 0)], FULL_TURN),
    "arrow": (_arrow, FULL_TURN),
}
CLASS_NAMES = tuple(GENERATORS)


def make_demo_dataset(root: Path, classes: int = 10, train_per_class: int = 260, val_per_class: int = 50,
                      seed: int = 0) -> Path:
    """Write the demo dataset under `root` (skipped when an identical one is already there); returns `root`."""
    root = Path(root)
    spec = _spec(classes, train_per_class, val_per_class, seed)
    if _complete(root, spec):
        logger.info("demo dataset already complete at %s", root)
        return root
    (root / MARKER).unlink(missing_ok=True)  # an interrupted regeneration must not look complete
    _remove_stale_files(root, spec)
    jobs = [(str(root), seed, split_index, class_index, i)
            for split_index, (split, per_class) in enumerate(zip(SPLITS, (train_per_class, val_per_class)))
            for class_index in range(classes) for i in range(per_class)]
    for split in SPLITS:
        for name in spec["class_names"]:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    logger.info("writing %d demo images (%d classes) to %s", len(jobs), classes, root)
    _run(jobs)
    _write_marker(root, spec)
    logger.info("demo dataset written to %s in %.1f s", root, time.monotonic() - started)
    return root


def demo_dataset_ready(root: Path, classes: int = 10, train_per_class: int = 260, val_per_class: int = 50,
                       seed: int = 0) -> bool:
    """Whether `root` holds a complete demo dataset made with these arguments."""
    return _complete(Path(root), _spec(classes, train_per_class, val_per_class, seed))


def _spec(classes: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    if not _is_int(classes) or not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be an integer from 2 to {len(CLASS_NAMES)} (the number of shape "
                         f"generators: {', '.join(CLASS_NAMES)}), got {classes!r}")
    for name, count in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if not _is_int(count) or count < 1:
            raise ValueError(f"{name} must be a positive integer, got {count!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return {"generator_version": GENERATOR_VERSION, "classes": classes, "train_per_class": train_per_class,
            "val_per_class": val_per_class, "seed": seed, "class_names": list(CLASS_NAMES[:classes])}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _complete(root: Path, spec: dict) -> bool:
    try:
        if json.loads((root / MARKER).read_text()) != spec:
            return False
        counts = {"train": spec["train_per_class"], "validation": spec["val_per_class"]}
        return all(sorted(os.listdir(root / split)) == sorted(spec["class_names"])
                   and all(len(os.listdir(root / split / name)) == counts[split] for name in spec["class_names"])
                   for split in SPLITS)
    except (OSError, ValueError):
        return False


def _remove_stale_files(root: Path, spec: dict) -> None:
    """Delete images an earlier demo dataset left that this one does not have; refuse to touch anything else."""
    counts = {"train": spec["train_per_class"], "validation": spec["val_per_class"]}
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        for class_dir in sorted((root / split).iterdir()):
            if not class_dir.is_dir() or class_dir.name not in CLASS_NAMES:
                raise _foreign(root, class_dir)
            keep = counts[split] if class_dir.name in spec["class_names"] else 0
            pattern = re.compile(rf"{re.escape(class_dir.name)}_(\d+)\.JPEG")
            for path in sorted(class_dir.iterdir()):
                match = pattern.fullmatch(path.name)
                if match is None or not path.is_file():
                    raise _foreign(root, path)
                if int(match.group(1)) >= keep:
                    path.unlink()
            if keep == 0:
                class_dir.rmdir()


def _foreign(root: Path, path: Path) -> ValueError:
    return ValueError(f"{root} holds {path}, which is not part of a demo dataset; "
                      f"give make_demo_dataset an empty or demo-only directory")


def _write_marker(root: Path, spec: dict) -> None:
    temp = root / f".{MARKER}.tmp"
    temp.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(temp, root / MARKER)


def _run(jobs: list[tuple[str, int, int, int, int]]) -> None:
    workers = min(len(os.sched_getaffinity(0)), len(jobs))
    if workers <= 1:
        for job in jobs:
            _write_image(job)
        return
    with process_pool(workers) as pool:
        for _ in pool.imap_unordered(_write_image, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
            pass


def _write_image(job: tuple[str, int, int, int, int]) -> None:
    root, seed, split_index, class_index, i = job
    name = CLASS_NAMES[class_index]
    rng = np.random.default_rng([seed, split_index, class_index, i])
    image = _draw_image(name, rng)
    image.save(Path(root) / SPLITS[split_index] / name / f"{name}_{i:04d}.JPEG", "JPEG", quality=JPEG_QUALITY)


def _draw_image(name: str, rng: np.random.Generator) -> Image.Image:
    """One image of class `name`: the class's shape on a noisy background, all randomness from `rng`."""
    width, height = _image_size(rng)
    background_colour = rng.uniform(0, 255, 3)
    background = _background(width, height, background_colour, rng)
    shape, max_rotation = GENERATORS[name]
    mask = _shape_mask(shape(), max_rotation, width, height, rng)
    foreground = Image.new("RGB", (width, height), _contrasting_colour(background_colour, rng))
    image = np.asarray(Image.composite(foreground, background, mask), dtype=np.int16)
    noise = rng.integers(-10, 11, image.shape, dtype=np.int16)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    # Mostly between 3:4 and 4:3, like most photos; one in five wider, up to 2:1.
    ratio = math.exp(rng.uniform(math.log(4 / 3), math.log(2))) if rng.random() < 0.2 else \
        math.exp(rng.uniform(0, math.log(4 / 3)))
    short = int(rng.integers(MIN_SIDE, int(MAX_SIDE / ratio) + 1))
    long = min(MAX_SIDE, round(short * ratio))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _background(width: int, height: int, colour: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Smooth blotches of colour around `colour`; the per-pixel noise is added to the whole image later."""
    grid = rng.integers(3, 10, 2)
    blotches = np.clip(colour + rng.normal(0, 25, (grid[0], grid[1], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(blotches).resize((width, height), Image.BILINEAR)


def _contrasting_colour(background: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """Any hue, but clearly lighter or darker than the background, so the shape's edges show in every channel."""
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if abs(_luminance(colour) - _luminance(background)) >= MIN_LUMINANCE_CONTRAST:
            break
    else:
        colour = np.zeros(3) if _luminance(background) > 127.5 else np.full(3, 255.0)
    return tuple(int(c) for c in colour)


def _luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114]))


def _shape_mask(shape: Shape, max_rotation: float, width: int, height: int,
                rng: np.random.Generator) -> Image.Image:
    """The shape stretched a little, rotated, scaled so its bounding box spans 40-80% of the short side, placed
    anywhere it fits."""
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    rotation = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    stretch = np.array([rng.uniform(0.85, 1.15), 1.0])
    polygons = [(points * stretch @ rotation, value) for points, value in shape]
    corners = np.concatenate([points for points, _ in polygons])
    low, high = corners.min(axis=0), corners.max(axis=0)
    scale = rng.uniform(0.4, 0.8) * min(width, height) / (high - low).max()
    box = (high - low) * scale
    offset = np.array([rng.uniform(0, width - box[0]), rng.uniform(0, height - box[1])])
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for points, value in polygons:
        draw.polygon([tuple(p) for p in (points - low) * scale + offset], fill=value)
    return mask
