"""The fault matrix: a failure at each stage x each way a run dies, on the local backend and on AWS (the
simulator). Every scenario must end with nothing of its run left, as the world says (tests/leftovers.py: the
simulator's services, /proc and the files), never the backend's own inventory. docs/fault-matrix.md lists each
row's outcome; each row compares its own with it.

How a run dies:
- exception: the stage fails (an AWS error answer, or an injected error locally); the flow's `finally` tears down.
- cancel: a run of the served deployment is cancelled while the stage hangs; the runner kills the flow process
  and runs the on_cancellation hook.
- sigterm: the flow process gets SIGTERM while the stage hangs (Prefect turns it into a crash).
- sigkill: the flow process is SIGKILLed while the stage hangs; nothing of it runs again, so the scheduled
  cleanup flow (run here at once) marks the run Crashed (its heartbeats stopped) and deletes what it left.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from flows.cleanup import cleanup
from flows.imagenet18 import imagenet18
from tasks.backends.aws import AwsBackend
from tasks.backends.local import LocalBackend
from tests.faultgates import GATE_ENV, STAGE_GATES, Gate, installed
from tests.leftovers import aws_leftovers, local_leftovers
from tests.prefect_server import background
from tests.support import wait_for as _wait_for
from tests.processes import command_line, with_environment
from tests.aws_runs import DATASET, options
from tests.awssim.faults import PRESENT

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("validate", "authorize", "replicate", "prepare", "provision", "train", "evaluate", "teardown")
DEATHS = ("exception", "cancel", "sigterm", "sigkill")
BACKENDS = ("local", "aws")
# Stages met before anything of the run exists: a local run has nothing to authorize.
MAKES_NOTHING_BEFORE = {("local", "validate"), ("local", "authorize"), ("aws", "validate")}
MANY = ("validate", "replicate", "prepare", "provision")  # met with 16 machines: part-way through 16 creations

# Where each stage fails on the local backend: (function, calls let through first).
LOCAL_GATES = {stage: (target, {"replicate": 7, "provision": 8}.get(stage, 0))  # replicas 8..16, machines 9..16
               for stage, target in STAGE_GATES.items()}
# ... and on AWS: (service, action, error code, request params matched, calls let through first).
AWS_FAULTS = {
    "validate": ("ec2", "RunInstances", "UnauthorizedOperation", {"DryRun": "true"}, 0),
    # the launch's dry run naming the run's instance profile: iam:PassRole refused
    "authorize": ("ec2", "RunInstances", "UnauthorizedOperation",
                  {"DryRun": "true", "IamInstanceProfile.Name": PRESENT}, 0),
    "replicate": ("ec2", "CreateVolume", "UnauthorizedOperation", {}, 7),
    "prepare": ("ec2", "CreateVpc", "UnauthorizedOperation", {}, 0),
    "provision": ("ec2", "RunInstances", "UnauthorizedOperation", {"Placement.GroupName": "imagenet18-.+"}, 0),
    # the exit codes the job's status lists (its metrics and logs are a side path: a failed read is retried)
    "train": ("s3", "ListObjectsV2", "AccessDenied", {"prefix": r".*/exit/train-"}, 0),
    "evaluate": ("s3", "PutObject", "AccessDenied", {"Key": r".*/curves\.png"}, 0),
    "teardown": ("ec2", "TerminateInstances", "UnauthorizedOperation", {}, 0),
}
WHERE = {
    "validate": "the pre-flight checks",
    "authorize": "the launch's dry run naming the run's role, once it is made (local: there is nothing to ask)",
    "replicate": "volume/replica 8 of 16",
    "prepare": "making the run's network (local: its folder), while the replicas are made",
    "provision": "the one launch request for the 16 machines (local: machine 9 of 16)",
    "train": "the running job's status (local: its processes; AWS: its exit codes)",
    "evaluate": "writing the curves (curves.png) beside the run's logs",
    "teardown": "deleting (local: replicas; AWS: terminating machines)",
}
# The stages with retries whose AWS fault is one call a try (replicate's is 9 of 16 parallel calls).
REFUSED_ONCE = {"prepare": "prepare-cluster", "provision": "provision-cluster"}
WRITE_DOCS_ENV = "IMAGENET18_WRITE_FAULT_MATRIX"
DOCS = REPO / "docs" / "fault-matrix.md"
COUNTED = (3, 5, 6)  # the table's columns of counts: when killed, left by the run, after cleanup


@dataclass(frozen=True)
class Outcome:
    backend: str
    stage: str
    death: str
    at_death: int | None  # resources of the run when it was killed (None: it failed on its own)
    state: str  # the flow run's final state
    after_run: int  # resources left when the run had ended
    after_cleanup: int

    @property
    def removed_by(self) -> str:
        if self.at_death == 0 or (self.at_death is None and (self.backend, self.stage) in MAKES_NOTHING_BEFORE):
            return "nothing was created"
        if self.after_run:
            return "the cleanup flow"
        return {"exception": "the flow's teardown", "cancel": "the on_cancellation hook / teardown",
                "sigterm": "the flow's teardown on the crash"}[self.death]


class Scenario:
    """One backend's run, armed to fail (or hang, then fail) in one stage, and how to count what it left."""

    def __init__(self, backend: str, stage: str, home: Path, dataset: Path, aws, scratch: Path):
        self.backend, self.stage, self.home, self.aws = backend, stage, home, aws
        machines = 16 if stage in MANY else 2
        if backend == "local":
            self.parameters = {"machines": machines, "dataset": str(dataset), "schedule": "cpu-tiny", "epochs": 1}
            target, after = LOCAL_GATES[stage]
            self.gate = Gate(target, after, hold=False, hit=str(scratch / "hit"), release=str(scratch / "release"))
        else:
            aws.make_snapshot(dataset.parent, description=DATASET)
            self.parameters = {"machines": machines, "backend": "aws", "instance_type": "g5.xlarge",
                               "dataset": DATASET, "schedule": "cpu-tiny", "epochs": 1, "max_hours": 1.0,
                               "aws": options().model_dump(mode="json")}

    def arm(self, hold: bool) -> Gate | None:
        """AWS: the simulator's fault rule. Local: the gate to install, in this process or a flow process."""
        if self.backend == "aws":
            service, action, code, match, after = AWS_FAULTS[self.stage]
            self.aws.add_fault(service, action, code, match=match, after=after, hold_s=300 if hold else 0)
            return None
        self.gate = dataclasses.replace(self.gate, hold=hold)
        return self.gate

    @property
    def fired(self) -> bool:
        if self.backend == "aws":
            return any(rule["fired"] for rule in self.aws.fault_counts())
        return self.gate.fired

    def release(self) -> None:
        """Hung calls end (with their errors); later calls succeed: the fault was transient."""
        if self.backend == "aws":
            self.aws.clear_faults()
        else:
            Path(self.gate.release).touch()

    def found(self, run_id: str) -> dict[str, list[str]]:
        """What of the run is in the world, asked of the world (tests/leftovers.py), never of the backend."""
        if self.backend == "local":
            return local_leftovers(self.home, run_id)
        return aws_leftovers(self.aws, run_id, self.home)

    def count(self, run_id: str) -> int:
        return sum(map(len, self.found(run_id).values()))

    def unseen_by_cleanup(self, run_id: str) -> list[str]:
        """What the world holds of the run that the backend's own inventory (what teardown and the cleanup flow
        delete) does not list. Locally the inventory's processes; the cleanup flow removes replica folders by
        their path, whatever the registry says. On AWS all but what goes with something listed: the commands on
        a machine (with the machine), the key file (with the key pair)."""
        world = self.found(run_id)
        if self.backend == "local":
            listed = {str(r.details["pid"]) for r in LocalBackend(self.home).resources(run_id) if r.kind == "process"}
            return [f"process {pid}" for pid in world.get("process", []) if pid not in listed]
        listed = {r.id for r in AwsBackend(options()).resources(run_id)}
        return [f"{kind} {thing}" for kind, things in world.items() if kind not in ("machine process", "key file")
                for thing in things if thing not in listed]


