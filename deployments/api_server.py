"""The Prefect API a command's flow runs report to when none is configured, started before the command's imports.

Without PREFECT_API_URL, Prefect starts a temporary API server itself, but only when the flow first needs it:
after this package, torch and Prefect's flow engine are imported, so a user waits for the imports and then for
the server. `api_for_flows()` starts the same server (Prefect's app, UI off, its ephemeral mode) at once, while
this process imports, and points Prefect at it; it is stopped when this process exits, and dies with it if it
is killed.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

# What Prefect 3.9 gives its own temporary server (no UI, only the services an ephemeral server runs), and no
# telemetry: on a first start its heartbeat races the database's creation and prints a "database is locked"
# traceback into the user's terminal.
SERVER_ENVIRONMENT = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "0"}
# A first start creates the database; on a busy 2-core machine that was seen to take 26 s, past Prefect's
# default 20 s. A server that is still starting is given at least this long; one that exits fails at once.
FIRST_START_SECONDS = 120

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, whatever http_proxy says


class APIServerError(RuntimeError):
    """The temporary API server exited or did not answer."""


class TemporaryAPI:
    """One API server process on 127.0.0.1, stopped at this process's exit. In a session of its own: a Ctrl-C in
    the terminal (SIGINT to its foreground process group) stops the command's run, whose teardown and last states
    still report to the server, not the server."""

    def __init__(self) -> None:
        with socket.socket() as listening:  # bound here and handed over, so no other process can take the port
            listening.bind(("127.0.0.1", 0))
            listening.listen(128)
            self.url = f"http://127.0.0.1:{listening.getsockname()[1]}/api"
            command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                       "--fd", str(listening.fileno()), "--log-level", "error", "--lifespan", "on"]
            self.process = subprocess.Popen(command, env={**os.environ, **SERVER_ENVIRONMENT},
                                            stdin=subprocess.DEVNULL, pass_fds=(listening.fileno(),),
                                            preexec_fn=_die_with_parent, start_new_session=True)
        atexit.register(self.stop)

    def wait_until_ready(self, seconds: float) -> None:
        """Block until the server answers; raises APIServerError if it exits or does not answer in `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise APIServerError(f"the temporary Prefect API server exited with status {self.process.returncode}")
            elif _answers(f"{self.url}/health"):
                return
            time.sleep(0.1)
        raise APIServerError(f"the temporary Prefect API server did not answer within {seconds:.0f} s "
                             "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def api_for_flows(module: str) -> Iterator[None]:
    """Where Prefect would start its temporary API server for the flows in `module` (no API URL configured, its
    ephemeral mode allowed), start it now, import `module` while it starts, and point Prefect at it within."""
    # Started before Prefect is imported, so that this import overlaps it too. The server resolves its settings
    # as Prefect here will (the same environment, profile and working folder); if they name an API, it is stopped.
    api = None if os.environ.get("PREFECT_API_URL") else TemporaryAPI()
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if api and (settings.api.url or not settings.server.ephemeral.enabled):
        api.stop()  # Prefect is configured to report elsewhere (a profile), or not to start a server
        api = None
    if api is None:
        yield
        return
    importlib.import_module(module)
    api.wait_until_ready(max(settings.server.ephemeral.startup_timeout_seconds, FIRST_START_SECONDS))
    # the server has no UI and ends with the command: no "View at" links to it
    with temporary_settings(updates={PREFECT_API_URL: api.url, PREFECT_UI_URL: ""}):
        yield


def unanswered_api() -> str | None:
    """What to say where the configured API (PREFECT_API_URL, of the environment or the active profile) does not
    answer; None where it does, or where none is configured. Asked once a flow failed to start: Prefect's own
    error then is a traceback."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return None
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is None:
        return None
    return (f"the Prefect API at {url} (PREFECT_API_URL, from the environment or the active profile) does not "
            f"answer ({type(failure).__name__}: {failure}): start it, or unset PREFECT_API_URL to have the command "
            "start a temporary one")


def _answers(url: str) -> bool:
    try:
        with DIRECT.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _die_with_parent() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
