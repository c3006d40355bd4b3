"""The pipeline's stages as Prefect tasks: each a thin, logged call into a backend."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.backends import retry_may_pass
from tasks.backends.base import Cluster, JobStatus, Resource
from tasks.curves import curves_png  # matplotlib: half a second, imported while the command's API server starts
from tasks.parameters import RunParameters
from tasks.planning import RunPlan, backend_for, plan_run
from tasks.progress import ProgressWatch
from tasks.relay import MetricsRelay, Relay, trainer_error
from tasks.reports import DatasetProgress, TrainingProgress, publish_epochs, publish_plan, publish_summary
from trainer.records import SUMMARY_FILE, Epoch, RunSummary, WandbRecord

TRAIN_JOB = "train"
LOG_TAIL_BYTES = 65536  # where a failed trainer's error line and last traceback are
# How long a node's torchrun waits at the rendezvous for the others. Each machine's job starts it once that machine's
# own first boot has ended, and a replacement's (or one held by apt's locks, or slow to download gigabytes of
# wheels) ends many minutes after the others' jobs started theirs: torchrun's default, 900 s, failed them all.
# A machine whose boot fails ends its job (exit 3), and one that goes is lost: both are noticed at once; only one
# that hangs in its boot holds the others this long.
RENDEZVOUS_WAIT_S = 3600
# A node that fails while others run may be the echo of a machine going away that its backend does not list as gone
# yet (its processes die as it shuts down; EC2 says shutting-down a moment later): the others' peers see the
# connection close and fail first. Such a failure is judged once every node has ended, one is lost, or this passes.
ECHO_GRACE_S = 60.0


def _may_pass(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn signature
    """Retry what may pass a second time; bad input and refused permissions fail the same way every time."""
    return retry_may_pass(state.data)


class TrainingError(RuntimeError):
    """Training failed on the machines; the message is the cause in one line (the trainer's own, where it gave
    one), the machines' logs hold the rest."""


@dataclass
class Trained:
    """What training left: the trainer's summary, and what the pipeline saw happen to the run."""
    summary: RunSummary
    restarts: list[dict]
    epochs_redone: int  # epochs trained twice: after a restart, those since the last checkpoint
    wandb: WandbRecord | None


@task(name="validate-and-plan", cache_policy=NO_CACHE)
def validate_and_plan(params: RunParameters, run_id: str, run_name: str) -> RunPlan:
    """Everything that can be checked is checked here, before anything is created or spent."""
    plan = plan_run(params, run_id, run_name)
    logger = get_run_logger()
    for item in plan.cost.items:
        logger.info("plan: %d x %s at $%.2f/h", item.count, item.what, item.hourly_usd)
    if warmup := plan.cost.warmup:
        logger.info("plan: before the machines start, about %.1f min: %s, $%.2f", warmup.minutes, warmup.what,
                    warmup.usd)
    logger.info("plan: %s, %d epochs of %s on %d machine(s); up to %.1f h, $%.2f/h, at most $%.2f",
                params.backend, plan.epochs, plan.schedule, params.machines, params.max_hours,
                plan.cost.hourly_usd, plan.cost.total_usd)
    logger.info("plan: %s", plan.compile)
    publish_plan(plan)
    return plan


# Safe to retry: the identity that exists is reused.
@task(name="authorize-launch", retries=2, retry_delay_seconds=5, retry_condition_fn=_may_pass,
      cache_policy=NO_CACHE)
def authorize_launch(plan: RunPlan) -> None:
    """Before anything that costs: whether the machines may be launched as the run's own identity."""
    backend_for(plan.params).authorize_launch(plan.spec)
    get_run_logger().info("launch authorized: the machines may start with the run's identity")


# Safe to retry: copies already made are kept, so a retry goes on where the last try stopped.
@task(name="prepare-dataset", retries=2, retry_delay_seconds=5, retry_condition_fn=_may_pass,
      cache_policy=NO_CACHE)
def prepare_dataset(plan: RunPlan) -> None:
    """The resized copies (-sz/<px>) the schedule reads, made where the dataset lacks them, on all cores; a
    dataset whose copies are up to date costs one look at its files."""
    artifact = DatasetProgress(plan.spec.run_name, plan.dataset)  # the progress lines are trainer.prepare's
    report = backend_for(plan.params).prepare_dataset(plan.spec, plan.dataset, plan.reads, artifact.update)
    get_run_logger().info("dataset %s: %s", plan.dataset, report or "nothing to make")


# Safe to retry: replicas that exist are found by tag and reused.
@task(name="replicate-dataset", retries=2, retry_delay_seconds=5, retry_condition_fn=_may_pass,
      cache_policy=NO_CACHE)
