"""Orchestration overhead of the local DAG: the whole flow's wall time against the same training run
launched by hand (two torchrun nodes, same schedule, data and threads), side by side on one machine.

    python bench/orchestration.py [--machines 2] [--schedule cpu-demo] [--rounds 3] [--server]

Rounds alternate a flow run (`imagenet18 demo`, including the start of its temporary API server when no
PREFECT_API_URL is set, as a user pays it) and a hand launch. On a shared machine the training itself varies
from run to run by as much as the overhead, so each run's training clock (its metrics.jsonl, from the trainer's
`start` record to its `end` record) is subtracted from its wall time: what is left is start-up and wrap-up,
and the flow's minus the hand launch's is the overhead, free of the training's noise. Both figures are printed
per round, with medians. --server starts one `prefect server start` first (untimed, its own PREFECT_HOME),
and the flow runs report to it, as they do when a user watches runs in the UI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.backends.demo import demo_dataset_root  # noqa: E402
from tasks.backends.local import default_home  # noqa: E402
from tests.prefect_server import prefect_server  # noqa: E402


def training_clock(metrics: Path) -> float:
    """Seconds from the trainer's `start` record to its `end` record."""
    records = {r["type"]: r for r in map(json.loads, metrics.read_text().splitlines())}
    return records["end"]["time"] - records["start"]["time"]


def time_flow(machines: int, schedule: str, env: dict[str, str] | None) -> tuple[float, float]:
    runs = default_home() / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deployments.cli", "demo", "--machines", str(machines),
                    "--schedule", schedule], check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    [folder] = set(runs.iterdir()) - before
    return wall, training_clock(folder / "metrics.jsonl")


def time_trainer(machines: int, schedule: str, data: Path) -> tuple[float, float]:
    threads = max(1, len(os.sched_getaffinity(0)) // machines)
    with tempfile.TemporaryDirectory() as logdir:
        port = 29400 + os.getpid() % 500
        commands = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={machines}", f"--node_rank={i}",
                     "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                     f"--log-dir={logdir}/torchrun", "-m", "trainer",
                     "train", str(data), "--schedule", schedule, "--logdir", logdir, "--threads", str(threads)]
                    for i in range(machines)]
        start = time.perf_counter()
        nodes = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]
        if any(node.wait() for node in nodes):
            raise SystemExit("the trainer failed")
        return time.perf_counter() - start, training_clock(Path(logdir) / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=2)
    parser.add_argument("--schedule", default="cpu-demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", action="store_true", help="flows report to a running Prefect server")
    args = parser.parse_args()
    where = "a running Prefect server" if args.server else "its temporary API server"
    print(f"# imagenet18 demo --machines {args.machines} --schedule {args.schedule} ({where}) against the same "
          f"torchrun nodes by hand; {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory() as home, (prefect_server(Path(home)) if args.server else nullcontext()) as env:
        print("| round | flow wall s | flow training s | by hand wall s | by hand training s | overhead s | "
              "overhead outside training s |\n|---|---|---|---|---|---|---|", flush=True)
        shares, raw_shares = [], []
        for round_ in range(args.rounds):
            flow_wall, flow_training = time_flow(args.machines, args.schedule, env)  # may make the dataset
            hand_wall, hand_training = time_trainer(args.machines, args.schedule, demo_dataset_root())
            raw = flow_wall - hand_wall
            outside = (flow_wall - flow_training) - (hand_wall - hand_training)
            raw_shares.append(raw / flow_wall)
            shares.append(outside / flow_wall)
            print(f"| {round_} | {flow_wall:.1f} | {flow_training:.1f} | {hand_wall:.1f} | {hand_training:.1f} | "
                  f"{raw:.1f} | {outside:.1f} |", flush=True)
    print(f"median overhead: {100 * statistics.median(raw_shares):.1f}% of the flow's wall time by wall times; "
          f"{100 * statistics.median(shares):.1f}% outside training")


if __name__ == "__main__":
    main()
