"""Image folders, augmentation and loaders: the seed's data pipeline, made fast on today's torchvision.

Images are decoded with torchvision.io and cropped before resizing, batches stay uint8 until they reach
the device (trainer.engine normalises them there). Augmentation draws from a generator seeded by
(seed, epoch, index), so a resumed run sees exactly the images the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from trainer.layout import DataError, ImageFolder
from trainer.schedule import DataPhase, Schedule

log = logging.getLogger(__name__)

VAL_RESIZE_RATIO = 1.14  # the seed's Resize(int(sz * 1.14)) before the centre crop
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def decode(path: str) -> torch.Tensor:
    """Decode to a uint8 CHW RGB tensor (JPEG, also grayscale/CMYK, and PNGs named .JPEG)."""
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def random_resized_crop_box(rng: random.Random, height: int, width: int,
                            min_scale: float) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), drawn from `rng` instead of the global RNG."""
    area = height * width
    log_ratio = (math.log(ASPECT_RATIO_RANGE[0]), math.log(ASPECT_RATIO_RANGE[1]))
    for _ in range(10):
        target_area = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ASPECT_RATIO_RANGE[0]:
        w, h = width, round(width / ASPECT_RATIO_RANGE[0])
    elif in_ratio > ASPECT_RATIO_RANGE[1]:
        h, w = height, round(height * ASPECT_RATIO_RANGE[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainImages(Dataset):
    """RandomResizedCrop(sz, scale=(min_scale, 1)) + horizontal flip, as uint8; indexed by (index, epoch)."""

    def __init__(self, folder: ImageFolder, size: int, min_scale: float, seed: int):
        self.folder, self.size, self.min_scale, self.seed = folder, size, min_scale, seed

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        image, label = decode_or_substitute(self.folder, index)
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        top, left, h, w = random_resized_crop_box(rng, image.shape[1], image.shape[2], self.min_scale)
        image = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        if rng.random() < 0.5:
            image = image.flip(-1)
        return image, label


def decode_or_substitute(folder: ImageFolder, index: int) -> tuple[torch.Tensor, int]:
    """Corrupt images are skipped with a warning naming the file; the next readable image stands in."""
    for offset in range(len(folder.samples)):
        path, label = folder.samples[(index + offset) % len(folder.samples)]
        try:
            return decode(path), label
        except RuntimeError as exc:
            log.warning("skipping corrupt image %s (%s)", path, str(exc).splitlines()[0])
    raise DataError(f"no image in {folder.root} can be decoded")


class ValImages(Dataset):
    """Resize the short side to int(sz * 1.14), then centre-crop to each image's (h, w) crop size."""

    def __init__(self, folder: ImageFolder, size: int, crop_sizes: list[tuple[int, int]]):
        self.folder, self.resize_to, self.crop_sizes = folder, int(size * VAL_RESIZE_RATIO), crop_sizes

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = decode_or_substitute(self.folder, index)
        crop_h, crop_w = self.crop_sizes[index]
        height, width = image.shape[1:]
        scale = self.resize_to / min(height, width)
        # Crop the source region first, then resize only that region: same pixels, less work.
        src_h, src_w = min(height, round(crop_h / scale)), min(width, round(crop_w / scale))
        top, left = (height - src_h) // 2, (width - src_w) // 2
        return F.resized_crop(image, top, left, src_h, src_w, [crop_h, crop_w], antialias=True), label


def aspect_ratios(folder: ImageFolder, cache_dir: Path) -> list[float]:
    """Width/height of every image, read from headers only, cached per folder (the seed's sorted_idxar.p)."""
    key = hashlib.sha256(f"{folder.root.resolve()}:{len(folder.samples)}".encode()).hexdigest()[:16]
    cache = cache_dir / f"aspect-{key}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["files"] == len(folder.samples):
            return cached["ratios"]
    ratios = []
    for path, _ in folder.samples:
        try:
            with Image.open(path) as image:
                ratios.append(round(image.size[0] / image.size[1], 5))
        except OSError:
            ratios.append(1.0)  # corrupt: decode_or_substitute warns when it is read
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"root": str(folder.root), "files": len(ratios), "ratios": ratios}))
    os.replace(tmp, cache)
    return ratios


