"""What the project's own loggers say reaches the flow run's log in Prefect's API."""

import logging
import os
import subprocess
import sys
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from tasks.extra_loggers import NamesEscaped
from tests.prefect_server import flow_run_logs

REPO = Path(__file__).resolve().parents[1]
# A flow warning of a file with a Latin-1 name (an old archive's), which Python holds with a surrogate; the loggers
# reach the API as the CLI and the deployments set them.
WARNS = """
import logging, os
from prefect import flow
from prefect.runtime import flow_run
from tasks.extra_loggers import extra_loggers_at_prefect_level

@flow
def warns():
    extra_loggers_at_prefect_level()
    path = os.fsdecode(b"/data/train/cat/caf\\xe9.JPEG")
    logging.getLogger("trainer.prepare").warning("skipping corrupt or unreadable image %s", path)
    print(flow_run.id)

warns()
"""


def test_a_file_name_that_is_not_utf8_reaches_the_runs_log_escaped(prefect_api):
    """The API's JSON refuses a surrogate: Prefect's handler printed a traceback for the line and dropped it, so the
    warning naming the file never reached the run's log in the UI."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,trainer"}
    result = subprocess.run([sys.executable, "-c", WARNS], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "Logging error" not in result.stderr, result.stderr[-3000:]
    flow_run_id = result.stdout.strip().splitlines()[-1]
    messages = [log.message for log in flow_run_logs(flow_run_id, until="skipping corrupt")]
    assert "skipping corrupt or unreadable image /data/train/cat/caf\\xe9.JPEG" in messages


def test_escaping_never_fails_the_line_it_is_given():
    """The filter runs before the handler's own error handling, on every flow's and task's line: one that raised
    would fail the code that logs, where a line with the wrong arguments is only reported by the handler."""
    escaping = NamesEscaped()
    wrong = logging.LogRecord("tasks", logging.WARNING, __file__, 1, "%s and %s", ("one",), None)
    half_an_emoji = logging.LogRecord("tasks", logging.WARNING, __file__, 1, "half %s", ("\ud83d",), None)
    assert escaping.filter(wrong) and wrong.msg == "%s and %s"
    assert escaping.filter(half_an_emoji) and half_an_emoji.getMessage() == "half \\ud83d"