def replicate_dataset(plan: RunPlan) -> list[Resource]:
    replicas = backend_for(plan.params).replicate(plan.spec, plan.dataset, plan.spec.machines)
    get_run_logger().info("%d dataset replicas ready: %s", len(replicas), ", ".join(r.id for r in replicas))
    return replicas


# Safe to retry: what the run's tags show exists is reused.
@task(name="prepare-cluster", retries=2, retry_delay_seconds=5, retry_condition_fn=_may_pass,
      cache_policy=NO_CACHE)
def prepare_cluster(plan: RunPlan) -> object:
    """What the machines need besides their replicas (network, storage, roles, code), made while they are."""
    prepared = backend_for(plan.params).prepare(plan.spec)
    get_run_logger().info("cluster prepared: %s", prepared)
    return prepared


# Safe to retry: provisioning creates only what the run's tags do not already show.
@task(name="provision-cluster", retries=2, retry_delay_seconds=5, retry_condition_fn=_may_pass,
      cache_policy=NO_CACHE)
def provision_cluster(plan: RunPlan, replicas: list[Resource], prepared: object) -> Cluster:
    cluster = backend_for(plan.params).provision(plan.spec, replicas, prepared)
    logger = get_run_logger()
    logger.info("%d machine(s) ready; run storage %s", len(cluster.machines), cluster.storage)
    logger.info("To connect to machine 0: %s", cluster.connect)
    return cluster


# Not retried: a second launch would start training over; recovery resumes from checkpoints instead.
@task(name="train", cache_policy=NO_CACHE)
def train(plan: RunPlan, cluster: Cluster, replicas: list[Resource]) -> tuple[Trained, Cluster]:
    """Launch, relay progress, and when machines are lost (a spot interruption, a killed node) or hung (no new
    heartbeat for `hang_minutes`), replace what is gone and resume every node from the last checkpoint, at
    most `restarts` times. Returns the trainer's summary with the restarts, and the cluster as it ended."""
    backend = backend_for(plan.params)
    logger = get_run_logger()
    job, restarts, metrics = TRAIN_JOB, [], MetricsRelay()
    progress = TrainingProgress(plan.spec.run_name, plan.epochs)
    deadline = time.monotonic() + plan.params.max_hours * 3600
    _launch(backend, plan, cluster, job, logger)
    watch, relay = ProgressWatch(plan.params.hang_minutes * 60), Relay(job, len(cluster.machines), metrics, logger)
    failed_since = None
    while True:
        status = backend.status(cluster, job)
        # a run that ended, or is about to fail, has its logs read now whatever the relay's pause: now or never
        for record in relay.poll(backend, cluster, force=status.done or bool(status.failed)):
            progress.epoch_ended(record)
        ending = status.done or status.succeeded  # a node that finished beats no more; the rest follow
        beats = {} if ending else relay.heartbeats(backend, cluster)
        hung = watch.hung(beats) if beats else []  # no beats read: nothing to judge by
        if status.failed or hung:
            lost = {index: code for index, code in status.failed.items() if _lost(code)}
            waiting = not lost and not hung and not status.done
            if failed_since is None:
                failed_since = time.monotonic()
                if waiting:
                    logger.warning("machine(s) %s failed (exit codes %s) while the others run: waiting up to %.0f s "
                                   "for them to end, or for a machine lost that explains it", sorted(status.failed),
                                   status.failed, ECHO_GRACE_S)
            if waiting and time.monotonic() - failed_since < ECHO_GRACE_S:
                time.sleep(backend.poll_seconds)
                continue
            # with a machine lost, the others' failures are its echo, which the restart mends as well
            if (status.failed and not lost) or len(restarts) >= plan.params.restarts:
                raise TrainingError(_failure(backend, cluster, job, status, hung, plan.params.hang_minutes))
            began = time.monotonic()
            logger.warning("machine(s) %s lost (exit codes %s) and %s making no progress for %.0f min; replacing "
                           "what is gone and resuming every node from the last checkpoint (restart %d of at most "
                           "%d)", sorted(lost) or "none", status.failed, hung or "none", plan.params.hang_minutes,
                           len(restarts) + 1, plan.params.restarts)
            backend.stop(cluster, job)
            cluster = backend.provision(cluster.spec, replicas)
            job = f"{TRAIN_JOB}.r{len(restarts) + 1}"
            _launch(backend, plan, cluster, job, logger)
            watch, failed_since = ProgressWatch(plan.params.hang_minutes * 60), None
            relay = Relay(job, len(cluster.machines), metrics, logger)
            restarts.append({"job": job, "lost": {str(i): code for i, code in lost.items()}, "hung": hung,
                             "after_epoch": metrics.epochs[-1].epoch if metrics.epochs else None,
                             "seconds_to_relaunch": round(time.monotonic() - began, 1)})
            continue
        if status.done:
            break
        if time.monotonic() > deadline:
            raise TrainingError(f"training ran past max_hours={plan.params.max_hours:g} and was stopped: its logs and "
                                f"checkpoints are in {cluster.storage}; a longer --max-hours gives it the time")
        time.sleep(backend.poll_seconds)
    summary = RunSummary.read(backend.read_storage(cluster, SUMMARY_FILE))
    progress.finished(len(summary.epochs), summary.final.top1)
    epochs_redone = len(metrics.epochs) - len({record.epoch for record in metrics.epochs})
    return Trained(summary, restarts, epochs_redone, metrics.wandb), cluster


