"""The pipeline's stages as Prefect tasks: each a thin, logged call into a backend."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time

import fsspec

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.parameters import RunParameters
from tasks.backends import backend_for
from tasks.backends.base import Cluster, Resource
from tasks.planning import RunPlan, plan_run

TRAIN_JOB = "train"
POLL_SECONDS = 2.0


@task(name="validate-and-plan", cache_policy=NO_CACHE)
def validate_and_plan(params: RunParameters, run_id: str, run_name: str) -> RunPlan:
    """Everything that can be checked is checked here, before anything is created or spent."""
    plan = plan_run(params, run_id, run_name)
    logger = get_run_logger()
    for item in plan.cost.items:
        logger.info("plan: %d x %s at $%.2f/h", item.count, item.what, item.hourly_usd)
    logger.info("plan: %s, %d epochs of %s on %d machine(s); up to %.1f h, $%.2f/h, at most $%.2f",
                params.backend, plan.epochs, plan.schedule, params.machines, params.max_hours,
                plan.cost.hourly_usd, plan.cost.total_usd)
    return plan


# Safe to retry: replicas that exist are found by tag and reused.
@task(name="replicate-dataset", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def replicate_dataset(plan: RunPlan) -> list[Resource]:
    replicas = backend_for(plan.params).replicate(plan.spec, plan.dataset, plan.spec.machines)
    get_run_logger().info("%d dataset replicas ready: %s", len(replicas), ", ".join(r.id for r in replicas))
    return replicas


# Safe to retry: provisioning creates only what the run's tags do not already show.
@task(name="provision-cluster", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def provision_cluster(plan: RunPlan, replicas: list[Resource]) -> Cluster:
    cluster = backend_for(plan.params).provision(plan.spec, replicas)
    logger = get_run_logger()
    logger.info("%d machine(s) ready; run storage %s", len(cluster.machines), cluster.storage)
    logger.info("To connect to machine 0: %s", cluster.connect)
    return cluster


# Not retried: a second launch would start training over; recovery resumes from checkpoints instead.
@task(name="train", cache_policy=NO_CACHE)
def train(plan: RunPlan, cluster: Cluster) -> dict:
    backend = backend_for(plan.params)
    logger = get_run_logger()
    port = _free_port() if plan.params.backend == "local" else 29500
    commands = {m.index: trainer_command(plan, cluster, m.index, port) for m in cluster.machines}
    backend.launch(cluster, commands, TRAIN_JOB)
    logger.info("launched: %s", " ".join(commands[0]))
    offset, deadline = 0, time.monotonic() + plan.params.max_hours * 3600
    while True:
        status = backend.status(cluster, TRAIN_JOB)
        chunk = backend.read_storage(cluster, "metrics.jsonl", offset)
        complete = chunk[:chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode().splitlines():
            _relay(json.loads(line), logger)
        if status.failed:
            tail = backend.read_storage(cluster, f"logs/{TRAIN_JOB}-{min(status.failed)}.log")[-3000:]
            raise RuntimeError(f"training failed on machine(s) {status.failed}; last output of machine "
                               f"{min(status.failed)}:\n{tail.decode(errors='replace')}")
        if status.done:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"training ran past max_hours={plan.params.max_hours}")
        time.sleep(POLL_SECONDS)
    return json.loads(backend.read_storage(cluster, "summary.json"))


def trainer_command(plan: RunPlan, cluster: Cluster, machine: int, port: int) -> list[str]:
    """torchrun on one machine: one node each, one process per GPU (one CPU process locally)."""
    local = plan.params.backend == "local"
    command = [cluster.python, "-m", "torch.distributed.run", f"--nnodes={len(cluster.machines)}",
               f"--node_rank={machine}", f"--nproc_per_node={cluster.gpus_per_machine}",
               f"--master_addr={cluster.machines[0].address}", f"--master_port={port}",
               "-m", "trainer", "train", cluster.machines[machine].data_root, "--schedule", plan.schedule,
               "--logdir", cluster.node_storage, "--run-name", plan.spec.run_name, "--auto-resume",
               "--heartbeat-seconds", "5", "--cache-dir", f"{cluster.node_storage}/cache"]
    if cluster.storage != cluster.node_storage:  # checkpoints where the orchestrator and new machines find them
        command += ["--checkpoint-dir", f"{cluster.storage}/checkpoints"]
    if plan.params.target is not None:
        command += ["--target", str(plan.params.target)]
    if plan.params.target_metric:
        command += ["--target-metric", plan.params.target_metric]
    if plan.params.epochs:
        command += ["--epochs", str(plan.params.epochs)]
    if local:
        command += ["--threads", str(_threads_per_machine(len(cluster.machines)))]
    return command


def _threads_per_machine(machines: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // machines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _relay(record: dict, logger) -> None:
    if record["type"] == "epoch":
        logger.info("~~%d\t%.5f\t\t%.3f\t\t%.3f   (%d px, global batch %d, lr %.4g, train loss %.4f)",
                    record["epoch"], record["hours"], record["top1"], record["top5"], record["size"],
                    record["global_batch"], record["lr"], record["train_loss"])
    elif record["type"] == "target":
        logger.info("reached %s %.3f >= %.1f at epoch %d after %.5f hours", record["metric"], record["value"],
                    record["target"], record["epoch"], record["hours"])
    elif record["type"] == "end" and record.get("status") == "failed":
        logger.error("the trainer failed: %s", record.get("error"))


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(plan: RunPlan, cluster: Cluster, summary: dict) -> dict:
    """The final accuracy and the time to target, computed from the run's TensorBoard events as the seed did."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with _local_copy(cluster.storage, "events.out.tfevents.*") as folder:
        events = EventAccumulator(folder)
        events.Reload()
    metric_tag = {"top1": "losses/test_1", "top5": "losses/test_5"}[summary["target_metric"]]
    by_step = {event.step: event.value for event in events.Scalars(metric_tag)}  # a resumed epoch: last wins
    reached = next((e for e in summary["epochs"] if by_step.get(e["examples_seen"], -1.0) >= summary["target"]),
                   None)
    final = summary["epochs"][-1]
    result = {"run_name": plan.spec.run_name, "run_id": plan.spec.run_id, "storage": cluster.storage,
              "machines": plan.spec.machines, "machine_ids": [m.id for m in cluster.machines],
              "schedule": plan.schedule, "epochs": len(summary["epochs"]),
              "top1": final["top1"], "top5": final["top5"], "hours": summary["hours"],
              "target": summary["target"], "target_metric": summary["target_metric"],
              "target_epoch": reached["epoch"] if reached else None,
              "target_hours": reached["hours"] if reached else None,
              "cost_usd": plan.cost.hourly_usd * summary["hours"]}
    logger = get_run_logger()
    logger.info("final: top-1 %.3f, top-5 %.3f after %d epochs, %.4f hours", result["top1"], result["top5"],
                result["epochs"], result["hours"])
    if reached is None:
        logger.info("%s never reached %.1f%%", result["target_metric"], result["target"])
    else:
        logger.info("time to %.1f%% %s: epoch %d, %.5f hours", result["target"], result["target_metric"],
                    result["target_epoch"], result["target_hours"])
    logger.info("logs and TensorBoard events: %s", cluster.storage)
    result["connect"] = cluster.connect
    return result


@contextlib.contextmanager
def _local_copy(storage: str, pattern: str):
    """The run folder itself when it is local; else a temporary folder with the files matching `pattern`."""
    if "://" not in storage:
        yield storage
        return
    fs, base = fsspec.core.url_to_fs(storage)
    fs.invalidate_cache()  # fsspec keeps listings per process; a served flow process lives long
    with tempfile.TemporaryDirectory() as folder:
        for path in fs.glob(f"{base}/{pattern}"):
            fs.get_file(path, f"{folder}/{path.rsplit('/', 1)[1]}")
        yield folder


# Safe to retry: teardown finds resources by tag and skips what is already gone.
@task(name="teardown", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def teardown(params: RunParameters, run_id: str) -> list[str]:
    removed = backend_for(params).teardown(run_id)
    get_run_logger().info("teardown removed %d resource(s) of run %s: %s", len(removed), run_id,
                          ", ".join(r.id for r in removed) or "none")
    return [r.id for r in removed]
