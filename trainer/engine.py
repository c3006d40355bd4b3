"""One epoch of training and one pass of validation, with globally all-reduced metrics."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from trainer import console, distributed
from trainer.console import Meter, log
from trainer.gpu_decode import EncodedBatch, decode_batch
from trainer.loaders import PhaseLoaders
from trainer.model import set_lr
from trainer.recorder import NodeHeartbeat, Recorder
from trainer.schedule import Schedule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Context:
    """What both loops need, built once per run."""
    model: nn.Module  # DDP-wrapped when distributed
    bare_model: nn.Module  # the module itself: evaluation and checkpoints bypass DDP
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    world: distributed.World
    recorder: Recorder
    node_heartbeat: NodeHeartbeat
    bf16: bool
    channels_last: bool
    print_freq: int
    cuda_graphs: bool = False  # the compiled step replays CUDA graphs: each step is marked as a new one
    examples_seen: int = 0  # TensorBoard's step: cumulative global examples, as the seed logged
    lr: float = 0.0
    announced_lr: float = 0.0
    network: console.NetworkMeter = field(default_factory=console.NetworkMeter)

    def __post_init__(self) -> None:
        shape = (1, 3, 1, 1)
        device = self.world.device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(shape) * 255
        # Made once per run: torch hands out streams from a pool of 32 per priority in turn, so streams made anew
        # each epoch would come round to those of CUDA graphs or NCCL. The side stream (copies, decodes) has the
        # high priority its pool gives nothing else here.
        self.side_stream = torch.cuda.Stream(device, priority=-1) if device.type == "cuda" else None
        if self.side_stream is not None:  # it normalises with mean and std, queued on the current stream
            self.side_stream.wait_stream(torch.cuda.current_stream(device))

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor] | EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch as normalised images and labels on the device: uint8 images are normalised here,
        not in the loader workers, and encoded ones are decoded here first."""
        device = self.world.device
        images, labels = decode_batch(batch, device) if isinstance(batch, EncodedBatch) else batch
        images = images.to(device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(device, non_blocking=True)

    def device_batches(self, loader) -> DeviceBatches:
        return DeviceBatches(loader, self.to_device, self.world.device, self.side_stream)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16)


