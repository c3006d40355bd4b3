"""Shared fixtures: one tiny demo dataset (with its -sz/160 copy) per test session; the AWS simulator; the Prefect
API. A test that uses the simulator is marked `aws`, one that uses the session's Prefect API `server` (the tiers:
docs/testing.md)."""

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.backends.aws import consistency, permissions
from tests.awssim import AwsSim, client_environment
from tests.awssim import start as start_aws_sim
from tests.aws_runs import DATASET
from trainer.demo_data import make_demo_dataset
from trainer.prepare import prepare

REPO = Path(__file__).resolve().parent.parent

TINY = {"classes": 10, "train_per_class": 120, "val_per_class": 10}
# Two training steps of cpu-tiny's global batch (64) on 2 machines: for runs that need only get through training.
TWO_STEPS = {"classes": 10, "train_per_class": 13, "val_per_class": 2}

# A suite started in the background by a non-interactive shell (`bash .ci/run &`) inherits SIGINT ignored, and
# so would every command a test starts: the Ctrl-C tests could not stop them. A handler, unlike SIG_IGN, is not
# inherited across exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


MARKED_BY_FIXTURE = {"aws_sim": "aws", "prefect_api": "server"}


def pytest_configure(config: pytest.Config) -> None:
    """Each test worker (pytest-xdist) on its own share of the cores, which all it starts inherits. A trainer
    sizes its thread pool to the cores it may use, and two trainers each sized for all of them run several times
    slower together than one after the other (two cpu-tiny runs at once on 2 cores: 79 s each at 2 threads each,
    17 s for both at 1 thread each)."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or workers < 2:
        return
    cores, index = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")) % workers  # a restarted gwN
    share = cores[index::workers] or [cores[index % len(cores)]]
    for thread in os.listdir("/proc/self/task"):  # the affinity is each thread's; new ones copy their creator's
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread), share)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """10 classes, 120 + 10 images each, and the -sz/160 copy the cpu-tiny schedule reads. Read-only."""
    return _demo_dataset(tmp_path_factory.mktemp("data") / "demo", TINY)


@pytest.fixture(scope="session")
def two_step_data(tmp_path_factory) -> Path:
    """As tiny_data, with 13 + 2 images a class: an epoch of two steps on 2 machines. Read-only."""
    return _demo_dataset(tmp_path_factory.mktemp("two-step-data") / "demo", TWO_STEPS)


def _demo_dataset(root: Path, sizes: dict[str, int]) -> Path:
    make_demo_dataset(root, **sizes)
    prepare(root, sizes=[160])
    return root


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A private copy of the tiny dataset, for tests that break it."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_data, root)
    shutil.copytree(Path(str(tiny_data) + "-sz"), Path(str(root) + "-sz"))
    return root


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[Path]:
    """One Prefect API (the test harness's temporary server) for the session; yields IMAGENET18_HOME."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("imagenet18-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMAGENET18_HOME", str(home))
        with prefect_test_harness(server_startup_timeout=120):
            yield home


@pytest.fixture(scope="session")
def aws_sim(tmp_path_factory) -> Iterator[AwsSim]:
    """One AWS simulator (moto server + our wrapper + machine player) for the session, and the environment that
    points every boto3 / s3fs client at it with dummy keys; a developer's ~/.aws is never read."""
    home = tmp_path_factory.mktemp("awssim")
    with pytest.MonkeyPatch.context() as env:
        for name, value in client_environment(home).items():
            if value is None:
                env.delenv(name, raising=False)
            else:
                env.setenv(name, value)
        with start_aws_sim(home / "root") as sim:
            env.setenv("AWS_ENDPOINT_URL", sim.endpoint)
            yield sim


@pytest.fixture
def aws(aws_sim) -> AwsSim:
    """The session's simulator, reset: no AWS resources, faults, played processes or disk contents (nor, in this
    process, resources awaited in EC2's listings)."""
    aws_sim.reset()
    consistency.forget_all()
    return aws_sim


@pytest.fixture
def operator(aws, monkeypatch) -> str:
    """The flow's credentials become an IAM user's whose only policy is tasks/backends/aws/user_policy.json, the
    one the docs tell users to grant; the simulator refuses what it does not allow, as AWS does. Returns the
    user's ARN."""
    iam = aws.client("iam")
    user = iam.create_user(UserName="imagenet18-operator")["User"]
    iam.put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                        PolicyDocument=permissions.POLICY.read_text())
    key = iam.create_access_key(UserName="imagenet18-operator")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    return user["Arn"]


@pytest.fixture
def snapshot(aws, tiny_data) -> str:
    """The tiny dataset as the dataset snapshot (its folder `demo` and `demo-sz` at the volume's root)."""
    return aws.make_snapshot(tiny_data.parent, description=DATASET)