@pytest.fixture
def scenario(request, prefect_api, aws_sim, tmp_path) -> Scenario:
    """Runs that die in training train on the tiny set, long enough to be killed while the trainers run; the rest
    only get through training, on two steps."""
    backend, stage = request.node.callspec.params["backend"], request.node.callspec.params["stage"]
    if backend == "aws":
        aws_sim.reset()
    dataset = request.getfixturevalue("tiny_data" if stage == "train" else "two_step_data")
    return Scenario(backend, stage, prefect_api, dataset, aws_sim, tmp_path)


@pytest.fixture(scope="module", autouse=True)
def wandb_key():
    """Every run has a secret to forward (an SSM parameter of the run's on AWS, so the matrix checks it goes too);
    wandb itself is off, as the machines here have no internet."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_API_KEY", "matrix-not-a-key")
        env.setenv("WANDB_MODE", "disabled")
        yield


@pytest.fixture(scope="module")
def served_runner(prefect_api, aws_sim, tmp_path_factory):
    """`imagenet18 serve` on the session's Prefect API; its flow processes install the gate in GATE_ENV's file
    (tests/faultgates_site/sitecustomize.py). The scheduled cleanup is pushed out of the way (yearly)."""
    folder = tmp_path_factory.mktemp("served-runner")
    gate_file = folder / "gate.json"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), GATE_ENV: str(gate_file),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faultgates_site"), str(REPO)]),
           "IMAGENET18_CLEANUP_CRON": "0 0 1 1 *", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with background([str(BIN / "imagenet18"), "serve"], env, folder / "serve.log"):
        _wait_for(lambda: _deployment_ids(), 120, "the served deployments")
        yield gate_file


def _deployment_ids() -> list:
    with get_client(sync_client=True) as client:
        return [d.id for d in client.read_deployments() if d.name == "full"]


def _flow_run_ids() -> set[uuid.UUID]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["imagenet18"])), limit=200)
    return {run.id for run in runs}


def _state(flow_run_id: uuid.UUID):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def _settled_count(scenario: Scenario, run_id: str) -> int:
    """Resources once calls let through before the fault have landed (they run in parallel with it)."""
    counts = [scenario.count(run_id)]
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        time.sleep(0.5)
        counts.append(scenario.count(run_id))
    return counts[-1]


def _die_by_exception(scenario: Scenario) -> tuple[uuid.UUID, None]:
    gate = scenario.arm(hold=False)
    if gate is None:
        state = imagenet18(**scenario.parameters, return_state=True)
    else:
        with installed(gate):
            state = imagenet18(**scenario.parameters, return_state=True)
    assert scenario.fired, f"the fault armed in {scenario.stage} never fired: {state.message}"
    scenario.release()
    assert state.is_failed(), state.message
    assert re.search(r"injected|UnauthorizedOperation|AccessDenied|Access Denied|may not", str(state.message)), \
        state.message
    if scenario.backend == "aws" and scenario.stage in REFUSED_ONCE:
        assert _run_count(state.state_details.flow_run_id, REFUSED_ONCE[scenario.stage]) == 1, \
            "a refused permission fails its stage at once: a retry would be refused again"
    return state.state_details.flow_run_id, None


def _run_count(flow_run_id: uuid.UUID, task_name: str) -> int:
    with get_client(sync_client=True) as client:
        [task_run] = [run for run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[flow_run_id]))) if run.name.rsplit("-", 1)[0] == task_name]
    return task_run.run_count


def _die_by_cancel(scenario: Scenario, gate_file: Path) -> tuple[uuid.UUID, int]:
    gate = scenario.arm(hold=True)
    gate_file.unlink(missing_ok=True)
    if gate is not None:
        gate.save(gate_file)
    flow_run = run_deployment("imagenet18/full", parameters=scenario.parameters, timeout=0)
    _wait_for(lambda: scenario.fired, 300, f"the run to reach {scenario.stage}")
    at_death = _settled_count(scenario, str(flow_run.id))
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)  # what `prefect flow-run cancel` does
    _wait_for(lambda: not _engine_processes(flow_run.id), 120, "the runner to stop the flow process")
    scenario.release()  # the hang ends; the cancellation hook, in the runner, may be waiting on it too
    _wait_for(lambda: _state(flow_run.id).is_final(), 300, "the cancelled run to end")
    return flow_run.id, at_death


def _engine_processes(flow_run_id: uuid.UUID) -> list[int]:
    """The served flow run's own process (`python -m prefect.engine`, marked by the runner with its id)."""
    return [pid for pid in with_environment("PREFECT__FLOW_RUN_ID", str(flow_run_id))
            if "prefect.engine" in command_line(pid)]


