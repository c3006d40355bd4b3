"""Training images/second: the trainer's own epoch loop against a torchvision-reference-style loop, one run.

    python bench/compare_training.py --arch resnet50 --sizes 128 224 288 --batch 256 256 192 \\
        --data /tmp/jpegs --reference amp fp32                                          # a GPU machine
    python bench/compare_training.py --arch resnet18 --sizes 64 --batch 16 --steps 5 --data /tmp/jpegs  # a CPU

Trainer side: trainer.engine.train_one_epoch itself (LR schedule, device-side normalisation, channels_last,
autocast, metrics windows, TensorBoard writes) with the precision and loader workers `python -m trainer train`
would pick, its model and optimiser, and batches from trainer.loaders.build_loaders. Reference side:
bench/reference_loop.py (ImageFolder + PIL + default transforms and collate, fp32 or --amp), the same model.

Modes: `synthetic` feeds both sides one random batch already on the device (no loading: the trainer gets it
as uint8 to normalise, the reference as normalised floats, the same pixels); `jpeg` has both read the JPEGs
of DATA/train, the trainer decoding them in its loader workers (`--decode workers`); `jpeg-device` the same,
the trainer decoding each batch on the device (`--decode device`: nvJPEG on a GPU); `jpeg-sz` has both read the
resized copies the seed's schedules read at that size (DATA-sz/160 up to 128 px, DATA-sz/352 up to 224 px; make
them with `python -m trainer prepare DATA`).

Trainer variants (`--variants`): `eager`; `compiled` (`--compile`); `graphs` (`--compile --compile-mode
reduce-overhead`: the compiled step replayed as CUDA graphs); `autotune` (torch.compile's max-autotune: Triton
kernels chosen by timing each against cuDNN and cuBLAS, as CUDA graphs; not a trainer option until it measures
faster). MFU is the model's training FLOPs (3x the forward's, counted by torch's FlopCounterMode at each size) per
second against the GPU's dense bf16 peak.

Each (mode, size) runs `--rounds` rounds, trainer and reference(s) alternating, and reports medians. A timed
window starts after `--warmup` batches; with loader workers, warm-up and window are rounded up to whole
multiples of each side's worker count, because workers hand over batches in waves of that many. Before each
loader starts, the model takes two synthetic steps, so cuDNN's autotuning is not mistaken for a loader stall.
Loader workers are started afresh for every timed run and stopped after it. "wait" is the share of the
window the training process spent waiting for batches (high: the loader limits; near 0: the model does).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import reference_loop
import torch
import torch.utils.flop_counter

from trainer import distributed, engine, layout, loaders, train
from trainer import schedule as schedules
from trainer.model import build_model, build_optimizer, replays_cuda_graphs, training_module
from trainer.recorder import NodeHeartbeat, Recorder

MODES = ("synthetic", "jpeg", "jpeg-device", "jpeg-sz")
VARIANTS = {"eager": (False, "default"), "compiled": (True, "default"), "graphs": (True, "reduce-overhead"),
            "autotune": (True, "max-autotune")}
# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, by the name torch reports.
PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H200": 989.4, "H100 PCIe": 756.0, "A100": 312.0}
SYNTHETIC_CLASSES = 1000
LR = 0.1
PREWARM_STEPS = 2


def seed_trndir(size: int) -> str:
    """The folder the seed's schedules read at `size`: -sz/160 up to 128 px, -sz/352 up to 224, else full."""
    if size <= 128:
        return "-sz/160"
    if size <= 224:
        return "-sz/352"
    return ""


def bench_schedule(arch: str, size: int, batch: int, trndir: str) -> schedules.Schedule:
    """One data phase at `size` and a constant LR, as a schedule file would give them."""
    return schedules.parse({"arch": arch, "data": [{"ep": 0, "sz": size, "bs": batch, "trndir": trndir}],
                            "lr": [{"ep": [0, 1_000_000], "lr": [LR, LR]}]}, f"bench-{size}px")