def _launch(backend, plan: RunPlan, cluster: Cluster, job: str, logger) -> None:
    port, flags = backend.rendezvous_port(), backend.node_flags(len(cluster.machines))
    commands = {m.index: trainer_command(plan, cluster, m.index, port, flags) for m in cluster.machines}
    backend.launch(cluster, commands, job)
    logger.info("launched %s: %s", job, " ".join(commands[0]))


def _failure(backend, cluster: Cluster, job: str, status: JobStatus, hung: list[int], hang_minutes: float) -> str:
    """The cause in one line: the trainer's own error where it gave one, else the backend's (a job script that
    failed before the trainer ran); the machine logs keep the tracebacks."""
    failed = status.failed
    if not failed:
        return f"machine(s) {hung} made no progress for {hang_minutes:g} min (no new heartbeat) and no restart is left"
    lost = sorted(index for index, code in failed.items() if _lost(code))
    if lost:
        # the others' own errors too: an echo of the loss, or an error of theirs that a restart would not mend
        causes = {index: status.causes.get(index)
                  or (None if index in lost else _trainer_error(backend, cluster, job, index))
                  for index in sorted(failed)}
        said = "".join(f"; machine {index}: {cause.removeprefix('error: ')}"
                       for index, cause in causes.items() if cause)
        return (f"training failed on machine(s) {failed}: machine(s) {lost} lost (ended by a signal, or gone) and "
                f"no restart is left{said}")
    causes = {index: _trainer_error(backend, cluster, job, index) or status.causes.get(index)
              for index in sorted(failed)}
    own = [(i, cause) for i, cause in causes.items() if cause and cause.startswith("error: ")]
    found = [(i, cause) for i, cause in causes.items() if cause]
    index, cause = (own or found or [(min(failed), None)])[0]
    cause = (cause or f"the trainer exited with code {failed[index]}").removeprefix("error: ")
    return f"{cause} (machine {index}; its whole log: {cluster.storage}/{_log(job, index)})"


def _trainer_error(backend, cluster: Cluster, job: str, machine: int) -> str | None:
    """The trainer's own error in the machine's log, if it can be read: the failure is said either way."""
    try:
        log = backend.read_storage(cluster, _log(job, machine))
    except Exception:  # noqa: BLE001 - storage that cannot be read now (a throttled S3) only loses the detail
        return None
    return trainer_error(log[-LOG_TAIL_BYTES:].decode(errors="replace"))


def _log(job: str, machine: int) -> str:
    return f"logs/{job}-{machine}.log"


def _lost(exit_code: int) -> bool:
    """Ended by a signal or gone without an exit code: the machine or its node process was lost, which a
    restart from the checkpoint mends; a plain error exit is the trainer's own, which a restart repeats."""
    return exit_code < 0 or exit_code >= 128


