"""The schedule for a dataset no schedule was made for (`--schedule auto`, the local default for `--dataset DIR`).

The seed's schedules are tuned to ImageNet on 8-GPU machines, and `cpu-demo` to the demo's shapes. A user's
own folder differs in size, resolution and classes, so `auto` is derived from the dataset itself:

- image size: the training images' own short side (the median of an evenly spaced sample), rounded to a
  multiple of 8, no less than MIN_SIZE (a ResNet's stem divides by 4) and no more than MAX_SIZE; never far
  above the data's native resolution, where pixels cost time and carry nothing. From FINAL_SIZE_AT, the first
  half of the epochs trains at 3/4 of that size (progressive resizing, as the seed did);
- epochs: enough to see about SAMPLES images, within [MIN_EPOCHS, MAX_EPOCHS];
- batch per process: at least STEPS_PER_EPOCH steps an epoch, within [MIN_BATCH, MAX_BATCH], a multiple of 8;
- learning rate: PEAK_LR per 256 images of global batch, reached by a linear warm-up from a tenth of it over
  the first WARMUP_SHARE of the epochs, then decayed linearly to END_SHARE of it at the last epoch, which keeps
  small datasets stable to the end;
- it reads a resized copy (`-sz/<px>`, made by the pipeline's prepare-dataset stage) only where the images are
  larger than COPY_RATIO x the final size; else the full-size folder.

Plain Python and Pillow: the orchestrator plans with it (epochs, the folders read) without importing torch,
and each node derives the same schedule from its replica of the same files.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trainer.layout import SPLITS, DataError, check_source
from trainer.prepare import DECODE_ERRORS, pixel_limit_lifted
from trainer.schedule import AUTO, DataPhase, LRPhase, Schedule

ARCH = "resnet18"
MIN_SIZE, MAX_SIZE, FINAL_SIZE_AT = 32, 128, 64
SAMPLES = 25_000
MIN_EPOCHS, MAX_EPOCHS = 6, 30
STEPS_PER_EPOCH = 8
MIN_BATCH, MAX_BATCH = 8, 64
PEAK_LR = 0.4  # per 256 images of global batch
WARMUP_SHARE, END_SHARE = 0.15, 0.01
COPY_RATIO = 1.25  # a copy at least this much larger than the final size, so crops and the 1.14 resize stay sharp
MIN_SCALE = 0.35
SIZE_SAMPLE = 256  # images whose headers are read for the native size
TARGET_TOP1 = 90.0


@dataclass(frozen=True)
class DatasetFacts:
    train_images: int
    classes: int
    short_side: int  # median short side of the training images, in pixels


def facts(root: str | Path) -> DatasetFacts:
    """What the recipe needs of a dataset: names and image headers only, nothing decoded."""
    train = check_source(root)[SPLITS[0]]
    step = max(1, len(train.samples) // SIZE_SAMPLE)
    sides = [side for path, _ in train.samples[::step] if (side := _short_side(path))]
    if not sides:
        raise DataError(f"no image in {train.root} can be read for its size")
    return DatasetFacts(len(train.samples), len(train.classes), int(statistics.median(sides)))


def _short_side(path: str) -> int | None:
    try:
        with pixel_limit_lifted(), Image.open(path) as image:  # a header read: a 200-megapixel photo's size too
            return min(image.size)
    except DECODE_ERRORS:
        return None  # unreadable: the loaders skip what they cannot read, warning


def schedule_for(data: DatasetFacts, world_size: int) -> Schedule:
    """The auto schedule for `data` trained by `world_size` processes (the global batch scales the LR)."""
    if data.train_images < MIN_BATCH * world_size:
        raise DataError(f"{data.train_images} training images are too few for the auto schedule on {world_size} "
                        f"process(es): it needs at least {MIN_BATCH} each ({MIN_BATCH * world_size})")
    final = min(MAX_SIZE, max(MIN_SIZE, _multiple_of_8(data.short_side)))
    start = max(MIN_SIZE, _multiple_of_8(final * 3 / 4)) if final >= FINAL_SIZE_AT else final
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(SAMPLES / data.train_images)))
    batch = min(MAX_BATCH, max(MIN_BATCH, data.train_images // (world_size * STEPS_PER_EPOCH) // 8 * 8))
    peak = PEAK_LR * batch * world_size / 256
    warmup = max(1, round(epochs * WARMUP_SHARE))
    copy = 8 * math.ceil(final * COPY_RATIO / 8)
    trndir = f"-sz/{copy}" if data.short_side > copy else ""
    data_phases = [DataPhase(0, start, batch, trndir, MIN_SCALE)]
    if start != final:
        data_phases.append(DataPhase(epochs // 2, final, batch, trndir, MIN_SCALE))
    lr_phases = (LRPhase(0, warmup, peak / 10, peak), LRPhase(warmup, epochs, peak, peak * END_SHARE))
    sizes = " -> ".join(str(phase.sz) for phase in data_phases)
    return Schedule(AUTO, f"auto: {ARCH} at {sizes} px from {data.train_images:,} images of native short side "
                          f"{data.short_side} px in {data.classes} classes; {epochs} epochs, batch {batch} per process",
                    ARCH, None, None, tuple(data_phases), lr_phases, TARGET_TOP1, "top1")


def _multiple_of_8(pixels: float) -> int:
    return max(8, math.floor(pixels / 8 + 0.5) * 8)
