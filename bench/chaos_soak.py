"""Chaos soak: many runs of the imagenet18 flow, local and on the AWS simulator, several at once, each with a fault
drawn at random from a seed (tests/chaos), against a real `prefect server`. Prints the figures (runs, faults
injected by kind, final states, resources made and left, failures by cause, wall time), each run that went wrong
with the command that draws it again, and exits 1 when any run left something or did not end as its fault says.

    python bench/chaos_soak.py --runs 40 --seed 1 [--parallel 2] [--only 3,17] [--work DIR]

Needs the test extras (moto). The runs' scratch folders (flow process logs) are kept under --work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.awssim import client_environment, start  # noqa: E402
from tests.chaos.census import Census  # noqa: E402
from tests.chaos.report import figures, problems, rerun_commands  # noqa: E402
from tests.chaos.runner import World, run_all  # noqa: E402
from tests.chaos.scenarios import draw  # noqa: E402
from tests.conftest import DATASET, TINY  # noqa: E402
from tests.prefect_server import prefect_server  # noqa: E402
from tests.test_aws import options  # noqa: E402
from trainer.demo_data import make_demo_dataset  # noqa: E402
from trainer.prepare import prepare  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated indices of the drawn runs to run")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    only = {int(index) for index in args.only.split(",") if index}
    scenarios = [s for s in draw(args.seed, args.runs) if not only or s.index in only]
    print(f"# chaos soak: seed {args.seed}, {len(scenarios)} of {args.runs} runs drawn, {args.parallel} at a time; "
          f"scratch {work}", flush=True)
    for scenario in scenarios:
        print(f"  {scenario.name}: must end {scenario.expected}", flush=True)
    home = work / "imagenet18-home"
    os.environ["IMAGENET18_HOME"] = str(home)
    for name, value in client_environment(work / "aws").items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    dataset = make_demo_dataset(work / "data" / "demo", **TINY)
    prepare(dataset, sizes=[160])
    with prefect_server(work / "prefect") as env, start(work / "awssim") as aws, \
            temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        os.environ["AWS_ENDPOINT_URL"] = aws.endpoint
        aws.make_snapshot(dataset.parent, description=DATASET)
        world = World(home, str(dataset), DATASET, options().model_dump(mode="json"), aws, work / "runs",
                      Census(aws, home))
        began = time.monotonic()
        outcomes = run_all(scenarios, world, args.parallel)
        print(figures(outcomes, time.monotonic() - began), flush=True)
    failed = [o.scenario.index for o in outcomes if o.problems]
    if failed:
        print(f"{problems(outcomes)}\nto draw the runs that failed again:\n"
              f"{rerun_commands(args.seed, args.runs, args.parallel, failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