class TimedBatches:
    """Stands in for the trainer's DataLoader inside train_one_epoch: yields `warmup + steps` batches of
    `source` (its epochs advanced if it runs out). `around` times the last `steps` of the device batches the loop
    takes, CUDA synchronised, and how long the loop waited for them: there, not here, because with `--decode
    device` a thread makes each device batch up to DeviceBatches.AHEAD + 1 batches before the loop takes it."""

    def __init__(self, source, sampler, warmup: int, steps: int, device: torch.device):
        self.source, self.sampler, self.warmup, self.steps, self.device = source, sampler, warmup, steps, device
        self.seconds = self.waited = 0.0
        self.images = 0

    def __len__(self) -> int:
        return self.warmup + self.steps

    def __iter__(self):
        batches = iter(self.source)
        try:
            for _ in range(len(self)):
                batch = next(batches, None)
                if batch is None:  # a new epoch of the real loader
                    self.sampler.set_epoch(self.sampler.epoch + 1)
                    batches = iter(self.source)
                    batch = next(batches)
                yield batch
        finally:
            reference_loop.shutdown_workers(batches)

    def around(self, device_batches):
        with contextlib.closing(iter(device_batches)) as batches:
            start = 0.0
            for index in range(len(self)):
                if index == self.warmup:
                    _sync(self.device)
                    start = time.perf_counter()
                fetch = time.perf_counter()
                images, labels = next(batches)
                if index >= self.warmup:
                    self.waited += time.perf_counter() - fetch
                    self.images += len(labels)
                yield images, labels
            _sync(self.device)
            self.seconds = time.perf_counter() - start

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class _NoEpochs:
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


@dataclasses.dataclass
class _TimedContext(engine.Context):
    """The engine's Context, its training loop's device batches timed by `timed` where the loop takes them."""
    timed: TimedBatches | None = None

    def device_batches(self, loader):
        batches = super().device_batches(loader)
        return self.timed.around(batches) if loader is self.timed else batches


