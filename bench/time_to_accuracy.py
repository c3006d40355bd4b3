"""The demo's time to its target accuracy: the trainer against the torchvision-reference-style loop, one run.

    python -m trainer demo-data /tmp/demo
    python bench/time_to_accuracy.py /tmp/demo [--schedule cpu-demo] [--reference fp32 amp]

Same model (the schedule's arch, from trainer.model.build_model on both sides), same dataset folder, same
epoch budget (the schedule's epochs), same batch size per step (the schedule's first phase) and the machine's
cores. The trainer runs as `python -m trainer train DATA --schedule S` (its recipe: progressive resizing on the
seed's -sz/ copies, warm-up, one-cycle-like LR, bn0, rectangular validation; bf16 where the CPU has it). The
reference (bench/reference_loop.py) trains as torchvision's references/classification does by default
(ImageFolder + PIL from the full-size folder, RandomResizedCrop at the schedule's last size, constant LR 0.1,
its StepLR not stepping within the budget, fp32 or --amp) and evaluates after every epoch (resize, centre
crop). The clock starts at the first training batch and includes evaluation, as the trainer's `hours` does.
Prints each side's epochs and the time each first reached the schedule's target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reference_loop
import torch

from trainer import schedule as schedules

ROOT = Path(__file__).resolve().parents[1]


def trainer_epochs(data: Path, schedule: str, logdir: Path) -> tuple[list[dict], float]:
    """The trainer's epoch records (seconds since its clock started, top-1, top-5), and its whole wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainer", "train", str(data), "--schedule", schedule, "--logdir",
                    str(logdir), "--print-freq", "100000"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [{"epoch": r["epoch"], "seconds": r["hours"] * 3600, "size": r["size"], "top1": r["top1"],
             "top5": r["top5"]} for r in records if r["type"] == "epoch"], wall


def reference_epochs(data: Path, plan: schedules.Schedule, amp: bool) -> tuple[list[dict], float]:
    started = time.perf_counter()
    torch.manual_seed(0)
    size, batch = plan.data[-1].sz, plan.data[0].bs
    workers = reference_loop.default_workers(torch.device("cpu"))
    loader = reference_loop.build_loader(data / "train", size, batch, workers, pin_memory=False)
    loop = reference_loop.ReferenceLoop(plan.arch, len(loader.dataset.classes), torch.device("cpu"), amp=amp)
    records, clock = [], time.perf_counter()
    for epoch in range(plan.epochs):
        for image, target in loader:
            loop.step(image, target)
        top1, top5 = reference_loop.evaluate(loop, data / "validation", size, batch, workers)
        records.append({"epoch": epoch, "seconds": time.perf_counter() - clock, "size": size, "top1": top1,
                        "top5": top5})
    return records, time.perf_counter() - started


def first_at(records: list[dict], metric: str, target: float) -> dict | None:
    return next((r for r in records if r[metric] >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the demo dataset (python -m trainer demo-data DIR)")
    parser.add_argument("--schedule", default="cpu-demo")
    parser.add_argument("--reference", nargs="+", choices=("fp32", "amp"), default=["fp32"],
                        help="reference precision(s): fp32 = its default; amp = its --amp (bf16 on a CPU)")
    args = parser.parse_args()
    plan = schedules.load(args.schedule)
    metric, target = plan.target_metric or "top1", plan.target
    print(f"# {plan.arch}, {plan.epochs} epochs, batch {plan.data[0].bs}, {args.data}; target {metric} >= "
          f"{target}; torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    sides: dict[str, tuple[list[dict], float]] = {}
    with tempfile.TemporaryDirectory(prefix="time-to-accuracy-") as tmp:
        sides["trainer"] = trainer_epochs(args.data, args.schedule, Path(tmp) / "trainer")
    for variant in args.reference:
        sides[f"reference {variant}"] = reference_epochs(args.data, plan, amp=variant == "amp")
    print("| side | epoch | px | minutes | top-1 | top-5 |\n|---|---|---|---|---|---|")
    for side, (records, _) in sides.items():
        for r in records:
            print(f"| {side} | {r['epoch']} | {r['size']} | {r['seconds'] / 60:.2f} | {r['top1']:.1f} | "
                  f"{r['top5']:.1f} |")
    print(f"\n| side | minutes to {metric} {target} | epoch | final {metric} | wall minutes (with start-up) |\n"
          "|---|---|---|---|---|")
    for side, (records, wall) in sides.items():
        reached = first_at(records, metric, target)
        when = f"{reached['seconds'] / 60:.2f} | {reached['epoch']}" if reached else "not reached | -"
        print(f"| {side} | {when} | {records[-1][metric]:.1f} | {wall / 60:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
