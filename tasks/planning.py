"""Validate a run and price it, before anything is created or spent. Plain Python: the CLI runs it before
starting a flow run (so bad input creates no run at all), and the flow's first task runs it again."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tasks import compile_plan
from tasks.backends import get_backend
from tasks.backends.base import Backend, ClusterSpec, CostPlan, InputError
from tasks.parameters import RunParameters
from trainer import recipe
from trainer import schedule as schedules
from trainer.layout import DataError


@dataclass(frozen=True)
class RunPlan:
    params: RunParameters
    spec: ClusterSpec
    dataset: str
    schedule: str
    epochs: int
    cost: CostPlan
    reference_minutes: float | None = None  # the schedule's known wall time on its own machines
    reads: tuple[str, ...] = ("",)  # the dataset's folders the schedule reads: "" (full size), "-sz/<px>" copies
    compile: compile_plan.CompileDecision = compile_plan.NOT_PLANNED

    def trainer_flags(self) -> list[str]:
        """The run's options the trainer takes, and the plan's decisions."""
        return self.params.trainer_flags() + (["--compile"] if self.compile.on else [])

    @property
    def expected_usd(self) -> float | None:
        return None if self.reference_minutes is None else self.cost.hourly_usd * self.reference_minutes / 60


def plan_run(params: RunParameters, run_id: str, run_name: str) -> RunPlan:
    backend = backend_for(params)
    if params.dataset is None:
        backend.ensure_default_dataset()
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=params.max_hours)
    spec = ClusterSpec(run_id, run_name, params.machines, params.resolved_instance_type, params.spot, expires)
    devices = backend.devices(spec)
    try:  # the trainer's world: a process per GPU of each machine
        plan_schedule = load_schedule(params.resolved_schedule, params.resolved_dataset,
                                      params.machines * devices.per_machine)
        schedules.check_epochs(plan_schedule, params.epochs)
    except (schedules.ScheduleError, DataError) as exc:
        raise InputError(str(exc)) from exc
    reads = tuple(dict.fromkeys(phase.trndir for phase in plan_schedule.data))
    backend.check(spec, params.resolved_dataset, reads)
    cost = backend.plan(spec, params.resolved_dataset, params.max_hours)
    if params.budget_usd is not None and cost.total_usd > params.budget_usd:
        raise InputError(f"the plan costs up to ${cost.total_usd:,.2f} ({params.max_hours} h at "
                         f"${cost.hourly_usd:,.2f}/h), over the budget of ${params.budget_usd:,.2f}")
    epochs = params.epochs or plan_schedule.epochs
    compiling = compile_plan.decide(params.compile, plan_schedule, epochs, devices.gpu_model,
                                    devices.per_machine * params.machines,
                                    lambda: backend.train_images(params.resolved_dataset))
    return RunPlan(params, spec, params.resolved_dataset, params.resolved_schedule, epochs, cost,
                   plan_schedule.reference_minutes, reads, compiling)


def backend_for(params: RunParameters) -> Backend:
    return get_backend(params.backend, params.aws)


def load_schedule(name: str, dataset: str, processes: int) -> schedules.Schedule:
    """A schedule by name or file, or `auto`: derived from the dataset (what it reads and how long it trains do
    not depend on `processes`, only its batch and learning rate do)."""
    if name == recipe.AUTO:
        return recipe.schedule_for(recipe.facts(dataset.removeprefix("file://")), processes)
    return schedules.load(name)
