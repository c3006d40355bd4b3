"""A run's options, declared once: this pydantic model validates them before anything is created, and the CLI's
options, the flow's keyword parameters (the form in Prefect's UI) and the trainer's flags are derived from it.
Adding an option is one field here plus its use."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tasks.backends import BACKENDS, backend_class
from tasks.backends.aws.catalog import DEFAULT_INSTANCE_TYPE as AWS_DEFAULT_INSTANCE_TYPE
from tasks.backends.aws.options import AwsOptions

MachineCount = Literal[1, 2, 4, 8, 16]
# A replica pool's size and life (flows/replicate.py).
ReplicaCount = Annotated[int, Field(ge=1, le=64, description="replicas to keep ready for runs")]
KeepHours = Annotated[float, Field(gt=0, le=720, description="the cleanup flow deletes the replicas after this, "
                                   "those in use when their runs end")]
BackendName = Literal[BACKENDS]
Switch = Literal["auto", "on", "off"]  # auto: the plan decides; the CLI's --OPTION and --no-OPTION give on and off


class PassedToTrainer:
    """Marks an option the trainer takes too, as the same flag (`--target-metric` for target_metric)."""


TRAINER = PassedToTrainer()


class RunParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    machines: MachineCount = Field(2, description="machines, a torchrun node each (the CLI's default: 16 on aws, "
                                   "the seed's)")
    backend: BackendName = Field("local", description="local: processes on this machine; aws: EC2 machines")
    spot: bool = Field(False, description="spot instances (cloud backends)")
    instance_type: str | None = Field(None, description=f"default: local, or {AWS_DEFAULT_INSTANCE_TYPE} on aws")
    dataset: str | None = Field(None, description="folder or fsspec URL, or on aws a snapshot id or name; "
                                "default: the demo dataset, or on aws the snapshot named imagenet18-backup")
    schedule: str | None = Field(None, description="name or .toml file; default: on aws seed-N (the seed's), "
                                 "locally cpu-demo for the demo dataset and auto (derived from the data) for another")
    target: Annotated[float | None, TRAINER] = Field(None, gt=0, le=100, description="accuracy % to report the "
                                                     "time to (default: the schedule's, 93% top-5 for the seed)")
    target_metric: Annotated[Literal["top1", "top5"] | None, TRAINER] = Field(
        None, description="the metric the target is of (default: the schedule's)")
    epochs: Annotated[int | None, TRAINER] = Field(None, ge=1, description="stop after this many epochs "
                                                   "(default: the schedule's)")
    seed: Annotated[int | None, TRAINER] = Field(None, ge=0, description="the trainer's random seed: the weights' "
                                                 "start and the data's order (default 0); runs with other seeds show "
                                                 "the spread of the results")
    compile: Switch = Field("auto", description="torch.compile the training step: on one H100 1.4x the img/s at "
                            "224 px after about a minute of compiling per image size and batch, slower on CPUs "
                            "(BENCHMARKS.md); auto: on where the plan estimates that the training minutes it saves "
                            "outweigh the compiling")
    budget_usd: float | None = Field(None, ge=0, description="refuse to start when the plan costs more")
    max_hours: float = Field(2.0, gt=0, le=72, description="machines terminate themselves after this")
    dry_run: bool = Field(False, description="validate and price the run; create nothing")
    restarts: int = Field(2, ge=0, le=10, description="machines lost mid-training: replace them and resume from "
                          "the last checkpoint at most this often")
    hang_minutes: float = Field(10.0, gt=0, le=240, description="a node whose heartbeat has not changed for this "
                                "long is hung: stop the job and resume from the last checkpoint")
    aws: AwsOptions | None = Field(None, description="region, zone, network, disks, bucket (backend='aws')")

    @property
    def resolved_instance_type(self) -> str:
        return self.instance_type or backend_class(self.backend).default_instance_type

    @property
    def resolved_dataset(self) -> str:
        backend = backend_class(self.backend)
        return backend.dataset_location(self.dataset or backend.default_dataset())

    @property
    def resolved_schedule(self) -> str:
        backend = backend_class(self.backend)
        return backend.schedule_location(self.schedule or backend.default_schedule(self.machines,
                                                                                    self.dataset is not None))

    def trainer_flags(self) -> list[str]:
        """The options marked TRAINER that are set, as the trainer's command-line flags."""
        flags: list[str] = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if TRAINER not in field.metadata or value is None or value is False:
                continue
            flag = f"--{name.replace('_', '-')}"
            flags += [flag] if value is True else [flag, str(value)]
        return flags


Function = TypeVar("Function", bound=Callable)


def with_run_parameters(function: Function) -> Function:
    """Gives `function(**options)` the model's fields as its keyword parameters, with their types and
    constraints, and their descriptions as its docstring's Args: Prefect reads a flow's signature and docstring
    for its parameter form and schema, and validates a run's parameters against the signature."""
    fields = RunParameters.model_fields
    function.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                           annotation=Annotated[(field.annotation, *field.metadata)] if field.metadata
                           else field.annotation)
         for name, field in fields.items()],
        return_annotation=inspect.signature(function).return_annotation)
    function.__doc__ = f"{inspect.getdoc(function)}\n\nArgs:\n" + "".join(
        f"    {name}: {field.description}\n" for name, field in fields.items())
    return function
