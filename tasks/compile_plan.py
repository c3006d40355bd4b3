"""Whether torch.compile pays for a run: the training minutes it saves, phase by phase of the schedule, against the
minutes of compiling, from the rates measured on one GPU of a model (BENCHMARKS.md: ResNet-50, bf16 autocast,
channels_last, synthetic batches, torch 2.11, 16 CPU cores).

- H100 ("One H100, compiled", 2026-11-27; batch 256), img/s eager against compiled with static shapes: 7,607 /
  11,090 at 128 px, 3,841 / 5,249 at 224 px. A graph took about 69 s to compile with its timing rounds: 1.2 min.
- H200 ("One H200", 2026-12-04; the fused step): 9,614 / 9,960 at 128 px (batch 256), 4,657 / 6,601 at 224 px
  (batch 256), 2,839 / 4,042 at 288 px (batch 192). A real run's first step at 128, 224 and 288 px took 42-48 s
  with its compile: 0.8 min a graph.
- Between and beyond the measured sizes the time per image is taken as linear in its pixels (a cost per image
  plus one per pixel), segment by segment. On the H100 that gives 2,595 img/s eager at 288 px where 2,357 were
  measured on 2026-11-26, so the estimate errs towards eager there.
- Each (image size, batch) of a schedule is a graph of its own (trainer/model.py), compiled once. Every process
  compiles at the same time, so a run's wall time pays it once per graph, however many GPUs it has.
- The saving must be half again the compiling (MARGIN): the H100's 128 px eager rate varied by a quarter between
  days (7,607 and 9,729 img/s), and compiling under DDP is not measured.
On other GPU models `auto` leaves compiling off. On CPUs compiling made the step slower (BENCHMARKS.md, "Training
step, synthetic batches"), so `auto` is off there too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.parameters import Switch
from trainer.schedule import Schedule

MARGIN = 1.5


@dataclass(frozen=True)
class Rates:
    """One GPU's img/s at measured image sizes (ascending), eager and compiled, and its minutes to compile a graph."""
    sizes: tuple[int, ...]
    eager: tuple[float, ...]
    compiled: tuple[float, ...]
    compile_minutes_per_graph: float

    def images_per_second(self, size: int, compiled: bool) -> float:
        rates = self.compiled if compiled else self.eager
        right = min(max(1, sum(measured < size for measured in self.sizes)), len(self.sizes) - 1)
        (small, large), (fast, slow) = self.sizes[right - 1:right + 1], rates[right - 1:right + 1]
        share = (size ** 2 - small ** 2) / (large ** 2 - small ** 2)
        return 1 / (1 / fast + (1 / slow - 1 / fast) * share)


MEASURED = {"H100": Rates((128, 224), eager=(7607, 3841), compiled=(11090, 5249), compile_minutes_per_graph=1.2),
            "H200": Rates((128, 224, 288), eager=(9614, 4657, 2839), compiled=(9960, 6601, 4042),
                          compile_minutes_per_graph=0.8)}


def rates_for(gpu_model: str) -> Rates | None:
    """The measured rates of a GPU model as the catalogue ("H100 80 GB") or the driver ("NVIDIA H100 80GB HBM3")
    names it."""
    return next((rates for model, rates in MEASURED.items() if model in gpu_model), None)


@dataclass(frozen=True)
class Estimate:
    eager_minutes: float
    compiled_minutes: float
    graphs: int
    minutes_per_graph: float

    @property
    def saving_minutes(self) -> float:
        return self.eager_minutes - self.compiled_minutes

    @property
    def compile_minutes(self) -> float:
        return self.graphs * self.minutes_per_graph

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
    return Estimate(eager, compiled, len(graphs), rates.compile_minutes_per_graph)


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
