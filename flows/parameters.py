"""The flow's parameters as one pydantic model: validated before anything is created."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.backends.aws.catalog import DEFAULT_INSTANCE_TYPE as AWS_DEFAULT_INSTANCE_TYPE
from tasks.backends.aws.options import AwsOptions
from tasks.backends.local import default_home

MachineCount = Literal[1, 2, 4, 8, 16]
BackendName = Literal["local", "aws"]
DEFAULT_INSTANCE_TYPE = {"local": "local", "aws": AWS_DEFAULT_INSTANCE_TYPE}
DEFAULT_DATASET = {"aws": "imagenet18-backup"}  # the seed's snapshot description; locally, the demo dataset


class RunParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    machines: MachineCount = 2
    backend: BackendName = "local"
    spot: bool = False
    instance_type: str | None = Field(None, description=f"default: local, or {AWS_DEFAULT_INSTANCE_TYPE} on aws")
    dataset: str | None = Field(None, description="folder or fsspec URL, or on aws a snapshot id or name; "
                                "default: the demo dataset, or on aws the snapshot named imagenet18-backup")
    schedule: str | None = Field(None, description="name or .toml file; default: on aws seed-N (the seed's), "
                                 "locally cpu-demo for the demo dataset and auto (derived from the data) for another")
    target: float | None = Field(None, gt=0, le=100, description="default: the schedule's (93% top-5 for the seed)")
    target_metric: Literal["top1", "top5"] | None = None
    epochs: int | None = Field(None, ge=1, description="stop after this many epochs (default: the schedule's)")
    compile: bool = Field(False, description="torch.compile the training step: on one H100 1.4x the img/s at 224 px "
                          "after about a minute of compiling per image size (BENCHMARKS.md); slower on CPUs")
    budget_usd: float | None = Field(None, ge=0, description="refuse to start when the plan costs more")
    max_hours: float = Field(2.0, gt=0, le=72, description="machines terminate themselves after this")
    dry_run: bool = False
    restarts: int = Field(2, ge=0, le=10, description="machines lost mid-training: replace them and resume from "
                          "the last checkpoint at most this often")
    hang_minutes: float = Field(10.0, gt=0, le=240, description="a node whose heartbeat has not changed for this "
                                "long is hung: stop the job and resume from the last checkpoint")
    aws: AwsOptions | None = Field(None, description="region, zone, network, disks, bucket (backend='aws')")

    @property
    def resolved_instance_type(self) -> str:
        return self.instance_type or DEFAULT_INSTANCE_TYPE[self.backend]

    @property
    def resolved_dataset(self) -> str:
        return self.dataset or DEFAULT_DATASET.get(self.backend) or str(demo_dataset_root())

    @property
    def resolved_schedule(self) -> str:
        if self.schedule:
            return self.schedule
        if self.backend != "local":
            return f"seed-{self.machines}"
        return "auto" if self.dataset else "cpu-demo"


def demo_dataset_root() -> Path:
    return default_home() / "demo" / "imagenet18-demo"
