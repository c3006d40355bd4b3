"""The suite's own workers (docs/testing.md): a module marked `xdist_group` runs on one worker, so its module
fixture (a Prefect server and a run, a served runner, a browser) is made once. pytest-xdist 3.8 groups by a suffix
it writes into each test's node id, which pytest 9.2 no longer reads (pytest-dev/pytest-xdist#1386): the tests are
then spread over both workers, each making every such fixture again, with nothing said."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPED = """
import os
import pytest

pytestmark = [pytest.mark.xdist_group("one")]


@pytest.mark.parametrize("index", range(6))
def test_worker(index):
    with open(os.environ["WORKERS_SEEN"], "a") as seen:
        seen.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_a_grouped_module_runs_on_one_worker_with_the_projects_options(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    seen = tmp_path / "workers-seen"
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                           str(tmp_path), "-p", "no:cacheprovider", "-q", str(tmp_path / "test_grouped.py")],
                          cwd=tmp_path, env={**os.environ, "WORKERS_SEEN": str(seen)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    workers = seen.read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, f"the group's tests ran on {workers}"
