"""`imagenet18 tensorboard`: TensorBoard over runs' logs at http://127.0.0.1:<port>/, until Ctrl-C.

TensorBoard runs here over a folder or an fsspec URL (the local backend's runs, s3://<bucket>/runs/ for AWS
runs, or any --logdir), or, with via="head", on a running AWS run's machine 0 over the run's EFS folder,
reached through a port forward. Nothing listens on any address but 127.0.0.1, here or on the machine.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import fsspec

from tasks.backends import get_backend
from tasks.backends.base import BackendError, InputError, RemoteTensorBoard

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
DEFAULT_PORT = 6006
PORTS_TRIED = 100  # from DEFAULT_PORT on, when no --port is given
READY_SECONDS = 120.0
REMOTE_CHECK_SECONDS = 5.0  # how often SSM is asked whether TensorBoard still runs on machine 0
STOP_GRACE_SECONDS = 5.0
RUNS_SHOWN = 20
# urllib would send even 127.0.0.1 through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Child:
    """A process started here (TensorBoard, a port forward) in a session of its own, so that stopping it stops
    what it started too (TensorBoard's data server); its output goes to a file, to say why when it ends."""
    name: str
    process: subprocess.Popen
    output: Path

    def ended(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        lines = self.output.read_text(errors="replace").strip().splitlines()
        return f"{self.name} exited with code {code}" + (f": {lines[-1]}" if lines else "")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(STOP_GRACE_SECONDS)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of its session is left
        except ProcessLookupError:
            pass
        self.process.wait()


@dataclass
class Session:
    """TensorBoard at http://127.0.0.1:<port>/: the processes started here, and, when TensorBoard runs on
    machine 0, how to tell it ended there and the port forward the user must run when this machine can't."""
    port: int
    logdir: str  # what is served, as the user is told
    children: list[Child] = field(default_factory=list)
    remote: Callable[[], str | None] | None = None  # how TensorBoard on machine 0 ended; None while it runs
    manual_forward: tuple[list[str], str] | None = None  # (command, what to install to run it here)
    ready_timeout: float | None = READY_SECONDS  # None: wait as long as the user takes to start the forward
    _remote_checked: float = field(default=0.0, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def ended(self) -> str | None:
        """None while everything serving the URL runs; else what ended, and why."""
        for child in self.children:
            if why := child.ended():
                return why
        if self.remote and time.monotonic() - self._remote_checked >= REMOTE_CHECK_SECONDS:
            self._remote_checked = time.monotonic()
            return self.remote()
        return None

    def wait_until_serving(self, poll: float = 0.5) -> str:
        """The URL, once TensorBoard answers there."""
        deadline = None if self.ready_timeout is None else time.monotonic() + self.ready_timeout
        while not answers(self.url):
            if why := self.ended():
                raise BackendError(f"TensorBoard is not serving {self.logdir}: {why}")
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError(f"TensorBoard did not answer at {self.url} within {self.ready_timeout:.0f} s")
            time.sleep(poll)
        return self.url

    def wait(self, poll: float = 1.0) -> str:
        """Until something serving the URL ends (Ctrl-C raises KeyboardInterrupt meanwhile); says what ended."""
        while not (why := self.ended()):
            time.sleep(poll)
        return why


def answers(url: str) -> bool:
    try:
        with _DIRECT.open(f"{url}data/runs", timeout=5) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def local_port(port: int | None) -> int:
    """`port` when it is free on 127.0.0.1; without one, the first free port from 6006 on."""
    if port is not None:
        if not _free(port):
            raise InputError(f"port {port} on {HOST} is in use; choose another with --port")
        return port
    found = next((p for p in range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TRIED) if _free(p)), None)
    if found is None:
        raise InputError(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + PORTS_TRIED - 1} on {HOST} are all in use; "
                         "choose one with --port")
    return found


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def run_folders(root: str) -> list[str]:
    """The runs under `root` (a folder or fsspec URL): its subfolders, one per run."""
    try:
        fs, path = fsspec.core.url_to_fs(root)
        entries = fs.ls(path, detail=True) if fs.isdir(path) else None
    except (OSError, ValueError, ImportError) as exc:
        raise InputError(f"cannot list {root}: {exc}") from None
    if entries is None:
        raise InputError(f"{root} does not exist")
    return sorted(PurePosixPath(e["name"].rstrip("/")).name for e in entries if e["type"] == "directory")


def select_run(folders: list[str], query: str | None, where: str) -> str:
    """The one run folder (<run name>-<first 8 of the run id>) that `query` names: the folder itself, the run's
    name, or a prefix of its id. Without a query, the only run there is."""
    if query is None:
        matches = folders
    elif query in folders:
        return query
    else:
        matches = [f for f in folders if f.rsplit("-", 1)[0] == query or f.rsplit("-", 1)[-1].startswith(query[:8])]
    if len(matches) == 1:
        return matches[0]
    if query is None:
        raise InputError(f"{len(matches)} runs in {where}: {_listing(matches)}; choose one with --run NAME_OR_ID_PREFIX"
                         if matches else f"no runs in {where}")
    if not matches:
        raise InputError(f"no run matches {query!r} in {where}; "
                         + (f"runs there: {_listing(folders)}" if folders else "it has none"))
    raise InputError(f"{query!r} matches {len(matches)} runs in {where}: {_listing(matches)}; choose one with "
                     "--run NAME_OR_ID_PREFIX")


def _listing(folders: list[str]) -> str:
    more = len(folders) - RUNS_SHOWN
    return ", ".join(folders[:RUNS_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _start(name: str, command: list[str], scratch: Path, env: dict[str, str] | None = None) -> Child:
    output = scratch / f"{len(list(scratch.iterdir()))}.log"
    with open(output, "wb") as sink:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    return Child(name, process, output)


@contextmanager
def serve_folder(root: str, run: str | None, port: int | None, env: dict[str, str] | None = None
                 ) -> Iterator[Session]:
    """TensorBoard here over `root` (a folder or fsspec URL), or over its one run that `run` names."""
    folders = run_folders(root)
    logdir = f"{root.rstrip('/')}/{select_run(folders, run, root)}" if run else root
    session = Session(local_port(port), logdir)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", HOST,
               "--port", str(session.port)]
    with tempfile.TemporaryDirectory(prefix="imagenet18-tensorboard-") as scratch:
        try:
            session.children.append(_start("TensorBoard", command, Path(scratch), env))
            yield session
        finally:
            for child in session.children:
                child.stop()


@contextmanager
def serve_from_head(running: tuple[str, dict[str, RemoteTensorBoard]], run: str | None, port: int | None,
                    remote_port: int = DEFAULT_PORT) -> Iterator[Session]:
    """TensorBoard on machine 0 of the running run that `run` names (the only one, without it), over the run's
    folder there, and a port forward to it from 127.0.0.1:<port> here. `running`: a backend's running_heads()."""
    where, heads = running
    head = heads[select_run(list(heads), run, where)]
    session = Session(local_port(port), head.logdir)
    command, needs = head.forward(session.port, remote_port)
    with tempfile.TemporaryDirectory(prefix="imagenet18-tensorboard-") as scratch:
        try:
            head.start(remote_port)
            session.remote = head.ended
            if needs:
                session.manual_forward, session.ready_timeout = (command, needs), None
            else:
                session.children.append(_start("the port forward", command, Path(scratch)))
            yield session
        finally:
            for child in session.children:
                child.stop()
            try:
                head.stop()
            except Exception as exc:  # noqa: BLE001 - the machine may be gone; don't hide why we stopped
                log.warning("could not stop TensorBoard (%s): %s", head.logdir, exc)


def open_session(backend: str = "local", via: str = "bucket", logdir: str | None = None, run: str | None = None,
                 port: int | None = None, remote_port: int = DEFAULT_PORT, aws: dict | None = None,
                 home: Path | None = None) -> AbstractContextManager[Session]:
    """The session the command's options ask for (a context manager yielding a Session)."""
    store = get_backend(backend, aws, home)
    if via == "head":
        running = store.running_heads()
        if logdir:
            raise InputError("--via head serves the run's folder on its machine 0; drop --logdir")
        return serve_from_head(running, run, port, remote_port)
    folder = store.runs_folder(logdir)
    return serve_folder(folder.url, run, port, folder.env)


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP (a closed terminal) stop the command as Ctrl-C does, stopping what it started."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
