"""`imagenet18 smoke --backend aws` against the simulator: refused before anything is made when over budget or
when the doctor finds a failing check; run whole (2 machines, the cpu-tiny schedule), it leaves nothing and
reports so."""

import fsspec
import pytest

from deployments import cli
from flows.smoke import NotReady, plan_smoke, run_smoke
from tasks.backends.base import InputError
from tests.leftovers import aws_names, aws_resources
from tests.aws_runs import AMI, BUCKET, bucket_under_key, customer_managed_key

AWS = {"ami": AMI, "bucket": BUCKET}


def smoke_plan(tiny_data, **change):
    given = {"aws": AWS, "instance_type": None, "on_demand": False, "budget_usd": 5.0, "max_hours": 0.5,
             "schedule": "cpu-tiny", "epochs": 1, "dataset_root": tiny_data, **change}
    return plan_smoke(**given)


def test_the_cheapest_type_the_build_runs_on_spot_where_the_quota_allows(aws, tiny_data):
    plan = smoke_plan(tiny_data)
    assert (plan.kind.name, plan.spot) == ("g6.xlarge", True) and plan.estimate_usd < 5.0
    aws.set_quotas({"L-3819A6DF": 7})
    plan = smoke_plan(tiny_data)
    assert not plan.spot
    assert plan.market == "on-demand (the spot quota, 7 vCPUs, does not hold 2 x g6.xlarge)"


def test_the_cheapest_type_the_region_offers(aws, tiny_data):
    plan = smoke_plan(tiny_data, aws={**AWS, "region": "eu-west-1"})  # no G6 there
    assert plan.kind.name == "g5.xlarge"


@pytest.mark.parametrize("change,message", [
    ({"budget_usd": 0.2}, r"^the smoke run costs up to \$\d+\.\d\d \(2 x g6.xlarge spot for 0.5 h at \$[\d.]+/h, and "
                          r"the dataset builder's 0.5 h\), over the budget of \$0.20; raise --budget-usd"),
    ({"instance_type": "p3.16xlarge"}, "^p3.16xlarge has V100 GPUs"),
    ({"schedule": "seed-3"}, "unknown schedule 'seed-3'"),
    ({"schedule": "mine.toml"}, "schedule file mine.toml: the machines install this checkout"),
    ({"max_hours": 5}, "--max-hours 5: a smoke run takes minutes"),
])
def test_bad_input_is_refused_before_anything_is_made(aws, tiny_data, change, message):
    names = aws_names(aws)
    with pytest.raises(InputError, match=message):
        smoke_plan(tiny_data, **change)
    assert aws_resources(aws) == [] and aws_names(aws) == names
    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_an_account_the_doctor_finds_not_ready_is_refused_with_its_table(aws, tiny_data):
    aws.set_quotas({"L-DB2E81BA": 0, "L-3819A6DF": 0})
    with pytest.raises(NotReady) as refused:
        smoke_plan(tiny_data)
    assert str(refused.value).startswith("this account is not ready for a run")
    assert "Running On-Demand G and VT instances: 0 vCPUs, 0 in use, 2 x g6.xlarge need 8" in refused.value.table
    assert aws_resources(aws) == [] and aws.client("s3").list_buckets()["Buckets"] == []


@pytest.mark.slow
def test_a_smoke_run_trains_tears_down_and_reports(prefect_api, aws, tiny_data, operator):
    """In a team's results bucket, whose default encryption is a customer managed KMS key: S3 uses it as the
    operator (the project's and dataset's uploads, the report's reads) and as the machines (user_policy.json and
    the run's role allow both, through S3)."""
    bucket_under_key(aws, BUCKET, customer_managed_key(aws))
    plan = smoke_plan(tiny_data)
    report = run_smoke(plan)
    assert report.passed, report.markdown
    assert "| result | completed: top-1 " in report.markdown and "after 1 epoch(s)" in report.markdown
    assert "| machines | 2 x g6.xlarge (1 x L4 24 GB), spot" in report.markdown
    assert "| teardown | verified by tag: nothing tagged `imagenet18:run` with a run the smoke began is left; " \
           "deleted: snapshot snap-" in report.markdown
    assert report.path.read_text() == report.markdown
    assert aws_resources(aws) == [], "the run's and the builder's resources are gone"
    assert aws.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "description", "Values": [plan.name]}])["Snapshots"] == []
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/smoke"), "the uploaded dataset is deleted"
    assert fs.glob(f"{BUCKET}/runs/*/summary.json"), "the run's results stay in the bucket"


def test_the_command_prints_the_doctors_table_then_one_error_line(aws, capsys):
    aws.set_quotas({"L-DB2E81BA": 0, "L-3819A6DF": 0})
    assert cli.main(["smoke", "--backend", "aws", "--ami", AMI, "--bucket", BUCKET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("check ") and any(line.endswith("fail") for line in err)
    assert err[-1] == ("error: this account is not ready for a run (the doctor's table above says what to do); "
                       "nothing was created")
    assert aws_resources(aws) == [] and aws.client("s3").list_buckets()["Buckets"] == []


def test_a_configured_prefect_api_that_does_not_answer_is_refused_before_the_upload(aws, capsys):
    """The smoke uploads its dataset and builds its snapshot (a machine) before its first flow, which is where a
    dead API was found: after the build was paid for, as a traceback in the report."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens on port 9
        assert cli.main(["smoke", "--backend", "aws", "--ami", AMI, "--bucket", BUCKET]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: the Prefect API at http://127.0.0.1:9/api (PREFECT_API_URL, from the environment or the active "
        "profile) does not answer")
    assert aws_resources(aws) == [] and aws.client("s3").list_buckets()["Buckets"] == []
