"""`imagenet18`'s bad input: one clear line, exit code 2, and no flow run (the preflight runs first)."""

import subprocess
import sys
from pathlib import Path

import pytest

IMAGENET18 = str(Path(sys.executable).parent / "imagenet18")


@pytest.mark.parametrize("args,message", [
    (["run", "--dataset", "/nonexistent/imagenet"], "error: dataset /nonexistent/imagenet has no train/ folder"),
    (["run", "--schedule", "seed-3"], "error: unknown schedule 'seed-3'"),
    (["run", "--backend", "aws"], "error: no AWS credentials: set AWS_PROFILE"),
    (["run", "--backend", "aws", "--region", "moon-1"], "error: unknown AWS region 'moon-1'"),
    (["run", "--spot"], "error: --spot needs a cloud backend"),
    (["run", "--max-hours", "0"], "error: max_hours: Input should be greater than 0"),
    (["run", "--hang-minutes", "0"], "error: hang_minutes: Input should be greater than 0"),
    (["plan", "--budget-usd", "-1"], "error: budget_usd: Input should be greater than or equal to 0"),
])
def test_bad_input_is_one_line_and_creates_no_flow_run(tmp_path, tiny_data, args, message):
    env = {"IMAGENET18_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    if "--dataset" not in args:
        args = [*args, "--dataset", str(tiny_data)]
    result = subprocess.run([IMAGENET18, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], "one line"
    assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "local").exists() and not (tmp_path / "runs").exists(), "nothing was created"


def test_machine_counts_are_the_seeds():
    result = subprocess.run([IMAGENET18, "run", "--machines", "3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice: 3 (choose from 1, 2, 4, 8, 16)" in result.stderr
