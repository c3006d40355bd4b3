"""What GPU each instance type has, and whether the machines' torch build runs on it: a torch build carries
kernels (sm_XY) for some GPU architectures, and a GPU runs a kernel built for its own major version and a minor no
higher than its own, or PTX (compute_XY) for its version or older, which the driver compiles
(https://docs.nvidia.com/cuda/cuda-programming-guide/01-introduction/cuda-platform.html). Elsewhere torch stops
at its first kernel, as below. The simulator's own facts: the product's catalogue is what they check."""

import functools
import re
import subprocess
import sys

# Instance family -> (GPU, compute capability), from AWS's accelerated computing instance pages and NVIDIA's
# compute capability table.
GPUS = {
    "p3": ("Tesla V100-SXM2-16GB", (7, 0)),
    "p3dn": ("Tesla V100-SXM2-32GB", (7, 0)),
    "g4dn": ("Tesla T4", (7, 5)),
    "p4d": ("NVIDIA A100-SXM4-40GB", (8, 0)),
    "g5": ("NVIDIA A10G", (8, 6)),
    "g6": ("NVIDIA L4", (8, 9)),
    "p5": ("NVIDIA H100 80GB HBM3", (9, 0)),
}


def gpu(instance_type: str) -> tuple[str, tuple[int, int]] | None:
    return GPUS.get(instance_type.split(".")[0])


@functools.cache
def arch_flags() -> str:
    """The arch flags of the torch the machines install (this interpreter's: the machines' venv maps to it), read
    once in a subprocess since importing torch takes seconds; empty for a CPU-only build or no torch."""
    read = "import torch; print(getattr(torch._C, '_cuda_getArchFlags', lambda: '')() or '')"
    found = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True)
    flags = found.stdout.strip() if found.returncode == 0 else ""
    if not flags:
        print("awssim: the machines' torch has no CUDA kernels; every GPU is taken to run it", file=sys.stderr)
    return flags


def _runs(flags: str, capability: tuple[int, int]) -> bool:
    major, minor = capability
    for kind, digits in re.findall(r"(sm|compute)_(\d+)", flags):
        built = (int(digits[:-1]), int(digits[-1]))
        if (kind == "sm" and built[0] == major and built[1] <= minor) or (kind == "compute" and built <= capability):
            return True
    return False


def no_kernel_error(instance_type: str, flags: str | None = None) -> str | None:
    """What torch writes as it fails on this type's GPU with a build of these arch flags (the machines' build's by
    default); None where it runs, the type has no GPU the simulator knows, or the build has no CUDA."""
    known = gpu(instance_type)
    if known is None:
        return None
    flags = arch_flags() if flags is None else flags
    if not flags or _runs(flags, known[1]):
        return None
    name, (major, minor) = known
    return (f"UserWarning: {name} with CUDA capability sm_{major}{minor} is not compatible with the current PyTorch "
            f"installation.\nThe current PyTorch install supports CUDA capabilities {flags}.\n"
            "RuntimeError: CUDA error: no kernel image is available for execution on the device\n")
