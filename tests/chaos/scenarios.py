"""Scenarios drawn from a seed: for each run, its backend, the kind of fault, the point it strikes, and so what
the run must do: complete, fail with that fault as its cause, or (its flow process killed) be marked Crashed and
swept by the cleanup flow.

The same seed draws the same scenarios; the moments faults land at, among runs sharing the machine, vary."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from tests.faultgates import STAGE_GATES

BACKENDS = ("local", "aws")
KINDS = ("error", "transient", "hang", "lost", "hung", "kill")
# Their tasks retry: a fault that passes is survived.
RETRIED_STAGES = ("authorize", "replicate", "prepare", "provision")
KILL_STAGES = ("authorize", "replicate", "prepare", "provision", "train", "evaluate", "teardown")
TRAINING = "machine 1"  # what lost and hung machines strike, after the first epoch
FLOW_PROCESS = "flow process"  # what a kill in training strikes


@dataclass(frozen=True)
class AwsPoint:
    """A call of the run's (the simulator tells them by the run's id) and the error it gets."""
    service: str
    action: str
    code: str
    key: str | None = None  # S3: a regular expression of the key, where "{run8}" is the run id's start
    times: int | None = None  # None: every matching call

    def __str__(self) -> str:
        return f"{self.service} {self.action}"


CURVES_KEY = r".*-{run8}/curves\.png"
# Errors no retry mends, where each stage makes its calls.
AWS_ERRORS = {
    "validate": (AwsPoint("ec2", "DescribeInstances", "UnauthorizedOperation", times=1),),  # "has the run anything?"
    "replicate": (AwsPoint("ec2", "CreateVolume", "VolumeLimitExceeded"),),
    "authorize": (AwsPoint("iam", "CreateRole", "AccessDenied"),
                  AwsPoint("iam", "CreateInstanceProfile", "AccessDenied")),
    "prepare": (AwsPoint("ec2", "CreateVpc", "VpcLimitExceeded"),
                AwsPoint("efs", "CreateFileSystem", "FileSystemLimitExceeded"),
                AwsPoint("ec2", "CreateSecurityGroup", "UnauthorizedOperation")),
    "provision": (AwsPoint("ec2", "RunInstances", "UnauthorizedOperation"),
                  AwsPoint("efs", "CreateMountTarget", "NetworkInterfaceLimitExceeded")),
    "train": (AwsPoint("ssm", "SendCommand", "AccessDeniedException"),),
    "evaluate": (AwsPoint("s3", "PutObject", "AccessDenied", CURVES_KEY),),
    "teardown": (AwsPoint("ec2", "TerminateInstances", "UnauthorizedOperation"),
                 AwsPoint("ec2", "DeleteVolume", "UnauthorizedOperation"),
                 AwsPoint("iam", "DeleteRole", "AccessDenied"),
                 AwsPoint("ec2", "DeleteVpc", "UnauthorizedOperation")),
}
# Calls that hang, then answer with a server error once: botocore's retries or the stage's own mend it.
AWS_HANGS = {
    "replicate": (AwsPoint("ec2", "CreateVolume", "ServiceUnavailable", times=1),),
    "authorize": (AwsPoint("iam", "CreateRole", "ServiceFailure", times=1),),
    "prepare": (AwsPoint("ec2", "CreateVpc", "ServiceUnavailable", times=1),
                AwsPoint("efs", "CreateFileSystem", "InternalServerError", times=1)),
    "provision": (AwsPoint("ec2", "RunInstances", "InternalError", times=1),),
}
# Calls that hang until the run's flow process is killed.
AWS_HOLDS = {
    "authorize": (AwsPoint("iam", "CreateInstanceProfile", "ServiceUnavailable"),),  # once the role is made
    "replicate": (AwsPoint("ec2", "CreateVolume", "ServiceUnavailable"),),
    "prepare": (AwsPoint("efs", "CreateFileSystem", "InternalServerError"),
                AwsPoint("ec2", "CreateSecurityGroup", "ServiceUnavailable")),
    "provision": (AwsPoint("ec2", "RunInstances", "InternalError"),),
    "evaluate": (AwsPoint("s3", "PutObject", "InternalError", CURVES_KEY),),
    "teardown": (AwsPoint("ec2", "TerminateInstances", "ServiceUnavailable"),),
}
# Every call of the run's refused now and then, as AWS throttles a busy account.
THROTTLING = (AwsPoint("ec2", "*", "RequestLimitExceeded"), AwsPoint("iam", "*", "Throttling"),
              AwsPoint("efs", "*", "ThrottlingException"), AwsPoint("ssm", "*", "ThrottlingException"))
# A side path (the relay's reads of the machines' metrics) failing for a while: training goes on.
SIDE_PATH = AwsPoint("s3", "GetObject", "AccessDenied", r".*-{run8}/metrics\.jsonl", times=3)


@dataclass(frozen=True)
class Scenario:
    index: int
    backend: str
    kind: str  # one of KINDS
    stage: str  # where it strikes ("all": throttling)
    target: str  # what it strikes: a local function ("module:attribute"), an AWS call, TRAINING or FLOW_PROCESS
    rules: tuple[AwsPoint, ...] = ()  # the simulator's fault rules it arms
    after: int = 0  # matching calls let through first
    probability: float = 1.0  # the share of matching calls that fail
    delay_s: float = 0.0  # a hang's length; for faults in training, the pause after the first epoch ended
    restarts: int = 2
    spot: bool = False
    wandb_key: bool = False  # a dummy key: the run keeps it in an SSM parameter, which its teardown deletes

    @property
    def name(self) -> str:
        return f"#{self.index} {self.backend} {self.kind} at {self.stage} ({self.target})"

    @property
    def label(self) -> str:
        """The simulator's label of this scenario's fault rules."""
        return f"chaos-{self.index}"

    @property
    def message(self) -> str:
        """The injected AWS errors' message."""
        return f"injected by chaos scenario {self.index}"

    @property
    def expected(self) -> str:
        """The flow run's final state."""
        if self.kind == "kill":
            return "Crashed"
        if self.kind == "error" or (self.kind in ("lost", "hung") and self.restarts == 0):
            return "Failed"
        return "Completed"

    @property
    def strikes_training(self) -> bool:
        return self.target in (TRAINING, FLOW_PROCESS) or SIDE_PATH in self.rules

    @property
    def needs_cleanup(self) -> bool:
        """The run cannot remove all it made: its flow process is killed, or its teardown keeps failing."""
        return self.kind == "kill" or (self.kind == "error" and self.stage == "teardown")

    def parameters(self, dataset: str, aws_options: dict) -> dict:
        common = {"machines": 2, "dataset": dataset, "schedule": "cpu-tiny", "restarts": self.restarts,
                  "epochs": 2 if self.strikes_training else 1,  # struck after the first epoch, it trains on
                  "hang_minutes": 0.5 if self.kind == "hung" else 10.0}
        if self.backend == "local":
            return common
        return {**common, "backend": "aws", "instance_type": "g5.xlarge", "max_hours": 1.0, "spot": self.spot,
                "aws": aws_options}


