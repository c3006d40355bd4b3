"""The training run: schedule, data, model, the epoch loop, checkpoints, and the time-to-target figure.

    python -m trainer train DATA --schedule cpu-demo                        # one process
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 \\
        -m trainer train /data/imagenet --schedule seed-2 --logdir /efs/runs/r1    # node 0 of 2

Files a run writes in --logdir (the contract the pipeline reads): metrics.jsonl and summary.json (at the end),
as trainer.records types them, heartbeats/node-<i>.json (each node's latest), verbose.log,
event.log, debug.log, TensorBoard events; checkpoints go to --checkpoint-dir (default LOGDIR/checkpoints),
which may be an fsspec URL: checkpoint.pt (the latest epoch, what a restart resumes from) and best.pt (the
weights of the best epoch so far by the target metric, as the seed kept them).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainer import checkpoint, console, distributed, gpu_decode, layout, recipe, sync
from trainer import schedule as schedules
from trainer.console import log
from trainer.engine import Context, evaluate, train_one_epoch, training_stream
from trainer.loaders import LoaderSettings, PhaseLoaders, build_loaders
from trainer.model import MOMENTUM, build_model, build_optimizer, replays_cuda_graphs, training_module
from trainer.recorder import NodeHeartbeat, Recorder
from trainer.records import (SUMMARY_FILE, Best, CheckpointRecord, EndRecord, Epoch, EpochRecord, RunSummary,
                             StartRecord, TargetRecord)
from trainer.written import naming

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagenet18"


@dataclass
class TrainConfig:
    data: str
    schedule: str = "cpu-demo"
    logdir: Path | None = None
    run_name: str | None = None
    arch: str | None = None
    target: float | None = None  # None: the schedule's
    target_metric: str | None = None
    stop_at_target: bool = False
    epochs: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: str | None = None
    auto_resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str = "default"
    decode: str = "auto"
    workers: int | None = None
    threads: int | None = None
    print_freq: int = 10
    seed: int = 0
    cache_dir: Path = DEFAULT_CACHE
    heartbeat_seconds: float = 30.0


def default_run_name(schedule_name: str) -> str:
    return f"{Path(schedule_name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(config: TrainConfig) -> RunSummary:
    """Train to the end of the schedule (or --epochs, or the target with --stop-at-target)."""
    world = distributed.init(config.device)
    try:
        with torch.cuda.stream(training_stream(world.device)):
            return _run(config, world)
    finally:
        distributed.shutdown()


def _run(config: TrainConfig, world: distributed.World) -> RunSummary:
    run_name = config.run_name or default_run_name(config.schedule)
    logdir = config.logdir or Path.home() / "imagenet18-runs" / run_name
    console.setup(logdir, world.is_master)
    _set_threads(config, world)
    plan, root = _schedule_and_data(config, world)
    schedules.check_epochs(plan, config.epochs)
    arch = config.arch or plan.arch
    folders = layout.check_layout(root, plan)
    train_folder = folders[f"{plan.data[0].trndir}:train"]
    classes = list(train_folder.classes)
    _check_enough_images(len(train_folder.samples), plan, world)
    layout.check_classes(train_folder)
    resume_from = _resume_location(config, logdir)
    state = checkpoint.CheckpointState.load(resume_from) if resume_from else None
    if state:
        state.check_compatible(arch, plan.name, plan.fingerprint(), classes)

    torch.manual_seed(config.seed)
    model = build_model(arch, len(classes)).to(world.device)
    bf16, channels_last = _precision(config, world)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model)
    if state:
        state.restore(model, optimizer)
    wrapped = training_module(model, world.size > 1, config.compile, len(plan.data), config.compile_mode)
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    decode = _decode_where(config)
    settings = LoaderSettings(world.rank, world.size, _workers(config, world), config.seed,
                              world.device.type == "cuda", config.cache_dir, gpu_decode=decode == "device")
    loaders = build_loaders(root, plan, folders, settings)
    end_epoch = config.epochs or plan.epochs
    target = config.target if config.target is not None else plan.target
    metric = config.target_metric or plan.target_metric
    summary = RunSummary(run_name=run_name, logdir=str(logdir), schedule=plan.name, arch=arch, world_size=world.size,
                         target=target, target_metric=metric)
    run_config = {**asdict(config), "arch": arch, "run_name": run_name, "world_size": world.size,
                  "classes": len(classes), "epochs": end_epoch, "bf16": bf16, "channels_last": channels_last,
                  "process_group": distributed.backend(), "pin_memory": settings.pin_memory, "decode": decode,
                  "decoder": gpu_decode.decoder_for(world.device) if decode == "device" else "libjpeg"}
    recorder = Recorder(logdir, run_name, _jsonable(run_config), world.is_master, config.heartbeat_seconds)
    heartbeat = NodeHeartbeat(logdir, world.node_rank, world.is_node_master, config.heartbeat_seconds)
    ctx = Context(wrapped, model, optimizer, plan, world, recorder, heartbeat, bf16, channels_last,
                  config.print_freq, cuda_graphs=config.compile and replays_cuda_graphs(config.compile_mode))
    start_epoch, elapsed = 0, 0.0
    if state:
        start_epoch, elapsed = state.epoch, state.elapsed_seconds
        summary.epochs, ctx.examples_seen = state.history, state.examples_seen
        summary.target_epoch, summary.target_hours, summary.best = state.target_epoch, state.target_hours, state.best
        summary.resumed_from_epoch = start_epoch
        log.info("Resuming from %s at epoch %d (%.5f hours done)", resume_from, start_epoch, elapsed / 3600,
                 extra=console.EVENT)
    _announce_start(plan, arch, world, classes, loaders, end_epoch, recorder, run_config)

    checkpoint_dir = config.checkpoint_dir or str(logdir / "checkpoints")
    clock = time.perf_counter() - elapsed  # the clock starts now that every loader is built
    phase_index = None
    try:
        for epoch in range(start_epoch, end_epoch):
            phase_index = _enter_phase(ctx, loaders, plan.data_phase_index(epoch), phase_index)
            train = train_one_epoch(ctx, loaders[phase_index], epoch)
            val = evaluate(ctx, loaders[phase_index], epoch)
            hours = (time.perf_counter() - clock) / 3600
            record = _epoch_record(epoch, hours, train, val, ctx, loaders[phase_index])
            summary.epochs.append(record)
            log.info(console.epoch_line(epoch, hours, val.top1, val.top5), extra=console.EVENT)
            recorder.record(EpochRecord(**record.model_dump()))
            recorder.scalars({"losses/test_1": val.top1, "losses/test_5": val.top5,
                              "times/eval_sec": val.seconds, "epoch": epoch}, ctx.examples_seen)
            reached = getattr(record, metric)
            if summary.target_epoch is None and reached >= target:
                summary.target_epoch, summary.target_hours = epoch, hours
                log.info("Reached %s %.3f >= %.1f at epoch %d after %.5f hours", metric, reached, target, epoch,
                         hours, extra=console.EVENT)
                recorder.record(TargetRecord(epoch=epoch, hours=hours, metric=metric, value=reached, target=target))
            stop = config.stop_at_target and summary.target_epoch is not None
            last = epoch + 1 == end_epoch or stop
            improved = summary.best is None or reached > getattr(summary.best, metric)
            if improved:
                summary.best = _best(record, checkpoint_dir if config.checkpoint_every else None)
            if config.checkpoint_every and ((epoch + 1) % config.checkpoint_every == 0 or last):
                _save(ctx, summary, epoch + 1, hours * 3600, plan, classes, checkpoint_dir)
            if improved and summary.best.weights:  # after the checkpoint a restart resumes from
                _save_best(ctx, summary.best, summary.arch, classes)
            heartbeat.beat(force=True, epoch=epoch + 1, batch=0, batches=0)
            if stop:
                break
        summary.hours = (time.perf_counter() - clock) / 3600
        _finish(summary, recorder, logdir, world)
    except BaseException as exc:
        recorder.record(EndRecord(status="failed", error=f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        recorder.close()
    return summary


def _schedule_and_data(config: TrainConfig, world: distributed.World) -> tuple[schedules.Schedule, Path]:
    """The schedule, and the local folder with what it reads; `auto` is derived from the full-size images."""
    if config.schedule != recipe.AUTO:
        plan = schedules.load(config.schedule)
        return plan, _local_data(config, [phase.trndir for phase in plan.data], world)
    plan = recipe.schedule_for(recipe.facts(_local_data(config, [""], world)), world.size)
    return plan, _local_data(config, [phase.trndir for phase in plan.data], world)


def _local_data(config: TrainConfig, trndirs: list[str], world: distributed.World) -> Path:
    root = sync.local_root(config.data, config.cache_dir)
    if sync.is_remote(config.data):
        if world.is_node_master:
            sync.sync(config.data, root, list(dict.fromkeys(trndirs)))
        distributed.barrier()
    return root


def _check_enough_images(images: int, plan: schedules.Schedule, world: distributed.World) -> None:
    """BatchNorm needs two images a step in every process; fewer than one global batch trains, one step an epoch."""
    if images < 2 * world.size:
        raise layout.DataError(f"{images} training image(s) cannot be shared out to {world.size} process(es): "
                               "BatchNorm needs at least 2 each")
    global_batch = plan.data[0].bs * world.size
    if images < global_batch:
        log.warning("the training set (%d images) is smaller than one global batch (%d): each epoch is one step of "
                    "every image", images, global_batch)


def _resume_location(config: TrainConfig, logdir: Path) -> str | None:
    if config.resume:
        return config.resume
    location = config.checkpoint_dir or str(logdir / "checkpoints")
    if config.auto_resume and checkpoint.exists(location):
        return location
    return None


def _set_threads(config: TrainConfig, world: distributed.World) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.device.type == "cpu":
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, cores // world.local_size))


def _workers(config: TrainConfig, world: distributed.World) -> int:
    if config.workers is not None:
        return config.workers
    cores_per_process = len(os.sched_getaffinity(0)) // world.local_size
    if world.device.type == "cpu":
        # On the CPU the model needs the cores; decode in the training process unless cores are spare.
        return 0 if cores_per_process <= 2 else min(cores_per_process // 2, 8)
    return max(1, min(cores_per_process - 1, 12))


def _decode_where(config: TrainConfig) -> str:
    """`workers` (decode and crop in the loader workers) or `device` (batched on the training device: nvJPEG on a
    GPU; on a CPU the same code path with libjpeg). auto is workers: on one H200 the device path fed the compiled
    step 3,452 img/s at 224 px against the workers' 5,335 (BENCHMARKS.md, 2026-12-04)."""
    return "workers" if config.decode == "auto" else config.decode