def _die_by_signal(scenario: Scenario, sig: signal.Signals, folder: Path) -> tuple[uuid.UUID, int]:
    gate = scenario.arm(hold=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    if gate is not None:
        gate.save(folder / "gate.json")
        env[GATE_ENV] = str(folder / "gate.json")
    script = ("import json, sys; from tests.faultgates import install_from_environment; "
              "install_from_environment(); from flows.imagenet18 import imagenet18; "
              "imagenet18(**json.loads(sys.argv[1]))")
    before = _flow_run_ids()
    with open(folder / "flow.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", script, json.dumps(scenario.parameters)], env=env,
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: scenario.fired or process.poll() is not None, 300, f"the run to reach {scenario.stage}")
        assert process.poll() is None, (folder / "flow.log").read_text()[-3000:]
        [flow_run_id] = _flow_run_ids() - before
        at_death = _settled_count(scenario, str(flow_run_id))
        process.send_signal(sig)
        if sig == signal.SIGTERM:
            scenario.release()  # a hung call returns at last: the process finishes dying
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        scenario.release()
    return flow_run_id, at_death


@pytest.mark.matrix
@pytest.mark.slow
@pytest.mark.parametrize("death", DEATHS)
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_that_dies_leaves_nothing(scenario, backend, stage, death, served_runner, tmp_path):
    if death == "exception":
        flow_run_id, at_death = _die_by_exception(scenario)
    elif death == "cancel":
        flow_run_id, at_death = _die_by_cancel(scenario, served_runner)
    else:
        flow_run_id, at_death = _die_by_signal(scenario, signal.SIGTERM if death == "sigterm" else signal.SIGKILL,
                                               tmp_path)
    run_id = str(flow_run_id)
    if at_death is not None:  # killed once its fault fired (each _die_by_* waits for that)
        assert (at_death > 0) == ((backend, stage) not in MAKES_NOTHING_BEFORE), \
            f"at death in {stage} the world held {at_death} of the run's resources"
    after_run = scenario.count(run_id)
    if death == "sigkill" and (backend, stage) not in MAKES_NOTHING_BEFORE:
        assert after_run, "SIGKILL lets nothing run: what the run made is still there"
        assert scenario.unseen_by_cleanup(run_id) == [], "the cleanup flow's inventory lists all the world holds"
    elif not (death == "exception" and stage == "teardown"):  # a teardown that keeps failing leaves it to cleanup
        assert scenario.found(run_id) == {}, \
            "the run's own teardown (its finally, or the cancel/crash hook) removed everything"
    if after_run or not _state(flow_run_id).is_final():
        cleanup(stale_after_minutes=0)
    state = _state(flow_run_id)
    assert state.is_final(), f"the run is {state.name} after cleanup"
    expected = {"exception": "Failed", "cancel": "Cancelled", "sigterm": "Crashed", "sigkill": "Crashed"}[death]
    assert state.type.value.lower() == expected.lower(), (state.name, state.message)
    assert scenario.found(run_id) == {}, "nothing of the run is left"
    _compare_with_docs(Outcome(backend, stage, death, at_death, state.name, after_run, scenario.count(run_id)))