def draw(seed: int, runs: int) -> list[Scenario]:
    rng = random.Random(seed)
    return [_draw_one(rng, index) for index in range(runs)]


def _draw_one(rng: random.Random, index: int) -> Scenario:
    backend, kind = rng.choice(BACKENDS), rng.choice(KINDS)
    scenario = (_draw_local if backend == "local" else _draw_aws)(rng, index, kind)
    if kind in ("lost", "hung"):
        scenario = dataclasses.replace(scenario, restarts=rng.choice((0, 1)))
    if scenario.target in (TRAINING, FLOW_PROCESS):
        scenario = dataclasses.replace(scenario, delay_s=round(rng.uniform(0, 3), 1))
    return scenario


def _draw_local(rng: random.Random, index: int, kind: str) -> Scenario:
    if kind in ("lost", "hung"):
        return Scenario(index, "local", kind, "train", TRAINING)
    stage = rng.choice({"error": tuple(STAGE_GATES), "transient": (*RETRIED_STAGES, "teardown"),
                        "hang": RETRIED_STAGES, "kill": KILL_STAGES}[kind])
    if kind == "kill" and stage == "train":
        return Scenario(index, "local", kind, stage, FLOW_PROCESS)
    return Scenario(index, "local", kind, stage, STAGE_GATES[stage],
                    after=rng.randrange(2) if stage in ("replicate", "provision") else 0,  # one of two, or both
                    delay_s=round(rng.uniform(2, 8), 1) if kind == "hang" else 0.0)


def _draw_aws(rng: random.Random, index: int, kind: str) -> Scenario:
    extras = {"spot": rng.random() < 0.5, "wandb_key": rng.random() < 0.5}
    if kind in ("lost", "hung"):
        return Scenario(index, "aws", kind, "train", TRAINING, **extras)
    if kind == "transient" and rng.random() < 0.5:
        return Scenario(index, "aws", kind, "train", str(SIDE_PATH), (SIDE_PATH,), **extras)
    if kind == "transient":
        return Scenario(index, "aws", kind, "all", "every call", THROTTLING,
                        probability=round(rng.uniform(0.1, 0.35), 2), **extras)
    table = {"error": AWS_ERRORS, "hang": AWS_HANGS, "kill": AWS_HOLDS}[kind]
    stage = rng.choice(KILL_STAGES if kind == "kill" else tuple(table))
    if stage == "train" and kind == "kill":
        return Scenario(index, "aws", kind, stage, FLOW_PROCESS, **extras)
    point = rng.choice(table[stage])
    return Scenario(index, "aws", kind, stage, str(point), (point,),
                    after=rng.randrange(2) if point.action in ("CreateVolume", "RunInstances") else 0,
                    delay_s=round(rng.uniform(2, 8), 1) if kind == "hang" else 0.0, **extras)
