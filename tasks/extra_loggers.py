"""The backends' and the trainer's own log lines in the flow run's log, INFO ones included."""

from __future__ import annotations

import logging

from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS, PREFECT_LOGGING_LEVEL


def extra_loggers_at_prefect_level() -> None:
    """Give each of PREFECT_LOGGING_EXTRA_LOGGERS (ours: `tasks`, `trainer`) the level of Prefect's own loggers,
    and their lines a form the API takes.

    Prefect gives them its API handler but no level, so they keep the root logger's WARNING (Prefect's logging
    config), and their INFO lines (the demo dataset being made, what a teardown removed) reached no run's log."""
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value():
        logger = logging.getLogger(name)
        logger.setLevel(PREFECT_LOGGING_LEVEL.value())
        for handler in logger.handlers:
            if not any(isinstance(f, NamesEscaped) for f in handler.filters):
                handler.addFilter(NamesEscaped())


class NamesEscaped(logging.Filter):
    """A file name that is not UTF-8 (a Latin-1 "café.JPEG" from an old archive, which Python holds with a
    surrogate) written with its odd bytes escaped, caf\\xe9.JPEG: the API's JSON takes no surrogate, and Prefect's
    handler printed a traceback for such a line and dropped it. A filter of the handler's: a logger's own filters
    miss its children's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a call's own mistake (wrong arguments): the handler reports it, not here
            return True
        try:
            escaped = message.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no name's byte makes (half of an emoji's UTF-16 pair)
            escaped = message.encode("utf-8", "backslashreplace")
        if (text := escaped.decode("utf-8", "backslashreplace")) != message:
            record.msg, record.args = text, None
        return True