def _precision(config: TrainConfig, world: distributed.World) -> tuple[bool, bool]:
    if config.precision == "auto":
        bf16 = world.device.type == "cuda" or torch.backends.mkldnn.is_available() and _cpu_has_bf16()
    else:
        bf16 = config.precision == "bf16"
    channels_last = bf16 if config.channels_last is None else config.channels_last
    return bf16, channels_last


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _announce_start(plan, arch, world, classes, loaders, end_epoch, recorder, run_config) -> None:
    first = plan.data[0]
    log.info("Schedule %s: %s", plan.name, plan.description)
    log.info("%s, %d classes, world size %d on %s; %d epochs; global batch %d at %d px to start",
             arch, len(classes), world.size, world.device.type, end_epoch, first.bs * world.size, first.sz)
    if plan.machines and plan.gpus_per_machine and world.size != plan.machines * plan.gpus_per_machine:
        log.info("Note: the schedule was tuned for %d processes (%d machines x %d GPUs); this run has %d, so "
                 "its global batch differs from the seed's", plan.machines * plan.gpus_per_machine,
                 plan.machines, plan.gpus_per_machine, world.size)
    recorder.record(StartRecord(config=_jsonable(run_config), train_images=len(loaders[0].train.dataset)))
    log.info(console.EPOCH_HEADER, extra=console.EVENT)


