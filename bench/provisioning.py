"""Provisioning 16 replicas and 16 machines against the AWS simulator, in parallel and one call at a time.

    python bench/provisioning.py [--machines 16] [--rounds 3]

Alternates parallel (`parallel_calls=16`) and serial (`parallel_calls=1`) rounds of the flow's three creating
stages (replicate beside prepare, then provision; in serial rounds every call in turn), each on a simulator of
its own (moto server + our wrapper; --latency adds a round trip to every call) with a small dataset snapshot,
and each followed by a teardown; prints each round and the median ratio. --trace prints every AWS call of the
first parallel round (start and end seconds, thread, operation): the chain of calls that wait on each other is
what is left of the parallel time. Needs the test extras (moto). Figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.backends.aws import AwsBackend, AwsOptions, pools  # noqa: E402
from tasks.backends.base import ClusterSpec  # noqa: E402
from tests.awssim import start  # noqa: E402

AMI = "ami-03cf127a"


class CallTrace:
    """Each AWS call's start and end (seconds since the trace began), thread and operation, from botocore's
    events on the backend's session."""

    def __init__(self, backend: AwsBackend):
        self.began = time.perf_counter()
        self.open: dict[int, float] = {}
        self.calls: list[tuple[float, float, str, str]] = []
        events = backend.clients.session.events
        events.register("before-call", self._started)
        events.register("after-call", self._ended)
        events.register("after-call-error", self._ended)

    def _started(self, model, **_) -> None:
        self.open[threading.get_ident()] = time.perf_counter() - self.began

    def _ended(self, model=None, **_) -> None:  # after-call-error (no answer at all) carries no model
        start = self.open.pop(threading.get_ident(), 0.0)
        operation = f"{model.service_model.service_name}.{model.name}" if model else "(connection error)"
        self.calls.append((start, time.perf_counter() - self.began, threading.current_thread().name, operation))

    def print(self) -> None:
        for began, ended, thread, operation in sorted(self.calls):
            print(f"  {began:6.2f} {ended:6.2f}  {thread:28s} {operation}")


def provision_seconds(backend: AwsBackend, run_id: str, machines: int, trace: bool = False) -> float:
    calls = CallTrace(backend) if trace else None
    spec = ClusterSpec(run_id, run_id, machines, "p4d.24xlarge", False,
                       dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    started = time.perf_counter()
    # As the flow's stages: replicate-dataset beside prepare-cluster (one after the other when serial), then
    # provision-cluster.
    with pools.pool(backend.options.parallel_calls, 2) as pool:
        replicas = pool.submit(backend.replicate, spec, "bench-dataset", machines)
        prepared = pool.submit(backend.prepare, spec)
        backend.provision(spec, replicas.result(), prepared.result())
    elapsed = time.perf_counter() - started
    if calls:
        calls.print()
    backend.teardown(run_id)
    return elapsed


def fresh_simulator_round(run_id: str, parallel_calls: int, machines: int, trace: bool) -> float:
    """One timed round on a simulator of its own. Moto keeps what a teardown terminated and answers more slowly
    as it piles up, so rounds that share one simulator drift (here 3.1, 3.7 and 4.1 s for the same parallel
    round); a new one per round gives each the same start. A 2-machine round not counted comes first: moto
    loads each service's backend at its first call."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "aws-config").touch()
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(root / "aws-config"),
                          AWS_SHARED_CREDENTIALS_FILE=str(root / "aws-config"))
        with start(root / "sim") as sim:
            os.environ["AWS_ENDPOINT_URL"] = sim.endpoint
            (root / "dataset" / "imagenet" / "train" / "n0").mkdir(parents=True)
            (root / "dataset" / "imagenet" / "train" / "n0" / "a.JPEG").write_bytes(b"jpeg")
            sim.make_snapshot(root / "dataset", description="bench-dataset")
            provision_seconds(AwsBackend(AwsOptions(ami=AMI, bucket="bench"), home=root), "bench-warm-up", 2)
            backend = AwsBackend(AwsOptions(ami=AMI, bucket="bench", parallel_calls=parallel_calls), home=root)
            return provision_seconds(backend, run_id, machines, trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the simulator adds to every AWS call (a real endpoint's round trip)")
    parser.add_argument("--trace", action="store_true", help="print the first parallel round's AWS calls")
    args = parser.parse_args()
    os.environ["AWSSIM_LATENCY_S"] = str(args.latency)
    times: dict[str, list[float]] = {"parallel": [], "serial": []}
    for round_ in range(args.rounds):
        for mode, calls in (("parallel", 16), ("serial", 1)):
            trace = args.trace and mode == "parallel" and round_ == 0
            seconds = fresh_simulator_round(f"bench-{mode}-{round_}", calls, args.machines, trace)
            times[mode].append(seconds)
            print(f"round {round_}: {mode:8s} {args.machines} replicas + {args.machines} machines in "
                  f"{seconds:.2f} s", flush=True)
    parallel, serial = statistics.median(times["parallel"]), statistics.median(times["serial"])
    print(f"median: parallel {parallel:.2f} s, serial {serial:.2f} s, parallel/serial = {parallel / serial:.2f}")


if __name__ == "__main__":
    main()