def _compare_with_docs(outcome: Outcome) -> None:
    """docs/fault-matrix.md's row for this scenario says what this run found; with IMAGENET18_WRITE_FAULT_MATRIX=1
    the row is written into it instead (under a lock: rows may run in parallel)."""
    key, row = (outcome.backend, outcome.stage, outcome.death), _row(outcome)
    if os.environ.get(WRITE_DOCS_ENV) == "1":
        with open(DOCS, "r+") as docs:
            fcntl.flock(docs, fcntl.LOCK_EX)
            text = render_rows({**_rows(docs.read()), key: row})
            docs.seek(0)
            docs.write(text)
            docs.truncate()
    committed = _rows(DOCS.read_text()).get(key)
    assert _outcome(committed) == _outcome(row), \
        f"docs/fault-matrix.md says {committed}, this run found {row}; rerun with {WRITE_DOCS_ENV}=1 to write it"


def test_the_docs_list_every_scenario_of_the_fault_matrix():
    """docs/fault-matrix.md has a row per scenario (each row's test compares its row with what it found), in the
    text the test renders."""
    committed = _rows(DOCS.read_text())
    assert set(committed) == {(b, s, d) for b in BACKENDS for s in STAGES for d in DEATHS}, "a row per scenario"
    assert render_rows(committed) == DOCS.read_text(), "the text around the rows is the test's own"


