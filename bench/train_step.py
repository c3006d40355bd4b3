"""Training-step throughput of the trainer's model and optimiser on synthetic batches (images/second).

    python bench/train_step.py --archs resnet18 resnet50 --sizes 64 128 224 --batch 32

For each (arch, size) it times fp32 and bf16 autocast + channels_last, interleaved, and prints medians.
Figures go to BENCHMARKS.md with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainer.model import build_model, build_optimizer, set_lr


def step_seconds(arch: str, size: int, batch: int, fast: bool, steps: int, device: torch.device) -> list[float]:
    model = build_model(arch, 1000).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    optimizer = build_optimizer(model)
    set_lr(optimizer, 0.1)
    times = []
    for _ in range(steps + 2):  # two warm-up steps: kernel selection and allocation
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'arch':10s} {'px':>4s} {'fp32 img/s':>11s} {'bf16+cl img/s':>14s} {'ratio':>6s}")
    for arch in args.archs:
        for size in args.sizes:
            rates = {False: [], True: []}
            for _ in range(args.repeats):
                for fast in (False, True):
                    seconds = statistics.median(step_seconds(arch, size, args.batch, fast, args.steps, device))
                    rates[fast].append(args.batch / seconds)
            fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"{arch:10s} {size:4d} {fp32:11.1f} {bf16:14.1f} {bf16 / fp32:6.2f}", flush=True)


if __name__ == "__main__":
    main()
