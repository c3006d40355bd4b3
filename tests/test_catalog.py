"""The instance catalogue against the torch build the machines install: a type is offered only where that
build has kernels for its GPU."""

import pytest
import torch

from tasks.backends.aws import catalog


@pytest.mark.skipif(not torch.version.cuda, reason="a CPU build of torch lists no CUDA architectures")
def test_the_recorded_architectures_are_the_installed_builds():
    """pyproject.toml pins the build the machines install; this machine installs the same pin."""
    assert catalog.TORCH_BUILD == f"torch {torch.__version__}"
    listed = [flag.removeprefix("sm_") for flag in torch._C._cuda_getArchFlags().split()]
    assert all(flag.isdigit() for flag in listed), "a PTX (compute_XX) entry would let newer GPUs JIT the kernels"
    assert catalog.TORCH_CUDA_ARCHS == tuple((int(flag[:-1]), int(flag[-1])) for flag in listed)


@pytest.mark.parametrize("name,runs", [
    ("p3.16xlarge", False), ("p3dn.24xlarge", False),  # V100, sm_70: below the build's lowest, sm_75
    ("p4d.24xlarge", True), ("p5.48xlarge", True), ("g5.xlarge", True),
    ("g6.xlarge", True),  # L4, sm_89: through the build's sm_86 kernels
])
def test_a_type_runs_the_build_where_it_has_kernels_of_its_gpus_major_version(name, runs):
    assert catalog.runs_the_build(catalog.INSTANCE_TYPES[name]) is runs


def test_the_default_type_runs_the_build():
    catalog.runnable_instance_type(catalog.DEFAULT_INSTANCE_TYPE)


def test_each_types_efa_interfaces_are_what_ec2_says_it_takes(aws):
    """The catalogue's EFA count per type against EC2's DescribeInstanceTypes (EfaInfo.MaximumEfaInterfaces)."""
    found = aws.client("ec2").describe_instance_types(InstanceTypes=list(catalog.INSTANCE_TYPES))["InstanceTypes"]
    said = {t["InstanceType"]: t["NetworkInfo"].get("EfaInfo", {}).get("MaximumEfaInterfaces", 0)
            if t["NetworkInfo"].get("EfaSupported") else 0 for t in found}
    assert {name: kind.efa_interfaces for name, kind in catalog.INSTANCE_TYPES.items()} == said
    assert said["p4d.24xlarge"] == 4 and said["p5.48xlarge"] == 32 and said["g5.xlarge"] == 0
