"""The instance catalogue against the torch build the machines install (a type is offered only where that
build has kernels for its GPU), and the vCPU quota each type counts against."""

import pytest
import torch

from tasks.backends.aws import catalog, quotas


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


@pytest.mark.parametrize("instance_type,spot,code", [
    *((t, False, "L-417A185B") for t in ("p3dn.24xlarge", "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge",
                                         "p5en.48xlarge", "p6-b200.48xlarge")),
    *((t, True, "L-7212CCBC") for t in ("p3.16xlarge", "p4d.24xlarge", "p6-b200.48xlarge")),
    *((t, True, "L-C4BD4855") for t in ("p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge")),
    *((t, False, "L-DB2E81BA") for t in ("g5.xlarge", "g5g.xlarge", "g6.xlarge", "gr6.4xlarge", "vt1.3xlarge")),
    *((t, True, "L-3819A6DF") for t in ("g5.xlarge", "vt1.3xlarge")),
    *((t, False, "L-1216C47A") for t in ("c6i.4xlarge", "m7i-flex.large", "r7iz.large", "t3.micro", "a1.large",
                                         "d3en.xlarge", "h1.2xlarge", "i4i.large", "im4gn.large", "is4gen.large",
                                         "z1d.large", "c7gn.large")),
    *((t, spot, None) for t in ("inf2.xlarge", "trn1.2xlarge", "dl1.24xlarge", "hpc7g.4xlarge", "x2idn.16xlarge",
                                "u-6tb1.56xlarge", "f1.2xlarge", "mac1.metal") for spot in (False, True)),
    ("c6i.4xlarge", True, None),  # the Standard spot quota: no spot machine here is standard
])
def test_each_instance_type_counts_against_its_buckets_quota(instance_type, spot, code):
    """EC2's vCPU quota buckets: Standard (A, C, D, H, I, M, R, T, Z), G and VT, P, spot P5 apart; other families
    (Inferentia, Trainium, DL, HPC, X, high memory, F, Mac) have quotas of their own, not checked here."""
    quota = quotas.quota_for(instance_type, spot)
    assert (quota.code if quota else None) == code