def _enter_phase(ctx: Context, loaders: list[PhaseLoaders], index: int, current: int | None) -> int:
    if index == current:
        return index
    phase = loaders[index]
    if current is not None and phase.phase.keep_dl:
        log.info("Batch size changed: %d", phase.phase.bs, extra=console.EVENT)
    else:
        for line in console.dataset_changed_lines(phase.phase.sz, phase.phase.bs, phase.train_dir, phase.val_dir):
            log.info(line, extra=console.EVENT)
    ctx.recorder.scalars({"sizes/world": ctx.world.size, "sizes/batch": phase.phase.bs,
                          "sizes/image": phase.phase.sz, "sizes/batch_total": phase.phase.bs * ctx.world.size,
                          "sizes/momentum": MOMENTUM}, ctx.examples_seen)
    return index


def _epoch_record(epoch: int, hours: float, train, val, ctx: Context, loaders: PhaseLoaders) -> Epoch:
    return Epoch(epoch=epoch, hours=round(hours, 6), top1=val.top1, top5=val.top5, val_loss=val.loss,
                 train_loss=train.loss, train_top1=train.top1, train_top5=train.top5, lr=ctx.lr, size=loaders.phase.sz,
                 global_batch=loaders.phase.bs * ctx.world.size, train_seconds=train.seconds,
                 eval_seconds=val.seconds, images_per_second=train.images / max(train.seconds, 1e-9),
                 examples_seen=ctx.examples_seen)


