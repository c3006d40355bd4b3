"""What a run shows on its page in the Prefect UI: artifacts for its plan, its progress (updated every epoch),
its epochs, and its summary with the loss and accuracy curves."""

from __future__ import annotations

import base64

from prefect.artifacts import MarkdownArtifact, TableArtifact

from tasks.artifacts import Progress, outbox
from tasks.planning import RunPlan, backend_for
from trainer.records import Epoch

PLAN_KEY, PROGRESS_KEY, EPOCHS_KEY, SUMMARY_KEY = ("imagenet18-plan", "imagenet18-progress", "imagenet18-epochs",
                                                   "imagenet18-summary")
DATASET_KEY = "imagenet18-dataset"


def plan_markdown(plan: RunPlan) -> str:
    p = plan.params
    rows = "\n".join(f"| {item.what} | {item.count} | ${item.hourly_usd:,.2f} | ${item.total_hourly_usd:,.2f} |"
                     for item in plan.cost.items)
    expected = (f"about **${plan.expected_usd:,.2f}** for the schedule's reference time of "
                f"{plan.reference_minutes:g} min" if plan.expected_usd is not None
                else "no reference time for this schedule")
    warmup = plan.cost.warmup
    before = (f"Before the machines start: about **{warmup.minutes:.1f} min**, {warmup.what}: "
              f"${warmup.usd:,.2f}.\n\n" if warmup else "")
    return (f"# Plan: {plan.spec.run_name}\n\n"
            f"{backend_for(p).describe(plan.spec)}, "
            f"schedule **{plan.schedule}** for {plan.epochs} epochs, dataset `{plan.dataset}`.\n\n"
            f"| resource | count | $/h each | $/h |\n|---|---|---|---|\n{rows}\n\n{before}"
            f"**${plan.cost.hourly_usd:,.2f}/h**; expected: {expected}; at most **${plan.cost.total_usd:,.2f}** "
            f"(machines end themselves after max_hours = {p.max_hours:g} h).\n\n"
            f"torch.{plan.compile}\n")


def publish_plan(plan: RunPlan) -> None:
    outbox().send(MarkdownArtifact(markdown=plan_markdown(plan), key=PLAN_KEY,
                                   description=f"{plan.spec.run_name}: resources, ${plan.cost.hourly_usd:,.2f}/h"))


class TrainingProgress:
    """A progress artifact: the share of the schedule's epochs done, with the latest accuracy."""

    def __init__(self, run_name: str, epochs: int) -> None:
        self.run_name, self.epochs, self.done = run_name, epochs, 0
        description = f"{run_name}: training, epoch 0 of {epochs}"
        self.artifact = Progress(PROGRESS_KEY, 0.0, description)
        outbox().progress(self.artifact, 0.0, description)

    def epoch_ended(self, record: Epoch) -> None:
        self.done = max(self.done, record.epoch + 1)  # a resumed epoch does not move it back
        outbox().progress(self.artifact, min(100.0, 100.0 * self.done / self.epochs),
                          f"{self.run_name}: epoch {self.done} of {self.epochs}, top-1 {record.top1:.1f}%, "
                          f"top-5 {record.top5:.1f}%")

    def finished(self, epochs: int, top1: float) -> None:
        """Training ended; a run that stopped at its target before the schedule's last epoch is done too."""
        outbox().progress(self.artifact, 100.0, f"{self.run_name}: training done, {epochs} epochs, top-1 {top1:.1f}%")


class DatasetProgress:
    """A progress artifact for the resized copies being made, created with the first images made (a dataset
    whose copies are up to date shows none)."""

    def __init__(self, run_name: str, dataset: str) -> None:
        self.run_name, self.dataset, self.artifact = run_name, dataset, None

    def update(self, done: int, total: int) -> None:
        description = f"{self.run_name}: resized copies of {self.dataset}, {done:,} of {total:,} images"
        self.artifact = self.artifact or Progress(DATASET_KEY, 0.0, description)
        outbox().progress(self.artifact, 100.0 * done / total, description)


def epoch_rows(epochs: list[Epoch]) -> list[dict]:
    return [{"epoch": e.epoch, "hours": round(e.hours, 5), "image size": e.size, "global batch": e.global_batch,
             "lr": round(e.lr, 6), "train loss": round(e.train_loss, 4), "top-1": round(e.top1, 3),
             "top-5": round(e.top5, 3)} for e in epochs]


def publish_epochs(run_name: str, epochs: list[Epoch]) -> None:
    outbox().send(TableArtifact(table=epoch_rows(epochs), key=EPOCHS_KEY, description=f"{run_name}: one row per epoch"))


def summary_markdown(result: dict, curves_png: bytes, curves_path: str) -> str:
    reached = (f"epoch {result['target_epoch']}, {result['target_hours'] * 60:.1f} min"
               if result["target_epoch"] is not None else "not reached")
    best = result.get("best")
    rows = [("top-1 / top-5", f"{result['top1']:.3f}% / {result['top5']:.3f}% after {result['epochs']} epochs "
                              f"({result.get('accuracy_of', 'the last epoch')})"),
            (f"best epoch by {result['target_metric']}", f"{best['epoch']}: {best['top1']:.3f}% / {best['top5']:.3f}%"
                                                         f", weights `{best['weights']}`" if best else "not recorded"),
            (f"time to {result['target']:g}% {result['target_metric']}", reached),
            ("training time", f"{result['hours'] * 60:.1f} min"),
            ("cost", f"${result['cost_usd']:,.2f} of training at ${result['hourly_usd']:,.2f}/h"),
            ("restarts", _restarts(result)),
            ("logs and TensorBoard events", f"`{result['storage']}`"),
            ("TensorBoard", f"`{result['tensorboard']}`"),
            ("wandb", _wandb(result.get("wandb"))),
            ("connect (while it ran)", f"`{result['connect']}`"),
            ("curves", f"`{curves_path}`")]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    image = base64.b64encode(curves_png).decode()
    return (f"# {result['run_name']}\n\n| | |\n|---|---|\n{table}\n\n"
            f"![loss and accuracy curves](data:image/png;base64,{image})\n")


def _wandb(wandb: dict | None) -> str:
    if not wandb:
        return "off (set WANDB_API_KEY to mirror runs)"
    where = wandb["url"] or f"offline, in `{wandb['dir']}`"
    if not wandb["reason"]:
        return where
    if wandb["status"] == "offline":
        return f"{where}: {wandb['reason']} (`wandb sync` uploads it)"
    return f"off: {wandb['reason']} (what it wrote: `{wandb['dir']}`)"


def _restarts(result: dict) -> str:
    if not result["restarts"]:
        return "none"
    return (f"{len(result['restarts'])}: {result['epochs_redone']} epoch(s) run twice, about "
            f"${result['restart_cost_usd']:,.2f} of waiting")


def publish_summary(result: dict, curves_png: bytes, curves_path: str) -> None:
    outbox().send(MarkdownArtifact(markdown=summary_markdown(result, curves_png, curves_path), key=SUMMARY_KEY,
                                   description=f"{result['run_name']}: top-1 {result['top1']:.1f}%"))
