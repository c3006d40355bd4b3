"""A throughput-benchmark image folder: ImageNet-sized JPEGs (mostly 500 x 375 and its kin), made locally.

    python bench/make_jpegs.py /tmp/jpegs --classes 100 --train-per-class 128 --val-per-class 5

Writes ROOT/{train,validation}/<class>/<class>_<i>.JPEG. The pictures are smooth colour fields with texture
and sensor-like noise, so their files (about 100 KB at quality 90) and decoding cost are like photographs',
which the demo dataset's flat shapes are not. Each class has its own tint, so a model can learn a little.
Skipped when ROOT already holds a set made with the same arguments (the marker file records them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

MARKER = "BENCH_JPEGS.json"
VERSION = 1
# ImageNet's common shapes: (width, height) as fractions of a 500 px long side, and how often each is drawn.
SHAPES = ((1.0, 0.75, 0.45), (0.75, 1.0, 0.15), (1.0, 0.666, 0.15), (0.666, 1.0, 0.05), (1.0, 1.0, 0.1),
          (1.0, 0.8, 0.1))
LONG_SIDE = 500


def make_jpegs(root: Path, classes: int = 100, train_per_class: int = 128, val_per_class: int = 5,
               workers: int | None = None, seed: int = 0, quality: int = 90) -> dict:
    """Write the folder (or find it complete); returns the marker's spec plus timing and size figures."""
    root = Path(root)
    spec = {"version": VERSION, "classes": classes, "train_per_class": train_per_class,
            "val_per_class": val_per_class, "seed": seed, "quality": quality}
    marker = root / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in spec} == spec:
            return {**done, "seconds": 0.0, "reused": True}
        raise SystemExit(f"{root} holds another benchmark set ({done}); remove it or pick another folder")
    started = time.perf_counter()
    jobs = [(str(root), split, c, i, seed, quality)
            for split, count in (("train", train_per_class), ("validation", val_per_class))
            for c in range(classes) for i in range(count)]
    for split in ("train", "validation"):
        for c in range(classes):
            (root / split / _class_name(c)).mkdir(parents=True, exist_ok=True)
    workers = workers or len(os.sched_getaffinity(0))
    with Pool(workers) as pool:
        sizes = list(pool.imap_unordered(_write, jobs, chunksize=max(1, len(jobs) // (workers * 16))))
    pixels = np.array([w * h for w, h, _ in sizes], dtype=np.float64)
    result = {**spec, "images": len(jobs), "mean_kb": round(float(np.mean([b for _, _, b in sizes])) / 1024, 1),
              "mean_pixels": int(pixels.mean())}
    marker.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "seconds": round(time.perf_counter() - started, 1), "reused": False}


def _class_name(index: int) -> str:
    return f"n{index:08d}"  # ImageNet's wnid style


def _write(job: tuple[str, str, int, int, int, int]) -> tuple[int, int, int]:
    root, split, class_index, i, seed, quality = job
    rng = np.random.default_rng([seed, split == "train", class_index, i])
    image = _picture(rng, class_index)
    name = _class_name(class_index)
    path = Path(root) / split / name / f"{name}_{i}.JPEG"
    tmp = path.with_suffix(".tmp")
    image.save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)
    return image.size[0], image.size[1], path.stat().st_size


def _picture(rng: np.random.Generator, class_index: int) -> Image.Image:
    shapes = np.array([s[2] for s in SHAPES])
    fw, fh, _ = SHAPES[rng.choice(len(SHAPES), p=shapes / shapes.sum())]
    scale = LONG_SIDE if rng.random() < 0.8 else int(rng.integers(300, LONG_SIDE))
    width, height = max(32, round(fw * scale)), max(32, round(fh * scale))
    tint = np.random.default_rng(class_index).uniform(40, 215, 3)
    # Large smooth regions (sky, walls), then mid-scale structure (objects, texture), then pixel noise.
    coarse = tint + rng.normal(0, 45, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    image = _upsample(coarse, width, height, Image.BICUBIC)
    detail = 28 * rng.standard_normal((height // 12 + 1, width // 12 + 1, 3), dtype=np.float32)
    image += _upsample(detail, width, height, Image.BILINEAR)
    fine = 16 * rng.standard_normal((height // 2 + 1, width // 2 + 1, 3), dtype=np.float32)  # edges and fine texture
    image += _upsample(fine, width, height, Image.BILINEAR)
    image += 9 * rng.standard_normal((height, width, 1), dtype=np.float32)  # luminance noise, as sensors give
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _upsample(values: np.ndarray, width: int, height: int, method: int) -> np.ndarray:
    """Resize a float (h, w, 3) field by resizing each channel as a float32 image."""
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(values[..., c], dtype=np.float32))
                           .resize((width, height), method)) for c in range(3)]
    return np.stack(channels, axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--train-per-class", type=int, default=128)
    parser.add_argument("--val-per-class", type=int, default=5)
    parser.add_argument("--workers", type=int, help="default: all cores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = make_jpegs(args.root, args.classes, args.train_per_class, args.val_per_class, args.workers, args.seed)
    verb = "found complete" if result["reused"] else f"written in {result['seconds']} s"
    print(f"{result['images']} JPEGs in {args.root} {verb}: mean {result['mean_kb']} KB, "
          f"mean {result['mean_pixels']} pixels", flush=True)


if __name__ == "__main__":
    main()
