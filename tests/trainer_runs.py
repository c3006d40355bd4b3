"""Run the trainer the way users do: `python -m trainer train ...`, alone or as torchrun nodes."""

import os
import subprocess
import sys
from pathlib import Path

from tests.support import free_port


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def train_command(data: Path, logdir: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", str(data), "--schedule", "cpu-tiny",
            "--logdir", str(logdir), "--print-freq", "2", "--heartbeat-seconds", "1", "--cache-dir",
            str(logdir.parent / "cache"), *options]


def node_command(node: int, nodes: int, port: int, data: Path, logdir: Path, *options: str) -> list[str]:
    """One torchrun node of a multi-node run on 127.0.0.1 (one process each, gloo)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={node}",
                "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                f"--log-dir={logdir.parent / 'torchrun'}", "-m"]
    return torchrun + train_command(data, logdir, "--threads", "1", *options)[2:]


def run_two_nodes(data: Path, logdir: Path, *options: str, timeout: float = 300, **env: str) -> list[str]:
    """Two torchrun nodes on 127.0.0.1 until both end; asserts both exited 0 and returns each one's output."""
    port = free_port()
    nodes = [subprocess.Popen(node_command(i, 2, port, data, logdir, *options), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=trainer_env(**env)) for i in range(2)]
    outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return outputs


def run(command: list[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=trainer_env(**env))
