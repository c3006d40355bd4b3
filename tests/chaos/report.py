"""The figures of a set of chaos runs, what went wrong in any, and the command that draws the same runs again."""

from __future__ import annotations

from collections import Counter

from tests.chaos.runner import Outcome
from tests.chaos.scenarios import Scenario


def rerun_commands(seed: int, runs: int, parallel: int, only: list[int] | None = None) -> str:
    """The suite's and the soak's command lines that draw the same runs (only those in `only`, when given)."""
    picked = ",".join(map(str, only or ()))
    return (f"CHAOS_SEED={seed} CHAOS_RUNS={runs} CHAOS_PARALLEL={parallel}{f' CHAOS_ONLY={picked}' if picked else ''} "
            f"python -m pytest tests/test_chaos.py\n"
            f"python bench/chaos_soak.py --seed {seed} --runs {runs} --parallel {parallel}"
            f"{f' --only {picked}' if picked else ''}")


def cause(scenario: Scenario) -> str:
    """The cause a run that does not complete fails with, in a few words."""
    if scenario.kind == "kill":
        return f"flow process killed in {scenario.stage}"
    if scenario.kind in ("lost", "hung"):
        return f"machine 1 {scenario.kind}, no restart left"
    if scenario.backend == "aws":
        return f"{scenario.rules[0].code} from {scenario.target}"
    return f"injected failure in {scenario.target}"


def figures(outcomes: list[Outcome], wall_s: float) -> str:
    def counted(counter: Counter) -> str:
        return ", ".join(f"{key} {count}" for key, count in sorted(counter.items())) or "none"

    failures = Counter(cause(o.scenario) for o in outcomes if o.scenario.expected != "Completed")
    lines = [
        f"runs: {len(outcomes)} ({counted(Counter(o.scenario.backend for o in outcomes))})",
        f"faults injected: {counted(Counter(o.scenario.kind for o in outcomes))}; "
        f"struck {sum(o.struck for o in outcomes)} times (errors answered, gate hits, signals, interruptions)",
        f"final states: {counted(Counter(o.state for o in outcomes))}",
        f"resources made: {sum(o.made for o in outcomes)} (seen by the census); held by killed runs at their death: "
        f"{sum(o.at_death or 0 for o in outcomes)}",
        f"resources left: {sum(len(ids) for o in outcomes for ids in o.left.values())}",
        f"runs with problems: {sum(bool(o.problems) for o in outcomes)}",
        f"wall time: {wall_s:.0f} s",
        "failures by cause:",
        *(f"  {count} x {what}" for what, count in sorted(failures.items())),
    ]
    return "\n".join(lines)


def problems(outcomes: list[Outcome]) -> str:
    """Each run that went wrong: its scenario, run id, what went wrong and where its flow process's log is."""
    return "\n".join(f"{o.scenario.name}, run {o.run_id} ({o.state}, {o.seconds:.0f} s; log {o.log}):\n"
                     + "\n".join(f"  - {problem}" for problem in o.problems)
                     for o in outcomes if o.problems)