def trainer_command(plan: RunPlan, cluster: Cluster, machine: int, port: int, node_flags: Sequence[str] = ()
                    ) -> list[str]:
    """torchrun on one machine: one node each, one process per GPU (one CPU process locally); `node_flags` are
    the backend's for each node (backend.node_flags)."""
    command = [cluster.python, "-m", "torch.distributed.run", f"--nnodes={len(cluster.machines)}",
               f"--node_rank={machine}", f"--nproc_per_node={cluster.gpus_per_machine}",
               f"--master_addr={cluster.machines[0].address}", f"--master_port={port}",
               f"--rdzv-conf=timeout={RENDEZVOUS_WAIT_S}",
               f"--log-dir={cluster.node_storage}/torchrun",  # its per-attempt folders, else left in /tmp
               "-m", "trainer", "train", cluster.machines[machine].data_root, "--schedule", plan.schedule,
               "--logdir", cluster.node_storage, "--run-name", plan.spec.run_name, "--auto-resume",
               "--heartbeat-seconds", "5", "--cache-dir", f"{cluster.node_storage}/cache"]
    if cluster.storage != cluster.node_storage:  # checkpoints where the orchestrator and new machines find them
        command += ["--checkpoint-dir", f"{cluster.storage}/checkpoints"]
    return command + plan.trainer_flags() + list(node_flags)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(plan: RunPlan, cluster: Cluster, trained: Trained) -> dict:
    """The final accuracy and the time to target, as the trainer recorded them in its summary."""
    summary = trained.summary
    result = {"run_name": plan.spec.run_name, "run_id": plan.spec.run_id, "storage": cluster.storage,
              "machines": plan.spec.machines, "machine_ids": [m.id for m in cluster.machines],
              "schedule": plan.schedule, "epochs": len(summary.epochs),
              "top1": summary.final.top1, "top5": summary.final.top5, "hours": summary.hours,
              "accuracy_of": summary.accuracy_of, "best": summary.best.model_dump() if summary.best else None,
              "target": summary.target, "target_metric": summary.target_metric,
              "target_epoch": summary.target_epoch, "target_hours": summary.target_hours,
              "cost_usd": plan.cost.hourly_usd * summary.hours, "hourly_usd": plan.cost.hourly_usd,
              "wandb": trained.wandb.model_dump(exclude={"type", "time"}) if trained.wandb else None,
              "connect": cluster.connect, "tensorboard": tensorboard_command(plan, cluster.storage),
              "restarts": trained.restarts, "epochs_redone": trained.epochs_redone,
              "restart_cost_usd": plan.cost.hourly_usd * sum(r["seconds_to_relaunch"]
                                                             for r in trained.restarts) / 3600}
    logger = get_run_logger()
    logger.info("final: top-1 %.3f, top-5 %.3f after %d epochs (%s), %.4f hours", result["top1"], result["top5"],
                result["epochs"], result["accuracy_of"], result["hours"])
    if result["best"]:
        logger.info("best epoch by %s: %d, top-1 %.3f, top-5 %.3f (weights: %s)", result["target_metric"],
                    result["best"]["epoch"], result["best"]["top1"], result["best"]["top5"],
                    result["best"]["weights"] or "not kept")
    if summary.target_epoch is None:
        logger.info("%s never reached %.1f%%", result["target_metric"], result["target"])
    else:
        logger.info("time to %.1f%% %s: epoch %d, %.5f hours", result["target"], result["target_metric"],
                    result["target_epoch"], result["target_hours"])
    for restart in result["restarts"]:
        logger.info("restart: machine(s) %s lost, %s hung, after epoch %s; relaunched in %.0f s",
                    ", ".join(restart["lost"]) or "none", ", ".join(map(str, restart["hung"])) or "none",
                    restart["after_epoch"], restart["seconds_to_relaunch"])
    if result["restarts"]:
        logger.info("restarts cost %d epoch(s) run twice and about $%.2f of waiting", result["epochs_redone"],
                    result["restart_cost_usd"])
    logger.info("logs and TensorBoard events: %s (%s)", cluster.storage, result["tensorboard"])
    _publish_report(result, summary.epochs, logger)
    return result


def tensorboard_command(plan: RunPlan, storage: str) -> str:
    """The command that serves this run's events: by its folder's name, which no other run shares."""
    return shlex.join(["imagenet18", "tensorboard", "--run", storage.rstrip("/").rsplit("/", 1)[-1],
                       *backend_for(plan.params).tensorboard_options()])


def _publish_report(result: dict, epochs: list[Epoch], logger) -> None:
    """The curves as curves.png beside the run's logs, the epoch table and the summary, as artifacts."""
    png = curves_png(epochs, result["run_name"], result["target"], result["target_metric"])
    path = f"{result['storage']}/curves.png"
    with fsspec.open(path, "wb") as file:
        file.write(png)
    logger.info("loss and accuracy curves: %s", path)
    publish_epochs(result["run_name"], epochs)
    publish_summary(result, png, path)


# Safe to retry: teardown finds resources by tag and skips what is already gone.
@task(name="teardown", retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def teardown(params: RunParameters, run_id: str) -> list[str]:
    removed = backend_for(params).teardown(run_id)
    given_back = [r.id for r in removed if "pool_index" in r.details]
    deleted = [r.id for r in removed if "pool_index" not in r.details]
    logger = get_run_logger()
    logger.info("teardown removed %d resource(s) of run %s: %s", len(deleted), run_id, ", ".join(deleted) or "none")
    if given_back:
        logger.info("gave %d replica(s) back to the pool: %s", len(given_back), ", ".join(given_back))
    return [r.id for r in removed]
