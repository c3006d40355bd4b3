"""A run's loss and accuracy curves as a PNG, from the trainer's epoch records (metrics.jsonl)."""

from __future__ import annotations

import io

import matplotlib

from trainer.records import Epoch

matplotlib.use("Agg")  # no display on servers and machines; must precede pyplot

from matplotlib import pyplot  # noqa: E402


def curves_png(epochs: list[Epoch], title: str, target: float | None = None, target_metric: str | None = None
               ) -> bytes:
    """Two panels against epochs: train and validation loss; top-1 and top-5 with the target, if any."""
    figure, (losses, accuracy) = pyplot.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        x = [record.epoch for record in epochs]
        losses.plot(x, [record.train_loss for record in epochs], marker="o", label="train loss")
        losses.plot(x, [record.val_loss for record in epochs], marker="o", label="validation loss")
        losses.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
        accuracy.plot(x, [record.top1 for record in epochs], marker="o", label="top-1")
        accuracy.plot(x, [record.top5 for record in epochs], marker="o", label="top-5")
        if target is not None:
            accuracy.axhline(target, color="grey", linestyle="--", label=f"target {target:g}% {target_metric}")
        accuracy.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy", ylim=(0, 100))
        for axes in (losses, accuracy):
            axes.grid(alpha=0.3)
            axes.legend()
        figure.suptitle(title)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        pyplot.close(figure)
