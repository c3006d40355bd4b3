"""The network and its optimiser: torchvision ResNets with the seed's bn0 init and no BN weight decay."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, ResNet

from trainer.schedule import ARCHITECTURES

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
FC_INIT_STD = 0.01


def _resnet10(**kwargs) -> ResNet:
    """One BasicBlock per stage: half of resnet18's work, for the CPU demo and tests."""
    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


def build_model(arch: str, num_classes: int, init_bn0: bool = True) -> nn.Module:
    """A randomly initialised ResNet (never downloads weights)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    builder = _resnet10 if arch == "resnet10" else getattr(resnet, arch)
    # zero_init_residual zeroes the gamma of each residual block's last BN: the seed's --init-bn0.
    model = builder(num_classes=num_classes, zero_init_residual=init_bn0)
    nn.init.normal_(model.fc.weight, std=FC_INIT_STD)
    nn.init.zeros_(model.fc.bias)
    return model


def build_optimizer(model: nn.Module, bn_weight_decay: bool = False) -> torch.optim.SGD:
    """SGD, momentum 0.9, weight decay 1e-4; BatchNorm weights and biases get none (the seed's --no-bn-wd).
    Fused: the whole step in one kernel (GPU) or one loop (CPU), not a few per parameter."""
    bn_params, other_params = [], []
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        (bn_params if is_bn and not bn_weight_decay else other_params).extend(params)
    groups = [{"params": other_params, "weight_decay": WEIGHT_DECAY},
              {"params": bn_params, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=0.0, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, fused=True)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # reduce-overhead: CUDA graphs


def replays_cuda_graphs(mode: str) -> bool:
    """Whether torch.compile's `mode` replays the step as CUDA graphs (the loop then marks each step begun)."""
    return mode in ("reduce-overhead", "max-autotune")


def training_module(model: nn.Module, distributed: bool, compile: bool, phases: int,
                    mode: str = "default") -> nn.Module:
    """What the training loop calls: `model` under DDP when distributed, torch.compile'd when asked (the
    compiled graph then holds DDP's hooks; evaluation and checkpoints keep using `model` itself).

    Static shapes: each phase's image size and batch compile a graph of their own, so a schedule of `phases`
    phases makes at most that many. Left to guess, dynamo turns the second size into a dynamic-shape graph,
    which compiled 3x longer and ran slower on an H100. Past its recompile limit (8) dynamo stops compiling
    and runs every new shape eagerly, so the limit is raised to the schedule's phases."""
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    if not compile:
        return wrapped
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, phases)
    return torch.compile(wrapped, dynamic=False, mode=mode)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
