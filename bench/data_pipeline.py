"""Data pipeline images/second: the trainer's loader against torchvision ImageFolder + PIL, one run, no model.

    python bench/data_pipeline.py --data /tmp/jpegs --sizes 128 224 --batch 32 --workers 2
    python bench/data_pipeline.py --data /tmp/jpegs --decode-only          # the decoders alone, one thread

Both sides read DATA/train ("full-size") and the seed's resized copy for the size ("pre-resized": DATA-sz/160
up to 128 px, DATA-sz/352 up to 224 px; make them with `python -m trainer prepare DATA`), with the same batch
size and worker count, and each does what its training loop would get from it:
- trainer: trainer.loaders.build_loaders (torchvision.io decode, crop-then-resize on uint8, seeded flip, uint8
  collate); it normalises on the training device, so that is not part of its pipeline here;
- reference: bench/reference_loop.build_loader (ImageFolder, PIL decode, RandomResizedCrop + flip + PILToTensor
  + float + Normalize per image, default collate of float tensors).

Each (folder, size) runs `--rounds` rounds, the two sides alternating, over `--batches` batches after
`--warmup` (both rounded up to whole waves of the workers); medians are reported.

--decode-only times one image at a time in the calling process, one thread: the decoders alone
(torchvision.io, PIL, PIL's draft mode: libjpeg's DCT scaling to 1/2 and 1/4 of the size), then a whole
training item at each size from the trainer, from the trainer with reduced-size (draft mode) decoding, and
from the reference's transforms.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy
import reference_loop
import torch
from compare_training import bench_schedule, seed_trndir, whole_waves
from PIL import Image
from torchvision.transforms.v2 import functional as F

from trainer import data, layout, loaders
from trainer.schedule import DEFAULT_MIN_SCALE

FOLDERS = ("full-size", "pre-resized")


def trainer_batches(root: Path, trndir: str, size: int, batch: int, workers: int, cache: Path) -> Iterable:
    schedule = bench_schedule("resnet50", size, batch, trndir)  # RandomResizedCrop's default scale, as the reference
    folders = layout.check_layout(root, schedule)
    settings = loaders.LoaderSettings(0, 1, workers, 0, pin_memory=False, cache_dir=cache)
    yield from reference_loop.epochs(loaders.build_loaders(root, schedule, folders, settings)[0].train)


def reference_batches(root: Path, trndir: str, size: int, batch: int, workers: int) -> Iterable:
    loader = reference_loop.build_loader(layout.split_dir(root, trndir, "train"), size, batch, workers,
                                         pin_memory=False)
    return reference_loop.epochs(loader)


def timed_rate(batches: Iterable, warmup: int, count: int) -> float:
    iterator = iter(batches)
    try:
        for _ in range(warmup):
            next(iterator)
        images = 0
        started = time.perf_counter()
        for _ in range(count):
            images += len(next(iterator)[0])
        return images / (time.perf_counter() - started)
    finally:
        reference_loop.shutdown_workers(iterator)


def compare(args: argparse.Namespace, folder: str, size: int, cache: Path) -> tuple[float, float]:
    trndir = seed_trndir(size) if folder == "pre-resized" else ""
    warmup, count = whole_waves(args.warmup, args.workers), whole_waves(args.batches, args.workers)
    rates: dict[str, list[float]] = {"trainer": [], "reference": []}
    for _ in range(args.rounds):
        rates["trainer"].append(timed_rate(
            trainer_batches(args.data, trndir, size, args.batch, args.workers, cache), warmup, count))
        rates["reference"].append(timed_rate(
            reference_batches(args.data, trndir, size, args.batch, args.workers), warmup, count))
    return statistics.median(rates["trainer"]), statistics.median(rates["reference"])


def decoders() -> dict[str, Callable[[int], object]]:
    """Decoding alone: the trainer's decoder, the reference's, and PIL's draft mode (libjpeg's DCT scaling)."""
    def pil(scale: int) -> Callable[[str], object]:
        def decode(path: str) -> object:
            with Image.open(path) as image:
                if scale > 1:
                    image.draft("RGB", (image.size[0] // scale, image.size[1] // scale))
                return image.convert("RGB")
        return decode

    return {"decode: torchvision.io (the trainer's)": data.decode, "decode: PIL (the reference's)": pil(1),
            "decode: PIL draft, 1/2 scale": pil(2), "decode: PIL draft, 1/4 scale": pil(4)}


def draft_item(folder: layout.ImageFolder, size: int, index: int) -> torch.Tensor:
    """The trainer's item with reduced-size decoding: the crop box from the header, PIL's draft mode to the
    largest DCT scale that leaves the box at least `size` pixels, then the trainer's crop-and-resize."""
    path, _ = folder.samples[index]
    rng = random.Random(f"0:0:{index}")
    with Image.open(path) as image:
        width, height = image.size
        top, left, h, w = data.random_resized_crop_box(rng, height, width, DEFAULT_MIN_SCALE)
        scale = 1
        while scale < 8 and min(h, w) // (scale * 2) >= size:
            scale *= 2
        if scale > 1:
            image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
        image = image.convert("RGB")
        fx, fy = image.size[0] / width, image.size[1] / height
        pixels = torch.from_numpy(numpy.array(image)).permute(2, 0, 1)
    crop = F.resized_crop(pixels, round(top * fy), round(left * fx), max(1, round(h * fy)),
                          max(1, round(w * fx)), [size, size], antialias=True)
    return crop.flip(-1) if rng.random() < 0.5 else crop


