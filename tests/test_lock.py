"""The locks (.ci/lock writes them) agree with pyproject.toml, and every install uses them: the README's, CI's and
the machines'."""

import io
import platform
import re
import tarfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tasks.backends.aws.storage import project_archive
from tests.awssim.images import UBUNTU_2204
from tests.awssim.userdata import lock_gaps

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = {"requirements.lock": [], "requirements-test.lock": ["test"], "requirements-bench.lock": ["bench"]}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", re.M)


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    entries = PIN.findall(text)
    assert len(entries) == sum(line[:1].isalnum() for line in text.splitlines()), f"{lock}: an entry without a hash"
    return {canonicalize_name(name): version for name, version, _ in entries}


def test_each_lock_pins_what_pyproject_pins_at_the_same_version():
    for lock, extras in LOCKS.items():
        locked = pins(lock)
        wanted = PYPROJECT["project"]["dependencies"] + [
            requirement for extra in extras for requirement in PYPROJECT["project"]["optional-dependencies"][extra]]
        for line in wanted + PYPROJECT["build-system"]["requires"]:  # installs build with --no-build-isolation
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in locked, f"{lock} lacks {requirement.name}: run .ci/lock"
            assert requirement.specifier.contains(locked[name]), (
                f"{lock} has {requirement.name} {locked[name]}, pyproject.toml says {requirement.specifier}: "
                "run .ci/lock")


def test_the_locks_agree_with_one_another():
    runtime = pins("requirements.lock")
    for lock in ("requirements-test.lock", "requirements-bench.lock"):
        extra = pins(lock)
        assert {name: extra.get(name) for name in runtime} == runtime, f"{lock} and requirements.lock disagree"


def test_the_readme_ci_and_the_machines_install_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    first_command = re.search(r"```bash\n(?:#.*\n)*(.+)\n", readme)[1]
    assert "pip install --require-hashes -r requirements-test.lock && pip install --no-deps" in first_command
    assert "python -m pip install --quiet --require-hashes -r requirements-test.lock" in (
        ROOT / ".ci" / "run").read_text()
    user_data = (ROOT / "tasks" / "backends" / "aws" / "user_data.sh").read_text()
    assert "pip install --quiet --require-hashes -r /opt/imagenet18/requirements.lock" in user_data
    with tarfile.open(fileobj=io.BytesIO(project_archive())) as archive:
        shipped = archive.extractfile("requirements.lock").read().decode()
    assert shipped == (ROOT / "requirements.lock").read_text(), "the machines get the lock with the code"


# The Pythons the locks are installed with: the machines' (the deadsnakes PPA's python3.11, user-data), Debian
# 12's, and this one. A dependency some of them need and another does not (a marker on python_full_version) is
# locked.
PYTHONS = (UBUNTU_2204.deadsnakes["python3.11"], "3.11.2", platform.python_version())


def test_each_lock_holds_every_dependency_of_what_it_locks_on_each_python_3_11():
    """pip installs a hashed lock only if it names every dependency the interpreter's markers ask for
    ("In --require-hashes mode, all requirements must have their versions pinned"). Read from each locked
    package's metadata, as installed here (the test lock holds the runtime one)."""
    for lock in ("requirements.lock", "requirements-test.lock"):
        for python in PYTHONS:
            lacking = lock_gaps((ROOT / lock).read_text(), python)
            assert not lacking, f"{lock} lacks on Python {python}: {', '.join(lacking)}; run .ci/lock"
