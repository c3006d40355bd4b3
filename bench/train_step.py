"""Training-step throughput of the trainer's model and optimiser on synthetic batches (images/second).

    python bench/train_step.py --archs resnet18 resnet50 --sizes 64 128 224 --batch 32 [--compile]

For each (arch, size) it times fp32 and bf16 autocast + channels_last (and, with --compile, the latter with the
model under torch.compile), interleaved, and prints medians; a compiled variant also prints how long its first
step took (the compilation). Figures go to BENCHMARKS.md with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainer.model import build_model, build_optimizer, set_lr

VARIANTS = ("fp32", "bf16+cl", "bf16+cl+compile")


def step_seconds(arch: str, size: int, batch: int, variant: str, steps: int, device: torch.device) -> list[float]:
    """Every step's seconds, the two warm-up steps (kernel selection, allocation, compilation) first."""
    fast = variant != "fp32"
    model = build_model(arch, 1000).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    optimizer = build_optimizer(model)
    set_lr(optimizer, 0.1)
    forward = torch.compile(model) if variant.endswith("compile") else model
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time bf16 + channels_last + torch.compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = VARIANTS if args.compile else VARIANTS[:2]
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}, median of "
          f"{args.repeats} repeats of {args.steps} steps after 2 warm-up steps")
    print("| arch | px | " + " | ".join(f"{v} img/s" for v in variants) + " | bf16+cl / fp32 |"
          + (" compile / bf16+cl | first compiled step s |" if args.compile else ""))
    print("|---" * (3 + len(variants) + (2 if args.compile else 0)) + "|")
    for arch in args.archs:
        for size in args.sizes:
            rates: dict[str, list[float]] = {v: [] for v in variants}
            first_steps: list[float] = []
            for _ in range(args.repeats):
                for variant in variants:
                    times = step_seconds(arch, size, args.batch, variant, args.steps, device)
                    rates[variant].append(args.batch / statistics.median(times[2:]))
                    if variant.endswith("compile"):
                        first_steps.append(times[0])
            medians = {v: statistics.median(r) for v, r in rates.items()}
            row = (f"| {arch} | {size} | " + " | ".join(f"{medians[v]:.1f}" for v in variants)
                   + f" | {medians['bf16+cl'] / medians['fp32']:.2f} |")
            if args.compile:
                row += (f" {medians['bf16+cl+compile'] / medians['bf16+cl']:.2f} | "
                        f"{statistics.median(first_steps):.0f} |")
            print(row, flush=True)


if __name__ == "__main__":
    main()
