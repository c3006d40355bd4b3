"""A training loop in the style of torchvision's references/classification/train.py, the yardstick for the trainer.

    python bench/reference_loop.py /data/imagenet --size 224 --batch 256 --amp            # real JPEGs
    python bench/reference_loop.py --synthetic --size 224 --batch 256 --amp               # no data loading
    torchrun --nproc_per_node=8 bench/reference_loop.py /data/imagenet --amp              # DDP, as the reference

What the reference does with its default flags, and nothing more: torchvision.datasets.ImageFolder with the
PIL loader; RandomResizedCrop(size) + RandomHorizontalFlip + PILToTensor + ConvertImageDtype(float) +
Normalize in the workers; the default collate; a DataLoader with pinned memory, 16 workers and a random
sampler (DistributedSampler under torchrun); a blocking `.to(device)` per batch; SGD with momentum 0.9 and
weight decay 1e-4 on every parameter; --amp: fp16 autocast with a GradScaler on CUDA (bf16 autocast, no
scaler, on CPUs); no channels_last; per-step accuracy and `loss.item()` for its metric logger. The model
comes from the trainer's own builder (trainer.model.build_model), so a comparison differs only in the loop.

Throughput is images/second over `steps` batches after `warmup` batches, CUDA synchronised at both clocks.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Iterable, Iterator

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from torchvision import transforms as T

from trainer.engine import IMAGENET_MEAN, IMAGENET_STD
from trainer.model import build_model

REFERENCE_WORKERS = 16  # the reference's -j default
REFERENCE_LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


def default_workers(device: torch.device) -> int:
    """The reference's 16 loader workers; on a CPU-only machine no more than its cores."""
    if device.type == "cuda":
        return REFERENCE_WORKERS
    return min(len(os.sched_getaffinity(0)), REFERENCE_WORKERS)


