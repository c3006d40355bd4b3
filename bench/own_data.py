"""A user's own dataset, first time: `imagenet18 run --dataset DIR` with its defaults against a plain loop given the
same wall time, one run each.

    python bench/real_datasets.py /tmp/real                    # real datasets that ship inside PyPI wheels
    python bench/own_data.py /tmp/real/digits /tmp/real/lfw-faces --machines 2

Ours: the real command, `imagenet18 run --backend local --machines M --dataset DIR` (its own temporary Prefect
API, a fresh IMAGENET18_HOME, no wandb), timed from start to exit: the pipeline's stages, the resized copies it
makes, every epoch's evaluation. Its accuracy is read from the run's summary.json: the last epoch's and the best.

The plain loop: what a user would write first in torchvision's references/classification style (ImageFolder +
PIL from the full-size folder, RandomResizedCrop + flip, SGD momentum 0.9, weight decay 1e-4, batch 64, a
one-cycle learning rate up to 0.1, one process on every core, fp32), resnet18 at 64 px (bench/reference_loop.py),
evaluated after every epoch (resize, centre crop). It gets the same wall time: one throwaway epoch measures an
epoch's cost, then a fresh run trains for as many epochs as fit in ours.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import reference_loop
import torch

ROOT = Path(__file__).resolve().parents[1]
PLAIN_ARCH, PLAIN_SIZE, PLAIN_BATCH, PLAIN_MAX_LR = "resnet18", 64, 64, 0.1


@dataclass
class Side:
    name: str
    seconds: float
    epochs: int
    last_top1: float
    best_top1: float
    note: str = ""


def ours(dataset: Path, machines: int) -> Side:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "PREFECT_API_URL"))}
    with tempfile.TemporaryDirectory(prefix="own-data-") as home:
        started = time.perf_counter()
        result = subprocess.run([str(Path(sys.executable).parent / "imagenet18"), "run", "--backend", "local",
                                 "--machines", str(machines), "--dataset", str(dataset)],
                                env={**env, "IMAGENET18_HOME": home}, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - started
        if result.returncode:
            raise SystemExit(f"imagenet18 run failed on {dataset}:\n{result.stderr[-3000:]}")
        storage = re.search(r"^logs and TensorBoard events: (\S+)", result.stdout, re.MULTILINE)[1]
        summary = json.loads(Path(storage, "summary.json").read_text())
    epochs = summary["epochs"]
    return Side("imagenet18 run", seconds, len(epochs), epochs[-1]["top1"], max(e["top1"] for e in epochs),
                f"{summary['schedule']}, {summary['arch']}, sizes {sorted({e['size'] for e in epochs})}, batch "
                f"{epochs[0]['global_batch']}, {summary['hours'] * 3600:.0f} s of it training")


def plain_loop(dataset: Path, seconds: float) -> Side:
    torch.manual_seed(0)
    one_epoch = _plain_run(dataset, epochs=1)
    epochs = max(1, math.floor(seconds / one_epoch.seconds))
    side = _plain_run(dataset, epochs)
    side.note = f"{PLAIN_ARCH} {PLAIN_SIZE} px, one epoch {one_epoch.seconds:.0f} s"
    return side


def _plain_run(dataset: Path, epochs: int) -> Side:
    started = time.perf_counter()
    device = torch.device("cpu")
    workers = reference_loop.default_workers(device)
    loader = reference_loop.build_loader(dataset / "train", PLAIN_SIZE, PLAIN_BATCH, workers, pin_memory=False)
    loop = reference_loop.ReferenceLoop(PLAIN_ARCH, len(loader.dataset.classes), device)
    schedule = torch.optim.lr_scheduler.OneCycleLR(loop.optimizer, max_lr=PLAIN_MAX_LR,
                                                   total_steps=epochs * len(loader))
    top1s = []
    for _ in range(epochs):
        for image, target in loader:
            loop.step(image, target)
            schedule.step()
        top1s.append(reference_loop.evaluate(loop, dataset / "validation", PLAIN_SIZE, PLAIN_BATCH, workers)[0])
    return Side("plain loop", time.perf_counter() - started, epochs, top1s[-1], max(top1s))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="ImageNet-layout folders (ROOT/{train,validation})")
    parser.add_argument("--machines", type=int, default=2, choices=(1, 2, 4, 8, 16))
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {len(os.sched_getaffinity(0))} cores, {time.strftime('%Y-%m-%d')}")
    print("| dataset | side | wall s | epochs | last top-1 | best top-1 | what ran |\n|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        mine = ours(dataset, args.machines)
        for side in (mine, plain_loop(dataset, mine.seconds)):
            print(f"| {dataset.name} | {side.name} | {side.seconds:.0f} | {side.epochs} | {side.last_top1:.1f} | "
                  f"{side.best_top1:.1f} | {side.note} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
