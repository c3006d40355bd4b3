"""The loaders of every data phase: which images each rank reads, in which order, decoded where.

Built before the clock starts, as the seed did. On a GPU with `gpu_decode` the workers hand over the files' bytes
and each image's crop (trainer.gpu_decode), and the training process decodes them on the device; otherwise the
workers decode and crop (trainer.data) and hand over uint8 images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler, Sampler

from trainer import gpu_decode
from trainer.data import TrainImages, ValImages, aspect_ratios, rect_val_batches
from trainer.layout import ImageFolder
from trainer.schedule import DataPhase, Schedule


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
    gpu_decode: bool = False  # workers read and plan, the training process decodes (trainer.gpu_decode)


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
        train_images = gpu_decode.EncodedTrainImages if settings.gpu_decode else TrainImages
        train_set = train_images(train_folder, phase.sz, phase.min_scale, settings.seed)
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
    val_images = gpu_decode.EncodedValImages if settings.gpu_decode else ValImages
    loader = DataLoader(val_images(folder, phase.sz, crop_sizes), batch_sampler=mine, **_worker_options(settings))
    return loader, steps


def _worker_options(settings: LoaderSettings) -> dict:
    options = {"num_workers": settings.workers, "pin_memory": settings.pin_memory}
    if settings.gpu_decode:
        options["collate_fn"] = gpu_decode.collate
    if settings.workers:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options
