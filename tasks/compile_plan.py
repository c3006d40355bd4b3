"""Whether torch.compile pays for a run: the training minutes it saves, phase by phase of the schedule, against the
minutes of compiling, from the rates measured on one H100 (BENCHMARKS.md, "One H100, compiled", 2026-11-27:
ResNet-50, batch 256, bf16 autocast, channels_last, synthetic batches, torch 2.11, 16 CPU cores).

- img/s of one GPU, eager against compiled with static shapes: 7,607 / 11,090 at 128 px, 3,841 / 5,249 at 224 px.
  Between and beyond those sizes the time per image is taken as linear in its pixels (a cost per image plus one
  per pixel): at 288 px that gives 2,595 img/s eager, where 2,357 were measured on 2026-11-26 (BENCHMARKS.md, "One
  H100: the trainer against ..."), so the estimate errs towards eager there. Compiled, 288 px is not measured.
- Compiling: each (image size, batch) of a schedule is a graph of its own (trainer/model.py), compiled once; the
  224 px one took about 69 s with its timing rounds, so 1.2 min a graph. Every process compiles at the same time,
  so a run's wall time pays it once per graph, however many GPUs it has.
- The saving must be half again the compiling (MARGIN): the 128 px eager rate varied by a quarter between days
  (7,607 and 9,729 img/s), and neither 288 px compiled nor compiling under DDP is measured.
Only H100s are measured: on other GPU models `auto` leaves compiling off. On CPUs compiling made the step slower
(BENCHMARKS.md, "Training step, synthetic batches"), so `auto` is off there too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.parameters import Switch
from trainer.schedule import Schedule

COMPILE_MINUTES_PER_GRAPH = 1.2
MARGIN = 1.5


@dataclass(frozen=True)
class Rates:
    """One GPU's img/s at two measured image sizes, eager and compiled."""
    sizes: tuple[int, int]
    eager: tuple[float, float]
    compiled: tuple[float, float]

    def images_per_second(self, size: int, compiled: bool) -> float:
        (small, large), (fast, slow) = self.sizes, self.compiled if compiled else self.eager
        share = (size ** 2 - small ** 2) / (large ** 2 - small ** 2)
        return 1 / (1 / fast + (1 / slow - 1 / fast) * share)


MEASURED = {"H100": Rates((128, 224), eager=(7607, 3841), compiled=(11090, 5249))}


def rates_for(gpu_model: str) -> Rates | None:
    """The measured rates of a GPU model as the catalogue ("H100 80 GB") or the driver ("NVIDIA H100 80GB HBM3")
    names it."""
    return next((rates for model, rates in MEASURED.items() if model in gpu_model), None)


@dataclass(frozen=True)
class Estimate:
    eager_minutes: float
    compiled_minutes: float
    graphs: int

    @property
    def saving_minutes(self) -> float:
        return self.eager_minutes - self.compiled_minutes

    @property
    def compile_minutes(self) -> float:
        return self.graphs * COMPILE_MINUTES_PER_GRAPH

    @property
    def pays(self) -> bool:
        return self.saving_minutes > MARGIN * self.compile_minutes

    def __str__(self) -> str:
        return (f"~{self.saving_minutes:.1f} of ~{self.eager_minutes:.1f} min of training for "
                f"~{self.compile_minutes:.1f} min compiling {self.graphs} graph(s)")


def estimate(schedule: Schedule, epochs: int, images_per_epoch: int, gpus: int, rates: Rates) -> Estimate:
    """Training minutes of the first `epochs` epochs, eager and compiled, each GPU training its share of each
    epoch's images."""
    eager = compiled = 0.0
    graphs = set()
    ends = [phase.ep for phase in schedule.data[1:]] + [epochs]
    for phase, end in zip(schedule.data, ends):
        phase_epochs = min(end, epochs) - phase.ep
        if phase_epochs <= 0:
            continue
        images = images_per_epoch * phase_epochs / gpus
        eager += images / rates.images_per_second(phase.sz, compiled=False) / 60
        compiled += images / rates.images_per_second(phase.sz, compiled=True) / 60
        graphs.add((phase.sz, phase.bs))
    return Estimate(eager, compiled, len(graphs))


@dataclass(frozen=True)
class CompileDecision:
    on: bool
    why: str

    def __str__(self) -> str:
        return f"compile: {'on' if self.on else 'off'} ({self.why})"


NOT_PLANNED = CompileDecision(False, "not planned")


def decide(setting: Switch, schedule: Schedule, epochs: int, gpu_model: str | None, gpus: int,
           images_per_epoch: Callable[[], int]) -> CompileDecision:
    """`setting` on or off as given, auto by the estimate; `gpu_model` None trains on CPUs. `images_per_epoch` is
    called only where an estimate is made (a local dataset is counted for it)."""
    rates = rates_for(gpu_model) if gpu_model else None
    figures = estimate(schedule, epochs, images_per_epoch(), gpus, rates) if rates else None
    if setting != "auto":
        given = "--compile" if setting == "on" else "--no-compile"
        return CompileDecision(setting == "on", f"{given}; it would save {figures}" if figures else given)
    if figures:
        return CompileDecision(figures.pays, f"saves {figures}" if figures.pays else
                               f"would save {figures}, under {MARGIN:g}x the compiling; --compile forces it")
    if gpu_model is None:
        return CompileDecision(False, "training on CPUs, where compiling made the step slower; --compile forces it")
    return CompileDecision(False, f"no measured compile gain on {gpu_model} GPUs; --compile forces it")
