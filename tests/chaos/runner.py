"""One chaos run: a flow run of imagenet18 in its own flow process (`python -m prefect.engine`, as a worker starts
it), its fault armed before it starts and struck where the scenario says, then judged by what the world shows:
the fault struck, the run ended as it must, its failure names the fault, nothing of it is left (after the
scheduled cleanup, where its flow process was killed), and nothing it or the cleanup removed was another run's.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prefect import get_client
from prefect.settings import PREFECT_API_URL

from flows.cleanup import cleanup
from flows.imagenet18 import imagenet18
from tasks.backends.aws import tags
from tasks.backends.base import SweepIncomplete
from tests.awssim import AwsSim
from tests.chaos.census import Census
from tests.chaos.scenarios import FLOW_PROCESS, TRAINING, Scenario
from tests.faultgates import GATE_ENV, Gate
from tests.leftovers import aws_leftovers, local_leftovers
from tests.prefect_server import all_flow_run_logs
from tests.processes import environments

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_SECONDS = 30  # the flow processes' (Prefect's shortest)
STALE_MINUTES = 1.5  # the cleanup's "no sign of life": three missed heartbeats, so it never takes a live run
RUN_SECONDS = 600  # at most, for one flow process
WAIT_SECONDS = 300  # at most, for a run to reach the point its fault strikes
SETTLE_SECONDS = 60  # at most, for what a run removed to be gone (a machine's processes die on the player's tick)
TEARDOWN_LINE = re.compile(r"teardown removed \d+ resource\(s\) of run (\S+): (.*)")


@dataclass
class World:
    """What the runs share: the backends' home (IMAGENET18_HOME), the dataset (its folder, and the snapshot made
    of it), the simulator, a scratch folder, the census, and which runs are live."""
    home: Path
    local_dataset: str
    aws_dataset: str
    aws_options: dict
    aws: AwsSim
    scratch: Path
    census: Census
    run_ids: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)  # runs whose flow process is running
    cleanup_lock: threading.Lock = field(default_factory=threading.Lock)  # one sweep at a time, as scheduled


@dataclass
class Outcome:
    scenario: Scenario
    run_id: str
    state: str  # the flow run's final state, e.g. "Failed"
    message: str
    struck: int  # how often the fault struck: errors answered, gate hits, signals, interruptions
    at_death: int | None  # the run's resources when its flow process was killed
    made: int  # the run's resources, as the census saw them
    left: dict[str, list[str]]
    problems: list[str]
    seconds: float
    log: str  # its flow process's output


def run_all(scenarios: list[Scenario], world: World, parallel: int) -> list[Outcome]:
    # Each run in a copy of the caller's context: Prefect's settings (the API's URL) may live there alone.
    runs = [(contextvars.copy_context(), scenario) for scenario in scenarios]
    with world.census.running(), ThreadPoolExecutor(parallel, thread_name_prefix="chaos") as pool:
        return list(pool.map(lambda run: run[0].run(lambda: ChaosRun(run[1], world).outcome()), runs))


class ChaosRun:
    def __init__(self, scenario: Scenario, world: World):
        self.scenario, self.world = scenario, world
        self.folder = world.scratch / scenario.label
        self.folder.mkdir(parents=True, exist_ok=True)
        self.gate = Gate(scenario.target, scenario.after, hold=scenario.kind in ("hang", "kill"),
                         hit=str(self.folder / "hit"), release=str(self.folder / "release")) \
            if scenario.backend == "local" and ":" in scenario.target else None
        self.run_id = ""
        self.struck = 0
        self.at_death: int | None = None
        self.killed_at: float | None = None
        self.swept: list[str] = []
        self.live_at_sweep: set[str] = set()

    def outcome(self) -> Outcome:
        began = time.monotonic()
        try:
            problems = self._run()
        except Exception:  # noqa: BLE001 - the harness's own failure is reported with the run's, not instead
            problems = [f"the chaos harness failed:\n{traceback.format_exc()}"]
        state = _state(uuid.UUID(self.run_id)) if self.run_id else None
        left = self._left() if self.run_id else {}
        return Outcome(self.scenario, self.run_id, state.name if state else "-", state.message if state else "",
                       self.struck, self.at_death, self.world.census.made(self.run_id), left, problems,
                       time.monotonic() - began, str(self.folder / "flow.log"))

    # -- the run ----------------------------------------------------------------------------------------
    def _run(self) -> list[str]:
        s = self.scenario
        dataset = self.world.local_dataset if s.backend == "local" else self.world.aws_dataset
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(imagenet18, parameters=s.parameters(dataset, self.world.aws_options))
        self.run_id = str(flow_run.id)
        self.world.run_ids.add(self.run_id)
        self._arm()
        process = self._start()
        self.world.live.add(self.run_id)
        try:
            self._strike(process)
            process.wait(timeout=RUN_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            self.world.live.discard(self.run_id)
            self.struck += self._disarm()
        if s.needs_cleanup:
            self._sweep()
        self._settle()
        return self._problems()

    def _arm(self) -> None:
        s = self.scenario
        if self.gate is not None:
            self.gate.save(self.folder / "gate.json")
        hold_s = {"hang": s.delay_s, "kill": RUN_SECONDS}.get(s.kind, 0.0)
        for point in s.rules:
            # An S3 key holds the start of the run's id only; the key's pattern keeps to the run's objects.
            match, run = ({"Key": point.key.format(run8=self.run_id[:8])}, None) if point.key else (None, self.run_id)
            self.world.aws.add_fault(point.service, point.action, point.code, message=s.message,
                                     probability=s.probability, times=point.times, match=match, after=s.after,
                                     hold_s=hold_s, run=run, label=s.label)

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT__FLOW_RUN_ID": self.run_id,
               "PREFECT__FLOW_ENTRYPOINT": "flows/imagenet18.py:imagenet18",
               "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
               "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,trainer",  # as the CLI and the deployments set it
               "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faultgates_site"), str(REPO)])}
        if self.gate is not None:
            env[GATE_ENV] = str(self.folder / "gate.json")
        if self.scenario.wandb_key:
            env.update(WANDB_API_KEY="chaos-not-a-key", WANDB_MODE="disabled")
        with open(self.folder / "flow.log", "w") as log:
            return subprocess.Popen([sys.executable, "-m", "prefect.engine"], cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _strike(self, process: subprocess.Popen) -> None:
        s = self.scenario
        if s.target in (TRAINING, FLOW_PROCESS):
            if _until(self._first_epoch_ended, process):
                time.sleep(s.delay_s)
                self._strike_training(process)
        elif s.kind == "kill":
            if _until(self._fired, process):
                self._kill(process)
        elif self.gate is not None and s.kind in ("transient", "hang"):
            if _until(self._fired, process):  # the stage fails (hangs for delay_s, first); its retry passes
                time.sleep(s.delay_s)
                Path(self.gate.release).touch()

    def _strike_training(self, process: subprocess.Popen) -> None:
        s = self.scenario
        if s.kind == "kill":
            self._kill(process)
        elif s.kind == "lost" and s.backend == "aws":
            self.world.aws.interrupt(self._machine_1())
            self.struck += 1
        else:
            sig = signal.SIGKILL if s.kind == "lost" else signal.SIGSTOP
            for pid in self._machine_1_processes():
                with contextlib.suppress(ProcessLookupError):  # ended between the listing and the signal
                    os.kill(pid, sig)
                    self.struck += 1

    def _kill(self, process: subprocess.Popen) -> None:
        process.kill()
        process.wait()
        self.killed_at, self.struck = time.monotonic(), self.struck + 1
        self.at_death = sum(len(ids) for ids in self._left().values())

    def _disarm(self) -> int:
        """Ends the fault (a held call returns, a gate lets calls through); how often it struck."""
        if self.gate is not None:
            Path(self.gate.release).touch()
            return int(self.gate.fired)
        if not self.scenario.rules:
            return 0
        fired = sum(rule["fired"] for rule in self.world.aws.fault_counts(self.scenario.label))
        self.world.aws.clear_faults(self.scenario.label)
        return fired

    def _sweep(self) -> None:
        """The scheduled cleanup flow, run once the killed run shows no sign of life."""
        if self.killed_at is not None:
            time.sleep(max(0.0, self.killed_at + STALE_MINUTES * 60 + 5 - time.monotonic()))
        with self.world.cleanup_lock:
            self.live_at_sweep = self.world.live.copy()
            try:
                removed = [r for ids in cleanup(stale_after_minutes=STALE_MINUTES).values() for r in ids]
            except SweepIncomplete as exc:  # another run's teardown failing as its fault says: swept next time
                removed = [r.id for r in exc.removed]
        self.swept = removed

    def _settle(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while self._left() and time.monotonic() < deadline:
            time.sleep(1)

    # -- what the world shows ---------------------------------------------------------------------------
    def _left(self) -> dict[str, list[str]]:
        if self.scenario.backend == "local":
            return local_leftovers(self.world.home, self.run_id)
        return aws_leftovers(self.world.aws, self.run_id, self.world.home)

    def _fired(self) -> bool:
        if self.gate is not None:
            return self.gate.fired
        return any(rule["fired"] for rule in self.world.aws.fault_counts(self.scenario.label))

    def _first_epoch_ended(self) -> bool:
        run_folders = (self.world.home / "runs").glob(f"*-{self.run_id[:8]}") if self.scenario.backend == "local" \
            else self.world.aws.root.glob(f"efs/*/runs/*-{self.run_id[:8]}")
        return any('"type": "epoch"' in (folder / "metrics.jsonl").read_text()
                   for folder in run_folders if (folder / "metrics.jsonl").is_file())

    def _machine_1(self) -> str:
        where = tags.run_filter(self.run_id) + [{"Name": f"tag:{tags.INDEX}", "Values": ["1"]},
                                                {"Name": "instance-state-name", "Values": ["running"]}]
        [instance] = [i for r in self.world.aws.client("ec2").describe_instances(Filters=where)["Reservations"]
                      for i in r["Instances"]]
        return instance["InstanceId"]

    def _machine_1_processes(self) -> list[int]:
        if self.scenario.backend == "aws":
            instance = self._machine_1()
            return [pid for pid, env in environments("IMAGENET18_SIM_INSTANCE")
                    if env["IMAGENET18_SIM_INSTANCE"] == instance]
        return [pid for pid, env in environments("IMAGENET18_RUN")
                if env["IMAGENET18_RUN"] == self.run_id and env.get("IMAGENET18_JOB") == "train-1"]

    # -- the verdict ------------------------------------------------------------------------------------
    def _problems(self) -> list[str]:
        s, state = self.scenario, _state(uuid.UUID(self.run_id))
        problems = []
        if not self.struck:
            problems.append(f"the fault never struck ({s.target})")
        if state is None or state.name.lower() != s.expected.lower():
            problems.append(f"the run ended {state.name if state else 'without a state'} ({state and state.message}), "
                            f"not {s.expected}")
        logs = [log.message for log in all_flow_run_logs(uuid.UUID(self.run_id))]
        said = (state and state.message or "") if s.expected != "Completed" else "\n".join(logs)
        if not re.search(self._cause(), said):
            problems.append(f"the {'failure' if s.expected != 'Completed' else 'log'} does not name the fault "
                            f"(/{self._cause()}/): {said[-2000:]}")
        left = self._left()
        if left:
            problems.append(f"left behind: {left}")
        return problems + self._foreign(logs)

    def _cause(self) -> str:
        """What the final state's message (or, for a run that must complete, its log) must say."""
        s = self.scenario
        if s.kind == "kill":
            return "marked by imagenet18-cleanup"
        if s.kind == "lost":
            return r"machine\(s\) \[1\] lost"
        if s.kind == "hung":
            return r"\[(0, )?1\] (made|making) no progress"
        if s.backend == "local":
            return re.escape(f"injected failure in {s.target}")
        said_by = [re.escape(s.message)]  # in the error, and in the warning of a task's retry or of a side path
        if s.expected == "Completed":
            said_by += [f"answered {point.code}" for point in s.rules]  # the warning of each of botocore's retries
        return "|".join(said_by)

    def _foreign(self, logs: list[str]) -> list[str]:
        """Ids that the run's teardown, or a cleanup sweep while other runs were live, removed of another run."""
        problems, runs = [], self.world.run_ids.copy()
        for line in logs:
            found = TEARDOWN_LINE.search(line)
            for resource_id in found.group(2).split(", ") if found and found.group(2) != "none" else []:
                owner = self.world.census.owner(resource_id, runs)
                if owner not in (None, self.run_id):
                    problems.append(f"its teardown removed {resource_id} of run {owner}")
        for resource_id in self.swept:
            owner = self.world.census.owner(resource_id, runs)
            if owner in self.live_at_sweep:
                problems.append(f"the cleanup flow removed {resource_id} of run {owner}, which was running")
        return problems


def _until(predicate: Callable[[], bool], process: subprocess.Popen) -> bool:
    """Waits for `predicate` while the flow process lives, WAIT_SECONDS at most; whether it came true."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _state(flow_run_id: uuid.UUID):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state