def items(folder: layout.ImageFolder, size: int) -> dict[str, Callable[[int], object]]:
    """One training image, decode to augmented pixels, as each pipeline makes it (no collate)."""
    trainer = data.TrainImages(folder, size, DEFAULT_MIN_SCALE, seed=0)
    reference = reference_loop.train_transform(size)

    def reference_item(index: int) -> object:
        with Image.open(folder.samples[index][0]) as image:
            return reference(image.convert("RGB"))

    return {f"{size} px item: trainer": lambda index: trainer[(index, 0)],
            f"{size} px item: trainer with PIL draft decoding": lambda index: draft_item(folder, size, index),
            f"{size} px item: reference": reference_item}


def decode_only(args: argparse.Namespace) -> None:
    folder = layout.scan(layout.split_dir(args.data, "", "train"))
    count = min(args.images, len(folder.samples))
    candidates = {name: (lambda index, decode=decode: decode(folder.samples[index][0]))
                  for name, decode in decoders().items()}
    for size in args.sizes:
        candidates.update(items(folder, size))
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, work in candidates.items():
            started = time.perf_counter()
            for index in range(count):
                work(index)
            rates[name].append(count / (time.perf_counter() - started))
    print(f"# one image at a time, {count} images of {args.data}/train, one thread, median of {args.rounds} rounds")
    print("| work | img/s |\n|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="DATA/train/<class>/*.JPEG, and DATA-sz/...")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches before them")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="loader workers, both sides (default: this machine's cores)")
    parser.add_argument("--folders", nargs="+", choices=FOLDERS, default=list(FOLDERS))
    parser.add_argument("--decode-only", action="store_true", help="time decoders and single items instead")
    parser.add_argument("--images", type=int, default=300, help="images per --decode-only round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.decode_only:
        decode_only(args)
        return 0
    print(f"# data pipeline, {args.data}: batch {args.batch}, {args.workers} workers each, {args.batches} timed "
          f"batches after {args.warmup}, median of {args.rounds} rounds; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    print("| folder | px | trainer img/s | reference img/s | ratio |\n|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="data-pipeline-") as cache:
        for size in args.sizes:
            for folder in args.folders:
                if folder == "pre-resized" and not seed_trndir(size):
                    continue
                trainer, reference = compare(args, folder, size, Path(cache))
                print(f"| {folder} | {size} | {trainer:.0f} | {reference:.0f} | {trainer / reference:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