def _save(ctx: Context, summary: RunSummary, next_epoch: int, elapsed: float, plan, classes, location) -> None:
    if ctx.world.is_master:
        path = checkpoint.CheckpointState(
            summary.arch, classes, plan.name, plan.fingerprint(), next_epoch, elapsed, ctx.bare_model.state_dict(),
            ctx.optimizer.state_dict(), summary.epochs, ctx.examples_seen, checkpoint.rng_state(),
            summary.target_epoch, summary.target_hours, summary.best).save(location)
        log.debug("checkpoint for epoch %d written to %s", next_epoch, path)
        ctx.recorder.record(CheckpointRecord(epoch=next_epoch, path=path))
    distributed.barrier()  # nobody runs ahead of a checkpoint that a restart would resume from


def _best(record: Epoch, location: str | None) -> Best:
    """The best epoch so far, and where its weights go (none when checkpoints are off)."""
    return Best(epoch=record.epoch, top1=record.top1, top5=record.top5,
                weights=checkpoint.best_path(location) if location else None)


def _save_best(ctx: Context, best: Best, arch: str, classes: list[str]) -> None:
    """The best epoch's weights beside the latest checkpoint."""
    if ctx.world.is_master:
        checkpoint.save_best(best.weights, arch, classes, best, ctx.bare_model.state_dict())


def _finish(summary: RunSummary, recorder: Recorder, logdir: Path, world: distributed.World) -> None:
    final = summary.final
    metric = summary.target_metric
    top1, top5 = (final.top1, final.top5) if final else (None, None)
    if summary.target_epoch is not None:
        log.info("Time to %.1f%% %s: epoch %d, %.5f hours (%.1f minutes)", summary.target, metric,
                 summary.target_epoch, summary.target_hours, summary.target_hours * 60, extra=console.EVENT)
    else:
        log.info("%s never reached %.1f%% (best %.3f)", metric, summary.target,
                 max((getattr(e, metric) for e in summary.epochs), default=0.0), extra=console.EVENT)
    log.info("Finished %d epochs in %.5f hours: top-1 %.3f, top-5 %.3f", len(summary.epochs), summary.hours,
             top1 or 0.0, top5 or 0.0, extra=console.EVENT)
    if summary.best:
        best = summary.best
        log.info("Best epoch by %s: %d, top-1 %.3f, top-5 %.3f%s", metric, best.epoch, best.top1, best.top5,
                 f" (weights: {best.weights})" if best.weights else "", extra=console.EVENT)
    recorder.record(EndRecord(status="completed", hours=summary.hours, top1=top1, top5=top5,
                              target_epoch=summary.target_epoch, target_hours=summary.target_hours))
    if world.is_master:
        with naming(logdir / SUMMARY_FILE, "the run's summary"):  # not a side path: the orchestrator reads it
            summary.write(logdir / SUMMARY_FILE)


def _jsonable(values: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
