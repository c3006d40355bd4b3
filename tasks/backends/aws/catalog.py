"""The GPU instance types a run can use, with what the cost plan needs. Prices are us-east-1 on-demand list
prices in USD/hour (AWS price list, 2025): the smoke test's cheapest-first order, and the plan's price where the
region's (prices.py) cannot be asked; spot prices come from the region's spot price history when the API
answers, else the on-demand price is the plan's upper bound."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu: str
    compute_capability: tuple[int, int]  # the GPU's CUDA architecture: (7, 0) is sm_70
    on_demand_usd: float
    vcpus: int  # what EC2 counts against the account's quota
    efa_interfaces: int  # EFA devices it takes, one per network card: EC2's EfaInfo.MaximumEfaInterfaces


INSTANCE_TYPES = {t.name: t for t in (
    InstanceType("p3.16xlarge", 8, "V100 16 GB", (7, 0), 24.48, 64, 0),   # the seed's
    InstanceType("p3dn.24xlarge", 8, "V100 32 GB", (7, 0), 31.212, 96, 1),
    InstanceType("p4d.24xlarge", 8, "A100 40 GB", (8, 0), 21.958, 96, 4),
    InstanceType("p5.48xlarge", 8, "H100 80 GB", (9, 0), 55.04, 192, 32),
    InstanceType("g5.xlarge", 1, "A10G 24 GB", (8, 6), 1.006, 4, 0),     # cheap trials
    InstanceType("g6.xlarge", 1, "L4 24 GB", (8, 9), 0.805, 4, 0),
)}
# The default: of the 8-GPU types the torch build runs, the one with the lowest price per training image (an
# H100 trains ResNet-50 about twice as fast as an A100 and costs 2.5 times as much) and the widest offering.
DEFAULT_INSTANCE_TYPE = "p4d.24xlarge"

# The GPU architectures the torch build the machines install (pyproject.toml's pin) has kernels for, as
# torch._C._cuda_getArchFlags() lists them; tests/test_catalog.py checks this against the installed build. It
# carries no PTX, so a GPU runs it only through a kernel of its own major version and a minor no higher than
# its own (CUDA's binary compatibility): sm_86 kernels run on sm_89, nothing here runs on sm_70.
TORCH_BUILD = "torch 2.14.1+cu130"
TORCH_CUDA_ARCHS = ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))

# EBS and EFS, per month (730 hours).
HOURS_PER_MONTH = 730
VOLUME_GB_MONTH = {"io1": 0.125, "io2": 0.125, "gp3": 0.08}
PROVISIONED_IOPS_MONTH = {"io1": 0.065, "io2": 0.065, "gp3": 0.005}  # gp3: above its free 3,000
GP3_FREE_IOPS, GP3_FREE_MBPS, GP3_MBPS_MONTH = 3000, 125, 0.04
ROOT_VOLUME_GB = 200
EFS_GB_MONTH = 0.30
EFS_EXPECTED_GB = 20  # logs, events and the EFS copy of checkpoints of one run


def instance_type(name: str) -> InstanceType:
    try:
        return INSTANCE_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown instance type {name!r}: choose one of {', '.join(INSTANCE_TYPES)}") from None


def runs_the_build(kind: InstanceType) -> bool:
    major, minor = kind.compute_capability
    return any(arch_major == major and arch_minor <= minor for arch_major, arch_minor in TORCH_CUDA_ARCHS)


def runnable_instance_type(name: str) -> InstanceType:
    """The catalogue's type, if the machines' torch build has kernels for its GPU; ValueError says why not."""
    working = ", ".join(t.name for t in INSTANCE_TYPES.values() if runs_the_build(t))
    if name not in INSTANCE_TYPES:
        raise ValueError(f"unknown instance type {name!r}: choose one of {working}")
    kind = INSTANCE_TYPES[name]
    if not runs_the_build(kind):
        major, minor = kind.compute_capability
        lowest = ".".join(map(str, min(TORCH_CUDA_ARCHS)))
        raise ValueError(f"{name} has {kind.gpu.split()[0]} GPUs (compute capability {major}.{minor}), which "
                         f"{TORCH_BUILD}, the machines' build, has no kernels for (it needs {lowest} or newer): "
                         f"choose one of {working}")
    return kind


def runnable_by_price() -> list[InstanceType]:
    """The types the machines' torch build runs, cheapest first: a smoke test takes the first its region offers."""
    return sorted((t for t in INSTANCE_TYPES.values() if runs_the_build(t)), key=lambda t: t.on_demand_usd)


def volume_hourly_usd(volume_type: str, size_gb: int, iops: int, throughput_mbps: int) -> float:
    monthly = VOLUME_GB_MONTH[volume_type] * size_gb
    if volume_type == "gp3":
        monthly += PROVISIONED_IOPS_MONTH["gp3"] * max(0, iops - GP3_FREE_IOPS)
        monthly += GP3_MBPS_MONTH * max(0, throughput_mbps - GP3_FREE_MBPS)
    else:
        monthly += PROVISIONED_IOPS_MONTH[volume_type] * iops
    return monthly / HOURS_PER_MONTH