def train_transform(size: int) -> T.Compose:
    """The reference's ClassificationPresetTrain with its defaults (no auto-augment, no random erasing)."""
    return T.Compose([
        T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.RandomHorizontalFlip(0.5),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def val_transform(size: int) -> T.Compose:
    """The reference's ClassificationPresetEval: resize to size * 256/224 (its 256 for 224), centre crop."""
    return T.Compose([
        T.Resize(int(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(size),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def build_loader(train_dir: str | os.PathLike, size: int, batch: int, workers: int, pin_memory: bool,
                 distributed: bool = False) -> DataLoader:
    dataset = torchvision.datasets.ImageFolder(str(train_dir), train_transform(size))
    sampler = DistributedSampler(dataset) if distributed else RandomSampler(dataset)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin_memory)


def normalised(images: torch.Tensor) -> torch.Tensor:
    """A uint8 NCHW batch as the reference's transforms deliver it: float, scaled to [0, 1], normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return ((images.float() / 255 - mean) / std).contiguous()


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """The reference's utils.accuracy: top-k hit rates in percent."""
    with torch.inference_mode():
        maxk = min(max(topk), output.shape[1])
        pred = output.topk(maxk, 1, True, True).indices.t()
        correct = pred.eq(target[None])
        return [correct[:min(k, maxk)].flatten().sum(dtype=torch.float32) * (100.0 / target.shape[0])
                for k in topk]


class ReferenceLoop:
    """The model, criterion, optimiser and scaler of one reference run, and its per-batch step."""

    def __init__(self, arch: str, num_classes: int, device: torch.device, amp: bool = False,
                 channels_last: bool = False, ddp: bool = False):
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.model = build_model(arch, num_classes).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.module = self.model
        if ddp:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=REFERENCE_LR, momentum=MOMENTUM,
                                         weight_decay=WEIGHT_DECAY)
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None

    @property
    def label(self) -> str:
        return ("amp-fp16" if self.device.type == "cuda" else "amp-bf16") if self.amp else "fp32"

    def step(self, image: torch.Tensor, target: torch.Tensor) -> None:
        image, target = image.to(self.device), target.to(self.device)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            output = self.model(image)
            loss = self.criterion(output, target)
        self.optimizer.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        acc1, acc5 = _accuracy(output, target)
        # The reference's metric logger: three host syncs a step.
        loss.item(), acc1.item(), acc5.item()

    def run(self, batches: Iterable, warmup: int, steps: int) -> tuple[float, float]:
        """Images/second over `steps` batches after `warmup`, and the fraction of that time spent waiting for
        batches. `batches` is iterated once; the caller gives enough of them (see `epochs`)."""
        self.model.train()
        iterator = iter(batches)
        images, waited, start = 0, 0.0, 0.0
        try:
            for index in range(warmup + steps):
                if index == warmup:
                    _sync(self.device)
                    start = time.perf_counter()
                fetch = time.perf_counter()
                image, target = next(iterator)
                if index >= warmup:
                    waited += time.perf_counter() - fetch
                    images += len(target)
                self.step(image, target)
            _sync(self.device)
            seconds = time.perf_counter() - start
        finally:
            shutdown_workers(iterator)
        return images / seconds, waited / seconds


def evaluate(loop: ReferenceLoop, val_dir: str | os.PathLike, size: int, batch: int,
             workers: int) -> tuple[float, float]:
    """The reference's evaluate(): top-1 and top-5 in percent over the whole validation folder."""
    dataset = torchvision.datasets.ImageFolder(str(val_dir), val_transform(size))
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers)
    loop.model.eval()
    hits, seen = torch.zeros(2), 0
    with torch.inference_mode():
        for image, target in loader:
            output = loop.model(image.to(loop.device))
            hits += torch.stack(_accuracy(output, target.to(loop.device))).cpu() * len(target) / 100
            seen += len(target)
    loop.model.train()
    top1, top5 = (100 * hits / seen).tolist()
    return top1, top5


def epochs(loader: DataLoader) -> Iterator:
    """The loader's batches, epoch after epoch (a sampler with epochs advanced, as the reference does)."""
    for epoch in itertools.count():
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader


def shutdown_workers(iterator) -> None:
    """Stop a DataLoader iterator's worker processes now, not whenever it is garbage collected, so they do
    not compete with whatever is timed next. Generators are closed, which releases the loader they wrap."""
    if hasattr(iterator, "close"):
        iterator.close()
    stop = getattr(iterator, "_shutdown_workers", None)
    if stop is not None:
        stop()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="dataset root: ROOT/train/<class>/*.JPEG")
    parser.add_argument("--synthetic", action="store_true", help="one random batch on the device, no loading")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--classes", type=int, default=1000, help="with --synthetic")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="per process (the reference's -b default)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", "-j", type=int, help="default: 16 (on CPUs: no more than the cores)")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler on CUDA, bf16 on CPUs")
    parser.add_argument("--channels-last", action="store_true", help="not the reference's default")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    if not args.synthetic and not args.data:
        parser.error("give a dataset root or --synthetic")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True  # the reference's default (without --use-deterministic-algorithms)
    else:
        device = torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0

    if args.synthetic:
        loop = ReferenceLoop(args.arch, args.classes, device, args.amp, args.channels_last, ddp=world > 1)
        pixels = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
        labels = torch.randint(0, args.classes, (args.batch,), device=device)
        batches, workers = itertools.repeat((normalised(pixels), labels)), 0
    else:
        workers = default_workers(device) if args.workers is None else args.workers
        loader = build_loader(os.path.join(args.data, "train"), args.size, args.batch, workers,
                              pin_memory=use_cuda, distributed=world > 1)
        loop = ReferenceLoop(args.arch, len(loader.dataset.classes), device, args.amp, args.channels_last,
                             ddp=world > 1)
        batches = epochs(loader)
    rate, waited = loop.run(batches, args.warmup, args.steps)
    if world > 1:
        total = torch.tensor([rate], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)
        rate = float(total.item())
        torch.distributed.destroy_process_group()
    if rank == 0:
        source = "synthetic" if args.synthetic else f"{args.data} ({workers} workers per process)"
        print(f"reference loop, {args.arch} {args.size} px, batch {args.batch} x {world} process(es), {loop.label}, "
              f"{device}, {source}: {rate:.1f} img/s (all processes), waiting for data {100 * waited:.0f}% "
              f"of the time")


if __name__ == "__main__":
    main()