def training_stream(device: torch.device) -> torch.cuda.Stream | None:
    """On a GPU, the stream a training process queues its work on (None on a CPU, where torch.cuda.stream(None)
    changes nothing): one of its own, not CUDA's legacy default stream, where PyTorch puts work by default, which
    every blocking stream waits for, and which nvJPEG's decode was seen waiting for (bench/decode_blocks.py measures
    whether it also waits for a stream of its own). The model, DDP and the loops are all made and run on it: DDP
    keeps gradient accumulators made on the stream current when it was built, and autograd wants them on the
    loop's. It waits for the work queued before it."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


class DeviceBatches:
    """A loader's batches on the device. On a GPU each batch is copied (or decoded) and normalised on a side
    stream, launched while the model still trains on the batch before it, so neither waits for the other.

    Encoded batches (trainer.gpu_decode) are decoded by a thread of their own: AHEAD decoded batches wait while it
    decodes one more. nvJPEG's batched decode returns only once the GPU work queued before it is done
    (bench/decode_blocks.py), so decoded inline, the next batch's decode and the step it would overlap ran one after
    the other."""

    AHEAD = 2

    def __init__(self, loader, prepare, device: torch.device, side: torch.cuda.Stream | None = None):
        """`side`: the stream batches are prepared on, on a GPU (the run's: Context.side_stream); None on a CPU."""
        if device.type == "cuda" and side is None:
            raise ValueError("batches on a GPU need a side stream to be prepared on")
        self.loader, self.prepare, self.device, self.side = loader, prepare, device, side

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        first = next(batches, None)
        if first is None:
            return
        batches = itertools.chain([first], batches)
        if isinstance(first, EncodedBatch):
            yield from self._prepared_by_a_thread(batches)
        elif self.side is not None:
            for batch in batches:
                with torch.cuda.stream(self.side):
                    ready = self.prepare(batch)
                yield self._on_the_current_stream(ready, self.side.record_event())
        else:
            yield from map(self.prepare, batches)

    def _prepared_by_a_thread(self, batches):
        ready: queue.Queue = queue.Queue(maxsize=self.AHEAD)
        stop = threading.Event()

        def offer(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def prepare_all() -> None:
            try:
                with self._on_the_side_stream():
                    for batch in batches:
                        tensors = self.prepare(batch)
                        if not offer((tensors, self.side and self.side.record_event(), None)):
                            return
            except BaseException as error:  # raised again in the training loop's thread
                offer((None, None, error))
                return
            offer(None)

        thread = threading.Thread(target=prepare_all, name="decode-ahead", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                tensors, done, error = item
                if error is not None:
                    raise error
                yield self._on_the_current_stream(tensors, done) if done is not None else tensors
        finally:
            stop.set()  # a consumer that stops early (validation's fixed steps) ends the thread too
            thread.join()

    @contextlib.contextmanager
    def _on_the_side_stream(self):
        """In the thread: its device the loop's, its stream the side stream (on a GPU)."""
        if self.side is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.side):
            yield

    def _on_the_current_stream(self, tensors: tuple[torch.Tensor, ...], done: torch.cuda.Event):
        main = torch.cuda.current_stream(self.device)
        main.wait_event(done)
        for tensor in tensors:
            tensor.record_stream(main)  # made on a side stream, freed only once `main` is done with it
        return tensors


@dataclass
class EpochResult:
    loss: float
    top1: float
    top5: float
    seconds: float
    images: int


class _Window:
    """Sums since the last print, all-reduced there: images, loss x images, correct@1, correct@5."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x images, correct@1, correct@5
        self.images, self.batches, self.data_seconds, self.start = 0, 0, 0.0, time.perf_counter()

    def add(self, output: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        """Device work only: nothing comes back to the host (no sync) until the next print."""
        correct1, correct5 = _correct(output, labels)
        self.sums += torch.stack([loss.detach().double() * len(labels), correct1.double(), correct5.double()])
        self.images += len(labels)
        self.batches += 1

    def reduce(self, meters: dict[str, Meter]) -> tuple[int, float]:
        """All-reduce, fold into the meters, start a new window; returns global images and seconds."""
        totals = torch.cat([self.sums.new_tensor([self.images]), self.sums])
        count, loss_sum, correct1, correct5 = distributed.all_reduce_sum(totals).tolist()
        elapsed = time.perf_counter() - self.start
        if count:
            meters["loss"].update(loss_sum / count, int(count))
            meters["top1"].update(100 * correct1 / count, int(count))
            meters["top5"].update(100 * correct5 / count, int(count))
        batches = max(self.batches, 1)
        meters["time"].update(elapsed / batches, batches)
        meters["data"].update(self.data_seconds / batches, batches)
        self.sums.zero_()
        self.images, self.batches, self.data_seconds, self.start = 0, 0, 0.0, time.perf_counter()
        return int(count), elapsed


def _correct(output: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top = output.topk(min(5, output.shape[1]), dim=1).indices
    hits = top.eq(labels.unsqueeze(1))
    return hits[:, :1].sum(), hits.sum()


def _new_meters() -> dict[str, Meter]:
    return {name: Meter() for name in ("time", "data", "loss", "top1", "top5")}


def train_one_epoch(ctx: Context, loaders: PhaseLoaders, epoch: int) -> EpochResult:
    ctx.model.train()
    loaders.train.sampler.set_epoch(epoch)
    batches = len(loaders.train)
    meters, window = _new_meters(), _Window(ctx.world.device)
    epoch_start = last = time.perf_counter()
    with contextlib.closing(iter(ctx.device_batches(loaders.train))) as device_batches:
        for batch, (images, labels) in enumerate(device_batches):
            window.data_seconds += time.perf_counter() - last
            _update_lr(ctx, epoch, batch, batches)
            if ctx.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with ctx.autocast():
                output = ctx.model(images)
                loss = nn.functional.cross_entropy(output, labels)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.optimizer.step()
            window.add(output.detach(), labels, loss)
            done = batch + 1
            if done % ctx.print_freq == 0 or done == batches:
                _report_train(ctx, meters, window, epoch, done, batches)
            ctx.recorder.heartbeat(epoch=epoch, batch=done, batches=batches)
            ctx.node_heartbeat.beat(epoch=epoch, batch=done, batches=batches)
            last = time.perf_counter()
    return EpochResult(meters["loss"].avg, meters["top1"].avg, meters["top5"].avg,
                       time.perf_counter() - epoch_start, meters["loss"].count)


def _update_lr(ctx: Context, epoch: int, batch: int, batches: int) -> None:
    lr = ctx.schedule.lr_at(epoch, batch, batches)
    # Linear phases change the LR every iteration: announce it at print steps, as the seed did.
    if batch % ctx.print_freq == 0 and lr != ctx.announced_lr:
        log.info("Changing LR from %s to %s", ctx.announced_lr, lr, extra=console.EVENT)
        ctx.announced_lr = lr
    set_lr(ctx.optimizer, lr)
    ctx.lr = lr


def _report_train(ctx: Context, meters: dict[str, Meter], window: _Window, epoch: int, done: int,
                  batches: int) -> None:
    count, seconds = window.reduce(meters)
    ctx.examples_seen += count
    bandwidth = ctx.network.gbits()
    log.info(console.train_line(epoch, done, batches, meters["time"], meters["loss"], meters["top1"],
                                meters["top5"], meters["data"], bandwidth))
    per_process = count / ctx.world.size / max(seconds, 1e-9)
    ctx.recorder.scalars({
        "times/1gpu_images_per_sec": per_process, "times/8gpu_images_per_sec": 8 * per_process,
        "losses/xent": meters["loss"].value, "losses/train_1": meters["top1"].value,
        "losses/train_5": meters["top5"].value, "times/step": meters["time"].value,
        "times/data": meters["data"].value, "sizes/lr": ctx.lr,
        "net/recv_gbit": bandwidth[0], "net/transmit_gbit": bandwidth[1], **_memory(ctx.world.device),
    }, ctx.examples_seen)


def _memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"memory/allocated_gb": torch.cuda.memory_allocated(device) / 2**30,
                "memory/max_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return {"memory/rss_gb": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**30}


def evaluate(ctx: Context, loaders: PhaseLoaders, epoch: int) -> EpochResult:
    """Distributed validation on the bare model (DDP bypassed); every rank steps `val_steps` times."""
    model = ctx.bare_model
    model.eval()
    meters, window = _new_meters(), _Window(ctx.world.device)
    start = last = time.perf_counter()
    with torch.no_grad(), contextlib.closing(iter(ctx.device_batches(loaders.val))) as batches:
        for step in range(loaders.val_steps):
            batch = next(batches, None)
            window.data_seconds += time.perf_counter() - last
            if batch is not None:
                images, labels = batch
                with ctx.autocast():
                    output = model(images)
                    loss = nn.functional.cross_entropy(output.float(), labels)
                window.add(output, labels, loss)
            window.reduce(meters)
            done = step + 1
            if done % ctx.print_freq == 0 or done == loaders.val_steps:
                log.info(console.test_line(epoch, done, loaders.val_steps, meters["time"], meters["loss"],
                                           meters["top1"], meters["top5"]))
            # a validation longer than --hang-minutes (a big validation set on CPUs) is progress, not a hang
            ctx.node_heartbeat.beat(epoch=epoch, phase="validation", batch=done, batches=loaders.val_steps)
            last = time.perf_counter()
    return EpochResult(meters["loss"].avg, meters["top1"].avg, meters["top5"].avg,
                       time.perf_counter() - start, meters["loss"].count)