def _outcome(row: str | None) -> tuple[str, ...] | None:
    """A row's cells, its counts reduced to whether there was anything: how many processes a run has at the moment
    it is killed (a loader's workers, a command's children) varies from run to run, so the docs' counts are one
    run's; what must not change is the state, and whether anything was made, left by the run, or left at all."""
    if row is None:
        return None
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    return tuple(cell if column not in COUNTED else str(cell not in ("0", "-")) for column, cell in enumerate(cells))


def _rows(text: str) -> dict[tuple[str, str, str], str]:
    """(backend, stage, death) -> its table row."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) > 3 and cells[0] in BACKENDS:
            rows[(cells[0], cells[1], cells[2])] = line
    return rows


def _row(o: Outcome) -> str:
    return (f"| {o.backend} | {o.stage} | {o.death} | {'-' if o.at_death is None else o.at_death} | {o.state} | "
            f"{o.after_run} | {o.after_cleanup} | {o.removed_by} |")


def render_rows(rows: dict[tuple[str, str, str], str]) -> str:
    table = "\n".join(rows[key] for key in sorted(rows, key=lambda k: (
        BACKENDS.index(k[0]), STAGES.index(k[1]), DEATHS.index(k[2]))))
    where = "\n".join(f"- **{stage}**: {WHERE[stage]}" for stage in STAGES)
    return f"""# Fault matrix

Checked by `pytest tests/test_fault_matrix.py`; written by it with IMAGENET18_WRITE_FAULT_MATRIX=1. Do not edit.
Each row is a run that failed in one stage and died one way; every one ended with nothing of it left.
Local runs fail through an injected error (tests/faultgates.py); AWS runs through the simulator's error
answers, and hang (for cancel, SIGTERM and SIGKILL) in the call that fails until the run is killed.

Where each stage fails (validate, replicate, prepare and provision with 16 machines; the rest with 2, training
on CPU):
{where}

How the run dies: **exception** (the stage fails), **cancel** (`prefect flow-run cancel` of a run of the served
`imagenet18/full`), **sigterm** or **sigkill** (the flow process). After SIGKILL nothing of the run runs again:
the cleanup flow (scheduled; run at once here) marks the run Crashed because its heartbeats stopped, and
deletes what it left by tag.

Resources are counted by asking the world, not the backend (tests/leftovers.py): locally the run's processes
(found in /proc by the run's id, whatever their home), replica folders and files, registry records and claims;
on AWS every simulated service by the run's tag (instances, spot requests, Elastic IPs, volumes, snapshots,
network pieces, security groups, key pairs, placement groups, EFS, IAM roles and instance profiles, SSM
parameters), the commands still running on its machines and its key file. Counted when the run was killed, when
its flow run ended, and after the cleanup flow. Processes are counted one by one, so a row's counts vary by a few
from run to run (the test holds each row to its state and to whether anything was there); these are one full
run's.

| backend | stage | death | when killed | final state | left by the run | after cleanup | removed by |
| --- | --- | --- | --- | --- | --- | --- | --- |
{table}
"""
