"""The run's scalars in wandb (rank 0), which is optional by nature: nothing wandb does may stop training.

An init that cannot reach wandb within INIT_SECONDS, or a log that fails mid-run (a lost network, a dead wandb
service), is reported and the run goes on in an offline wandb run of the same id in the same folder, whose files
`wandb sync` uploads later. If that fails too, the run goes on without wandb. Each change is handed to `report`
(the recorder's "wandb" record, which the orchestrator relays)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
WANDB_PROJECT = "imagenet18"
INIT_SECONDS = 30.0  # wandb waits 90 s, then raises; WANDB_INIT_TIMEOUT overrides this
FINISH_SECONDS = 60.0  # wandb waits for every upload, forever once the network is gone; WANDB_FINISH_TIMEOUT overrides


def wanted() -> bool:
    return bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "offline"


class WandbRun:
    def __init__(self, logdir: Path, run_name: str, config: dict, report: Callable[..., None]):
        import wandb  # imported only when used: it costs seconds

        self.wandb, self.report = wandb, report
        self.options = {"project": WANDB_PROJECT, "name": run_name, "id": wandb_id(run_name, logdir),
                        "resume": "allow", "config": config, "dir": str(logdir)}
        self.run, self.fell_back = None, False
        try:
            self.run = wandb.init(**self.options, settings=wandb.Settings(**_bounded_waits()))
        except Exception as exc:  # noqa: BLE001 - wandb raises CommError, UsageError, timeouts...: all mean "not now"
            unreachable = isinstance(exc, wandb.errors.CommError)  # a refused or timed-out connection, an HTTP error
            self._go_offline(f"{'wandb is unreachable' if unreachable else 'wandb.init failed'} ({_described(exc)})")
            return
        mode = "offline" if self.run.offline else "online"
        log.info("wandb run: %s", self.run.url or f"offline, in {self.run.dir}")
        self.report(status=mode, url=self.run.url, dir=self.run.dir, reason=None)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(values, step=step)
        except Exception as exc:  # noqa: BLE001 - see __init__
            self._go_offline(f"wandb.log failed ({_described(exc)})")
            self.log(values, step)  # in the offline run; at most once more, as a failing one is not replaced

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as exc:  # noqa: BLE001 - see __init__
            log.warning("wandb could not finish its run (%s); its files are in %s", _described(exc), self.run.dir)

    def _go_offline(self, reason: str) -> None:
        """Leave the failed run (wandb keeps one run per process) and go on in an offline one once; after that,
        without wandb."""
        failed_dir = self.run.dir if self.run is not None else None
        self.run = None
        try:
            self.wandb.teardown()
        except Exception:  # noqa: BLE001, S110 - a dead service cannot be torn down; a new one starts anyway
            pass
        if self.fell_back:
            self._stop(reason, "its offline replacement failed as well", failed_dir)
            return
        self.fell_back = True
        try:
            self.run = self.wandb.init(**self.options, mode="offline")
        except Exception as exc:  # noqa: BLE001 - see __init__
            self._stop(reason, f"an offline run failed too: {_described(exc)}", failed_dir)
            return
        log.warning("%s; the run goes on with wandb offline, in %s (`wandb sync %s` uploads it)", reason,
                    self.run.dir, Path(self.run.dir).parent)
        self.report(status="offline", url=None, dir=self.run.dir, reason=reason)

    def _stop(self, reason: str, why: str, failed_dir: str | None) -> None:
        log.warning("%s; wandb is off for the rest of this run (%s); what it wrote is in %s", reason, why, failed_dir)
        self.report(status="off", url=None, dir=failed_dir, reason=reason)


def wandb_id(run_name: str, logdir: Path) -> str:
    """The run's name and a hash of its folder: runs the flow starts in the same second share a name, not a folder
    (which holds the run's id), and a run resumed in its folder goes on in the same wandb run."""
    folder = hashlib.sha256(str(logdir.resolve()).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', run_name)[:55]}-{folder}"


def _bounded_waits() -> dict[str, float]:
    return {name: seconds for name, variable, seconds in (("init_timeout", "WANDB_INIT_TIMEOUT", INIT_SECONDS),
                                                          ("finish_timeout", "WANDB_FINISH_TIMEOUT", FINISH_SECONDS))
            if variable not in os.environ}


def _described(exc: Exception) -> str:
    """The error on one line, at most 300 characters, without the API key should a library ever quote it."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    key = os.environ.get("WANDB_API_KEY")
    return text.replace(key, "***") if key else text
