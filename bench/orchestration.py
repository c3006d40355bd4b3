"""Orchestration overhead of the local DAG: the whole flow's wall time against the same training run
launched by hand (two torchrun nodes, same schedule, data and threads), side by side on one machine.

    python bench/orchestration.py [--machines 2] [--schedule cpu-demo]

Prints both wall times and their difference as a share of the flow's. The flow's time includes Prefect's
temporary API server start when no PREFECT_API_URL is set, which `imagenet18 demo` pays too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_flow(machines: int, schedule: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--machines", str(machines), "--schedule", schedule],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_trainer(machines: int, schedule: str, data: Path) -> float:
    threads = max(1, len(os.sched_getaffinity(0)) // machines)
    with tempfile.TemporaryDirectory() as logdir:
        port = 29400 + os.getpid() % 500
        commands = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={machines}", f"--node_rank={i}",
                     "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "trainer",
                     "train", str(data), "--schedule", schedule, "--logdir", logdir, "--threads", str(threads)]
                    for i in range(machines)]
        start = time.perf_counter()
        nodes = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]
        if any(node.wait() for node in nodes):
            raise SystemExit("the trainer failed")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=2)
    parser.add_argument("--schedule", default="cpu-demo")
    args = parser.parse_args()
    from flows.parameters import demo_dataset_root

    flow_seconds = time_flow(args.machines, args.schedule)  # also makes the demo dataset if it is missing
    trainer_seconds = time_trainer(args.machines, args.schedule, demo_dataset_root())
    overhead = flow_seconds - trainer_seconds
    print(f"flow (imagenet18 demo, {args.machines} machines, {args.schedule}): {flow_seconds:7.1f} s")
    print(f"trainer alone (same torchrun nodes):                  {trainer_seconds:7.1f} s")
    print(f"orchestration overhead: {overhead:.1f} s = {100 * overhead / flow_seconds:.1f}% of the flow's wall time")


if __name__ == "__main__":
    main()