def rect_val_batches(ratios: list[float], batch_size: int, size: int
                     ) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Sort by aspect ratio, batch, and give each batch the crop (sz, sz*mean_ar//8*8) or its transpose."""
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    crop_sizes: list[tuple[int, int]] = [(size, size)] * len(ratios)
    for batch in batches:
        mean = round(sum(ratios[i] for i in batch) / len(batch), 5)
        if mean < 1:
            crop = (int(size / mean) // 8 * 8, size)
        else:
            crop = (size, int(size * mean) // 8 * 8)
        for i in batch:
            crop_sizes[i] = crop
    return batches, crop_sizes


class EpochSampler(Sampler):
    """DistributedSampler's shuffled shard of indices, each paired with the epoch for the augmentation seed."""

    def __init__(self, length: int, rank: int, world: int, seed: int):
        self.inner = DistributedSampler(range(length), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self):
        return ((index, self.epoch) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


@dataclass
class PhaseLoaders:
    phase: DataPhase
    train: DataLoader
    val: DataLoader
    val_steps: int  # batches every rank steps through, so per-batch all-reduces stay in lockstep
    train_dir: Path
    val_dir: Path


@dataclass(frozen=True)
class LoaderSettings:
    rank: int
    world: int
    workers: int
    seed: int
    pin_memory: bool
    cache_dir: Path


def build_loaders(root: str | Path, schedule: Schedule, folders: dict[str, ImageFolder],
                  settings: LoaderSettings) -> list[PhaseLoaders]:
    """Every phase's loaders, built before the clock starts, as the seed did."""
    built: list[PhaseLoaders] = []
    for phase in schedule.data:
        if phase.keep_dl:
            built.append(_with_batch_size(built[-1], phase, settings))
            continue
        train_folder = folders[f"{phase.trndir}:train"]
        val_folder = folders[f"{phase.trndir}:validation"]
        train_set = TrainImages(train_folder, phase.sz, phase.min_scale, settings.seed)
        val, val_steps = _val_loader(val_folder, phase, settings)
        built.append(PhaseLoaders(phase, _train_loader(train_set, phase.bs, settings), val, val_steps,
                                  train_folder.root, val_folder.root))
    return built


def _with_batch_size(previous: PhaseLoaders, phase: DataPhase, settings: LoaderSettings) -> PhaseLoaders:
    return PhaseLoaders(phase, _train_loader(previous.train.dataset, phase.bs, settings), previous.val,
                        previous.val_steps, previous.train_dir, previous.val_dir)


def _train_loader(dataset: TrainImages, batch_size: int, settings: LoaderSettings) -> DataLoader:
    sampler = EpochSampler(len(dataset), settings.rank, settings.world, settings.seed)
    # Dropping the ragged last batch keeps BatchNorm away from tiny batches, unless it is the only batch.
    drop_last = len(sampler) > batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      **_worker_options(settings))


def _val_loader(folder: ImageFolder, phase: DataPhase, settings: LoaderSettings) -> tuple[DataLoader, int]:
    count = len(folder.samples)
    if phase.rect_val:
        batches, crop_sizes = rect_val_batches(aspect_ratios(folder, settings.cache_dir), phase.bs, phase.sz)
    else:
        batches = [list(range(i, min(i + phase.bs, count))) for i in range(0, count, phase.bs)]
        crop_sizes = [(phase.sz, phase.sz)] * count
    mine = batches[settings.rank::settings.world]
    steps = math.ceil(len(batches) / settings.world)
    loader = DataLoader(ValImages(folder, phase.sz, crop_sizes), batch_sampler=mine, **_worker_options(settings))
    return loader, steps


def _worker_options(settings: LoaderSettings) -> dict:
    if settings.workers == 0:
        return {"num_workers": 0, "pin_memory": settings.pin_memory}
    return {"num_workers": settings.workers, "pin_memory": settings.pin_memory, "persistent_workers": True,
            "prefetch_factor": 4}