class TrainerSide:
    """The trainer's model, optimiser and engine Context, built the way trainer.train builds them."""

    def __init__(self, arch: str, num_classes: int, world: distributed.World, bf16: bool, channels_last: bool,
                 plan: schedules.Schedule, logdir: Path, variant: str = "eager"):
        self.world, self.stream = world, engine.training_stream(world.device)  # as trainer.train.run's
        torch.manual_seed(0)
        with torch.cuda.stream(self.stream):
            model = build_model(arch, num_classes).to(world.device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = build_optimizer(model)
            recorder = Recorder(logdir, "bench", {}, enabled=True)
            heartbeat = NodeHeartbeat(logdir, 0, True, 30.0)
            compile, mode = VARIANTS[variant]
            self.ctx = _TimedContext(training_module(model, False, compile, len(plan.data), mode), model,
                                     optimizer, plan, world, recorder, heartbeat, bf16, channels_last, print_freq=10,
                                     cuda_graphs=compile and replays_cuda_graphs(mode))
        self.epoch = 0

    def run(self, phase: loaders.PhaseLoaders, source, sampler, warmup: int, steps: int) -> TimedBatches:
        timed = self.ctx.timed = TimedBatches(source, sampler, warmup, steps, self.world.device)
        with torch.cuda.stream(self.stream):
            engine.train_one_epoch(self.ctx, dataclasses.replace(phase, train=timed), self.epoch)
        self.epoch += 1
        return timed

    def close(self) -> None:
        self.ctx.recorder.close()


def synthetic_batch(batch: int, size: int, classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(size)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return pixels.to(device), labels.to(device)


def whole_waves(count: int, workers: int) -> int:
    return max(1, math.ceil(count / workers)) * workers if workers > 1 else count


def training_flops(arch: str, size: int, classes: int) -> float:
    """FLOPs of one training image: forward and backward, 3x the forward's count at `size`."""
    model = build_model(arch, classes)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


@dataclasses.dataclass
class Row:
    mode: str
    size: int
    batch: int
    variant: str
    reference: str
    trainer: float
    reference_rate: float
    trainer_wait: float
    reference_wait: float
    mfu: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.trainer / self.reference_rate


def measure(mode: str, size: int, batch: int, args, world: distributed.World, bf16: bool, channels_last: bool,
            workers: tuple[int, int], logdir: Path) -> list[Row]:
    device = world.device
    trainer_workers, reference_workers = workers
    if mode == "synthetic":
        classes, trndir, plan = SYNTHETIC_CLASSES, "", bench_schedule(args.arch, size, batch, "")
    else:
        trndir = seed_trndir(size) if mode == "jpeg-sz" else ""
        plan = bench_schedule(args.arch, size, batch, trndir)
        folders = layout.check_layout(args.data, plan)
        classes = len(folders[f"{trndir}:train"].classes)
    pixels, labels = synthetic_batch(batch, size, classes, device)
    reference_input = reference_loop.normalised(pixels)
    trainers = {variant: TrainerSide(args.arch, classes, world, bf16, channels_last, plan,
                                     logdir / f"{mode}-{size}-{variant}", variant) for variant in args.variants}
    references = [reference_loop.ReferenceLoop(args.arch, classes, device, amp=variant == "amp")
                  for variant in args.reference]
    # Synthetic loaders for the trainer: PhaseLoaders whose val loader is never used.
    synthetic_loaders = loaders.PhaseLoaders(plan.data[0], None, None, 0, Path("."), Path("."))
    rates: dict[str, list[tuple[float, float]]] = {**{v: [] for v in args.variants},
                                                   **{v: [] for v in args.reference}}
    note = ""
    windows = {"trainer": (args.warmup, args.steps), "reference": (args.warmup, args.steps)}
    if mode != "synthetic":
        windows = {"trainer": (whole_waves(args.warmup, trainer_workers), whole_waves(args.steps, trainer_workers)),
                   "reference": (whole_waves(args.warmup, reference_workers),
                                 whole_waves(args.steps, reference_workers))}
    for _ in range(args.rounds):
        for variant, trainer in trainers.items():
            if mode == "synthetic":
                timed = trainer.run(synthetic_loaders, itertools.repeat((pixels, labels)), _NoEpochs(),
                                    args.warmup, args.steps)
                rates[variant].append((timed.rate, timed.waited / timed.seconds))
            else:
                trainer.run(synthetic_loaders, itertools.repeat((pixels, labels)), _NoEpochs(), 0, PREWARM_STEPS)
                settings = loaders.LoaderSettings(0, 1, trainer_workers, 0, device.type == "cuda",
                                                  logdir / "cache", gpu_decode=mode == "jpeg-device")
                phase = loaders.build_loaders(args.data, plan, folders, settings)[0]
                warmup, steps = windows["trainer"]
                per_epoch = len(phase.train)
                if warmup + steps > per_epoch:
                    note = f"the trainer's window crosses epochs ({warmup}+{steps} of {per_epoch} batches)"
                timed = trainer.run(phase, phase.train, phase.train.sampler, warmup, steps)
                rates[variant].append((timed.rate, timed.waited / timed.seconds))
                del phase, timed  # TimedBatches stopped the workers
            _release(device)
        for variant, reference in zip(args.reference, references):
            if mode == "synthetic":
                result = reference.run(itertools.repeat((reference_input, labels)), args.warmup, args.steps)
            else:
                reference.run(itertools.repeat((reference_input, labels)), 0, PREWARM_STEPS)
                train_dir = layout.split_dir(args.data, trndir, "train")
                loader = reference_loop.build_loader(train_dir, size, batch, reference_workers,
                                                     pin_memory=device.type == "cuda")
                warmup, steps = windows["reference"]
                if warmup + steps > len(loader):
                    note = note or f"the reference's window crosses epochs ({warmup}+{steps} of {len(loader)})"
                result = reference.run(reference_loop.epochs(loader), warmup, steps)
                del loader
            rates[variant].append(result)
            _release(device)
    labels = {variant: reference.label for variant, reference in zip(args.reference, references)}
    for trainer in trainers.values():
        trainer.close()
    del trainers, references
    _release(device)
    peak = peak_flops(device)
    flops = training_flops(args.arch, size, classes) if peak else None
    rows = []
    for variant in args.variants:
        trainer_rate = statistics.median(r for r, _ in rates[variant])
        trainer_wait = statistics.median(w for _, w in rates[variant])
        mfu = trainer_rate * flops / peak if peak else None
        rows += [Row(mode, size, batch, variant, labels[reference], trainer_rate,
                     statistics.median(r for r, _ in rates[reference]), trainer_wait,
                     statistics.median(w for _, w in rates[reference]), mfu, note) for reference in args.reference]
    print(f"#   {mode} {size} px: trainer timed {windows['trainer'][1]} steps after {windows['trainer'][0]}, "
          f"reference {windows['reference'][1]} after {windows['reference'][0]}", flush=True)
    return rows


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


HEADER = ("| mode | px | batch | trainer | reference | trainer img/s | reference img/s | ratio | trainer MFU | "
          "trainer wait | reference wait |")


def format_row(row: Row) -> str:
    mfu = f"{100 * row.mfu:.1f}%" if row.mfu is not None else "-"
    text = (f"| {row.mode} | {row.size} | {row.batch} | {row.variant} | {row.reference} | {row.trainer:.1f} | "
            f"{row.reference_rate:.1f} | {row.ratio:.2f} | {mfu} | {100 * row.trainer_wait:.0f}% | "
            f"{100 * row.reference_wait:.0f}% |")
    return text + (f" ({row.note})" if row.note else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 288])
    parser.add_argument("--batch", type=int, nargs="+", default=[256],
                        help="one per size, or one for all (per process, as the schedules give it)")
    parser.add_argument("--steps", type=int, default=20, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches before them")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side; medians reported")
    parser.add_argument("--data", type=Path, help="ImageNet-layout root: DATA/{train,validation}/<class>/*.JPEG")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="default: synthetic, plus jpeg with --data")
    parser.add_argument("--reference", nargs="+", choices=("amp", "fp32"), default=["amp"],
                        help="reference precision(s): amp = the reference's --amp; fp32 = its default")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the trainer's --precision")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=["eager"],
                        help="the trainer's step: eager, compiled (--compile), graphs (--compile-mode "
                             "reduce-overhead); each compiles in its first round's warm-up")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, help="loader workers for both sides (default: each side's own "
                                                    "default, as `python -m trainer train` and the reference pick)")
    args = parser.parse_args(argv)
    if len(args.batch) == 1:
        args.batch = args.batch * len(args.sizes)
    if len(args.batch) != len(args.sizes):
        parser.error("--batch takes one value, or one per --sizes value")
    args.modes = args.modes or (["synthetic", "jpeg"] if args.data else ["synthetic"])
    if any(m != "synthetic" for m in args.modes) and not args.data:
        parser.error("the jpeg modes need --data")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key in [k for k in os.environ if k.startswith("WANDB")]:
        del os.environ[key]  # the trainer side's Recorder must not start a wandb run
    world = distributed.init(args.device)
    device = world.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer.train and the reference both set it
    config = train.TrainConfig(data=str(args.data or ""), device=args.device, precision=args.precision,
                               workers=args.workers)
    train._set_threads(config, world)
    bf16, channels_last = train._precision(config, world)
    workers = (train._workers(config, world),
               reference_loop.default_workers(device) if args.workers is None else args.workers)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"# {args.arch} training throughput on {device} ({where}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    print(f"# trainer: {'bf16' if bf16 else 'fp32'} autocast, channels_last {channels_last}, "
          f"{'/'.join(args.variants)}, "
          f"{workers[0]} loader workers; reference: {', '.join(args.reference)}, {workers[1]} workers; "
          f"{args.steps} timed steps after {args.warmup}, median of {args.rounds} rounds", flush=True)
    failures = 0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="compare-training-") as tmp:
        print(HEADER, flush=True)
        print("|" + "---|" * 11, flush=True)
        for size, batch in zip(args.sizes, args.batch):
            for mode in args.modes:
                if mode == "jpeg-sz" and not seed_trndir(size):
                    print(f"| {mode} | {size} | {batch} | as jpeg: the seed reads full-size images at {size} px |",
                          flush=True)
                    continue
                started = time.perf_counter()
                try:
                    new = measure(mode, size, batch, args, world, bf16, channels_last, workers, Path(tmp))
                except (layout.DataError, torch.OutOfMemoryError, RuntimeError) as exc:
                    failures += 1
                    print(f"| {mode} | {size} | {batch} | failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]} |", flush=True)
                    _release(device)
                    continue
                rows.extend(new)
                for row in new:
                    print(format_row(row), flush=True)
                print(f"#   {mode} {size} px took {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
