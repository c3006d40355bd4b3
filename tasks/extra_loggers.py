"""The backends' and the trainer's own log lines in the flow run's log, INFO ones included."""

from __future__ import annotations

import logging

from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS, PREFECT_LOGGING_LEVEL


def extra_loggers_at_prefect_level() -> None:
    """Give each of PREFECT_LOGGING_EXTRA_LOGGERS (ours: `tasks`, `trainer`) the level of Prefect's own loggers.

    Prefect gives them its API handler but no level, so they keep the root logger's WARNING (Prefect's logging
    config), and their INFO lines (the demo dataset being made, what a teardown removed) reached no run's log."""
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value():
        logging.getLogger(name).setLevel(PREFECT_LOGGING_LEVEL.value())
