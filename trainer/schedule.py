"""Training schedules as data: data phases and learning-rate phases, validated on load.

A schedule file is TOML (see trainer/schedules/*.toml):

    description = "..."
    arch = "resnet50"
    gpus_per_machine = 8        # the world the schedule was tuned for (informational)
    machines = 16
    target = 93.0               # accuracy whose first epoch is reported as time to target (default 93)
    target_metric = "top5"      # or "top1" (default top5, the seed's)

    [[data]]                    # from epoch `ep`: image size, per-process batch, directory suffix
    ep = 0
    sz = 128
    bs = 64
    trndir = "-sz/160"          # "" (default) is the full-size folder
    min_scale = 0.08            # RandomResizedCrop scale lower bound (default 0.08)
    rect_val = false            # rectangular validation (default false)

    [[data]]
    ep = 6
    bs = 128
    keep_dl = true              # only change the batch size of the current data

    [[lr]]
    ep = [0, 6]                 # linear per iteration over epochs [0, 6)
    lr = [1.88, 3.76]

    [[lr]]
    ep = 6                      # constant from epoch 6
    lr = 3.76

LRs are absolute global values, as in the seed (no world-size scaling). The run lasts until the
largest epoch any phase mentions, as the seed's train.py computed it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

DEFAULT_MIN_SCALE = 0.08
SIZE_MULTIPLE = 8
ARCHITECTURES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101")  # trainer.model builds these


class ScheduleError(ValueError):
    """A schedule file that cannot be trained from; the message names the problem."""


@dataclass(frozen=True)
class DataPhase:
    ep: int
    sz: int
    bs: int
    trndir: str = ""
    min_scale: float = DEFAULT_MIN_SCALE
    rect_val: bool = False
    keep_dl: bool = False


@dataclass(frozen=True)
class LRPhase:
    start: int
    end: int | None  # None: constant from `start` on
    lr_start: float
    lr_end: float

    def lr_at(self, epoch_progress: float) -> float:
        if self.end is None or self.lr_start == self.lr_end:
            return self.lr_start
        fraction = (epoch_progress - self.start) / (self.end - self.start)
        fraction = min(max(fraction, 0.0), 1.0)
        return self.lr_start + (self.lr_end - self.lr_start) * fraction


@dataclass(frozen=True)
class Schedule:
    name: str
    description: str
    arch: str
    machines: int | None
    gpus_per_machine: int | None
    data: tuple[DataPhase, ...]
    lr: tuple[LRPhase, ...]
    target: float = 93.0
    target_metric: str = "top5"
    reference_minutes: float | None = None  # measured wall time on the machines it was made for, if known

    @property
    def epochs(self) -> int:
        ends = [p.end or p.start for p in self.lr] + [p.ep for p in self.data]
        return max(ends)

    def data_phase(self, epoch: int) -> DataPhase:
        return [p for p in self.data if p.ep <= epoch][-1]

    def data_phase_index(self, epoch: int) -> int:
        return max(i for i, p in enumerate(self.data) if p.ep <= epoch)

    def lr_at(self, epoch: int, batch: int = 0, batches: int = 1) -> float:
        """The learning rate at iteration `batch` of `batches` in `epoch` (per-iteration interpolation)."""
        progress = epoch + batch / batches
        phase = [p for p in self.lr if p.start <= progress][-1]
        return phase.lr_at(progress)

    def fingerprint(self) -> str:
        """Identifies the schedule's content, so a checkpoint can refuse another schedule's resume."""
        body = json.dumps({"arch": self.arch, "data": [asdict(p) for p in self.data],
                           "lr": [asdict(p) for p in self.lr]}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def builtin_names() -> list[str]:
    folder = resources.files("trainer") / "schedules"
    return sorted(p.name[:-len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


AUTO = "auto"  # derived from the dataset (trainer/recipe.py)


def names_a_file(name_or_path: str | Path) -> bool:
    """Whether `load` reads this as a TOML file's path rather than a schedule's name: a built-in's name (or auto)
    is one, whatever the working folder holds."""
    path = Path(name_or_path)
    if str(name_or_path) in (AUTO, *builtin_names()):
        return False
    return path.suffix == ".toml" or path.exists()


def load(name_or_path: str | Path) -> Schedule:
    """Load a built-in schedule by name (e.g. "seed-16", "cpu-demo") or a TOML file by path."""
    path = Path(name_or_path)
    if names_a_file(path):
        if not path.is_file():
            raise ScheduleError(f"schedule file {path} does not exist")
        text, name = path.read_text(), path.stem
    else:
        resource = resources.files("trainer") / "schedules" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ScheduleError(f"unknown schedule {name_or_path!r}: built-in schedules are "
                                f"{', '.join(builtin_names())}, or give a path to a .toml file")
        text, name = resource.read_text(), str(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"schedule {name}: not valid TOML: {exc}") from exc
    return parse(raw, name)


def check_epochs(plan: Schedule, epochs: int | None) -> None:
    """`epochs` (None: the schedule's) stops a run early; past the schedule's end its learning rate is undefined."""
    if epochs is not None and epochs > plan.epochs:
        raise ScheduleError(f"epochs={epochs} is past the end of schedule {plan.name}, which trains {plan.epochs} "
                            "epochs: epochs stops a run early, and a longer run needs a longer schedule")


def seed_schedule_name(machines: int) -> str:
    return f"seed-{machines}"


def parse(raw: dict, name: str) -> Schedule:
    known = {"description", "arch", "machines", "gpus_per_machine", "data", "lr", "target", "target_metric",
             "reference_minutes"}
    unknown = set(raw) - known
    if unknown:
        raise ScheduleError(f"schedule {name}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    if not raw.get("data"):
        raise ScheduleError(f"schedule {name}: no [[data]] phases")
    if not raw.get("lr"):
        raise ScheduleError(f"schedule {name}: no [[lr]] phases")
    data = _parse_data_phases(raw["data"], name)
    lr = _parse_lr_phases(raw["lr"], name)
    schedule = Schedule(name=name, description=raw.get("description", ""),
                        arch=raw.get("arch", "resnet50"), machines=raw.get("machines"),
                        gpus_per_machine=raw.get("gpus_per_machine"), data=data, lr=lr,
                        target=float(raw.get("target", 93.0)), target_metric=raw.get("target_metric", "top5"),
                        reference_minutes=raw.get("reference_minutes"))
    if schedule.arch not in ARCHITECTURES:
        raise ScheduleError(f"schedule {name}: unknown arch {schedule.arch!r}: choose one of "
                            f"{', '.join(ARCHITECTURES)}")
    if schedule.target_metric not in ("top1", "top5") or not 0 < schedule.target <= 100:
        raise ScheduleError(f"schedule {name}: target must be a percentage in (0, 100] of 'top1' or 'top5'")
    if schedule.reference_minutes is not None and not (isinstance(schedule.reference_minutes, (int, float))
                                                       and schedule.reference_minutes > 0):
        raise ScheduleError(f"schedule {name}: reference_minutes must be a positive number of minutes")
    if schedule.data[-1].ep >= schedule.epochs:
        raise ScheduleError(f"schedule {name}: data phase at epoch {schedule.data[-1].ep} starts at or "
                            f"after the end of training (epoch {schedule.epochs}); extend an [[lr]] phase")
    return schedule


def _parse_data_phases(rows: list[dict], name: str) -> tuple[DataPhase, ...]:
    fields = {"ep", "sz", "bs", "trndir", "min_scale", "rect_val", "keep_dl"}
    phases: list[DataPhase] = []
    for row in rows:
        where = f"schedule {name}: data phase {row}"
        if set(row) - fields:
            raise ScheduleError(f"{where}: unknown keys {sorted(set(row) - fields)} (known: {sorted(fields)})")
        if not isinstance(row.get("ep"), int) or row["ep"] < 0:
            raise ScheduleError(f"{where}: 'ep' must be a non-negative integer epoch")
        if phases and row["ep"] <= phases[-1].ep:
            raise ScheduleError(f"{where}: data phases must start at strictly increasing epochs "
                                f"(previous starts at {phases[-1].ep})")
        if not phases and row["ep"] != 0:
            raise ScheduleError(f"{where}: the first data phase must start at epoch 0")
        if row.get("keep_dl"):
            if not phases:
                raise ScheduleError(f"{where}: keep_dl needs an earlier phase whose data it keeps")
            if set(row) - {"ep", "bs", "keep_dl"}:
                raise ScheduleError(f"{where}: a keep_dl phase only changes 'bs'")
            phase = DataPhase(**{**asdict(phases[-1]), "ep": row["ep"], "bs": row.get("bs", phases[-1].bs),
                                 "keep_dl": True})
        else:
            missing = {"sz", "bs"} - set(row)
            if missing:
                raise ScheduleError(f"{where}: missing {sorted(missing)} (only keep_dl phases may omit them)")
            phase = DataPhase(**row)
        _check_data_phase(phase, where)
        phases.append(phase)
    return tuple(phases)


def _check_data_phase(phase: DataPhase, where: str) -> None:
    if not isinstance(phase.sz, int) or phase.sz < SIZE_MULTIPLE or phase.sz % SIZE_MULTIPLE:
        raise ScheduleError(f"{where}: 'sz' must be an integer multiple of {SIZE_MULTIPLE}, got {phase.sz!r}")
    if not isinstance(phase.bs, int) or phase.bs < 1:
        raise ScheduleError(f"{where}: 'bs' must be a positive integer, got {phase.bs!r}")
    if not 0 < phase.min_scale <= 1:
        raise ScheduleError(f"{where}: 'min_scale' must be in (0, 1], got {phase.min_scale!r}")
    if phase.trndir and not re.fullmatch(r"-sz/[1-9][0-9]*", phase.trndir):
        raise ScheduleError(f"{where}: 'trndir' must be \"\" (full size) or a '-sz/<pixels>' suffix, "
                            f"got {phase.trndir!r}")


def _parse_lr_phases(rows: list[dict], name: str) -> tuple[LRPhase, ...]:
    phases: list[LRPhase] = []
    for row in rows:
        where = f"schedule {name}: lr phase {row}"
        if set(row) != {"ep", "lr"}:
            raise ScheduleError(f"{where}: an lr phase has exactly the keys 'ep' and 'lr'")
        ep, lr = row["ep"], row["lr"]
        if isinstance(ep, int):
            if not isinstance(lr, (int, float)):
                raise ScheduleError(f"{where}: a phase from one epoch has one constant 'lr'")
            phase = LRPhase(ep, None, float(lr), float(lr))
        elif isinstance(ep, list) and len(ep) == 2 and all(isinstance(e, int) for e in ep) and ep[0] < ep[1]:
            lrs = lr if isinstance(lr, list) else [lr, lr]
            if len(lrs) != 2 or not all(isinstance(v, (int, float)) for v in lrs):
                raise ScheduleError(f"{where}: 'lr' must be a number or [start, end]")
            phase = LRPhase(ep[0], ep[1], float(lrs[0]), float(lrs[1]))
        else:
            raise ScheduleError(f"{where}: 'ep' must be an epoch or [start, end] with start < end")
        if min(phase.lr_start, phase.lr_end) < 0:
            raise ScheduleError(f"{where}: learning rates must not be negative")
        if not phases and phase.start != 0:
            raise ScheduleError(f"{where}: the first lr phase must start at epoch 0")
        if phases:
            previous = phases[-1]
            if phase.start <= previous.start or (previous.end is not None and phase.start < previous.end):
                raise ScheduleError(f"{where}: overlaps or precedes the phase before it "
                                    f"(ep {previous.start}..{previous.end or ''}); phases must be in order")
        phases.append(phase)
    return tuple(phases)
