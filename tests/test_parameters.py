"""RunParameters is the one declaration of a run's options: the flow's keyword parameters (what Prefect's form,
schema and validation read), the CLI's options and the trainer's flags are derived from its fields."""

import inspect
import typing

import pytest
from prefect.exceptions import ParameterTypeError

from deployments import cli
from flows.imagenet18 import imagenet18
from flows.replicate import replicate
from tasks.backends.aws.options import AwsOptions
from tasks.backends.base import InputError
from tasks.parameters import TRAINER, RunParameters, Switch
from trainer import cli as trainer_cli

FIELDS = RunParameters.model_fields


def test_the_flows_keyword_parameters_are_the_models_fields():
    parameters = inspect.signature(imagenet18).parameters
    assert list(parameters) == list(FIELDS)
    assert {name: p.default for name, p in parameters.items()} == {name: f.default for name, f in FIELDS.items()}


def test_prefects_schema_has_each_fields_description_and_constraints():
    schema = imagenet18.parameters.model_dump()["properties"]
    assert {name: schema[name].get("description") for name in FIELDS} == \
        {name: field.description for name, field in FIELDS.items()}
    assert (schema["max_hours"]["exclusiveMinimum"], schema["max_hours"]["maximum"]) == (0, 72)
    assert schema["machines"]["enum"] == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("parameters,message", [
    ({"max_hours": 0}, "max_hours: Input should be greater than 0"),
    ({"target": 101}, "target: Input should be less than or equal to 100"),
    ({"restarts": -1}, "restarts: Input should be greater than or equal to 0"),
    ({"backend": "gcp"}, "backend: Input should be 'local' or 'aws'"),
    ({"aws": {"bucket": "s3://team-results/runs"}}, "'s3://team-results/runs' is a URL: give the bucket's name "
                                                    "alone, 'team-results'"),
    ({"aws": {"bucket": "team results"}}, "'team results' is not an S3 bucket name: 3 to 63 lowercase letters"),
    ({"aws": {"ssh_cidr": "203.0.113.7"}}, "'203.0.113.7' is an address: give it as a range, 203.0.113.7/32 for "
                                           "that address alone"),
    ({"aws": {"ssh_cidr": "203.0.113.7/33"}}, "'203.0.113.7/33' is not an IPv4 range in CIDR form"),
    ({"aws": {"ssh_cidr": "my laptop"}}, "'my laptop' is not an IPv4 range in CIDR form"),
    ({"aws": {"ssh_cidr": "203.0.113.0/255.255.255.0"}}, "'203.0.113.0/255.255.255.0' is not an IPv4 range in CIDR"),
    ({"aws": {"ssh_cidr": "2001:db8::/64"}}, "'2001:db8::/64' is IPv6: the run's network is IPv4 only"),
])
def test_prefect_validates_a_runs_parameters_by_the_models_constraints(parameters, message):
    with pytest.raises(ParameterTypeError, match=message):
        imagenet18.validate_parameters(parameters)


def test_an_ssh_range_with_host_bits_is_taken_as_ec2_takes_it():
    assert AwsOptions(ssh_cidr="203.0.113.7/24").ssh_cidr == "203.0.113.7/24"


def test_prefect_takes_the_parameters_a_deployment_run_passes():
    validated = imagenet18.validate_parameters({"machines": 16, "backend": "aws", "aws": {"region": "us-west-2"}})
    assert RunParameters(**validated) == RunParameters(machines=16, backend="aws", aws={"region": "us-west-2"})


def _a_value_other_than_the_default(name: str) -> list[str]:
    annotation = FIELDS[name].annotation
    if annotation is bool or annotation == Switch:  # the flag alone: true, or on
        return []
    choices = [c for c in typing.get_args(cli._option_type(annotation)) if c != FIELDS[name].default]
    if choices:
        return [str(choices[-1])]
    return [{int: "3", float: "1.5", str: "x"}[cli._option_type(annotation)]]


@pytest.mark.parametrize("name", [name for name in FIELDS if name not in cli.SET_OTHERWISE])
def test_each_option_is_a_cli_option_that_reaches_the_model(name):
    flag = f"--{name.replace('_', '-')}"
    args = cli.parser().parse_args(["run", flag, *_a_value_other_than_the_default(name)])
    given = RunParameters(**cli._flow_parameters(args, dry_run=False))
    assert getattr(given, name) != FIELDS[name].default
    assert getattr(given, name) == getattr(args, name)


def test_the_options_marked_for_the_trainer_reach_its_command_line():
    params = RunParameters(target=50.0, target_metric="top1", epochs=3, seed=5)
    marked = {name for name, field in FIELDS.items() if TRAINER in field.metadata}
    trainer_args = trainer_cli.parser().parse_args(["train", "/data", *params.trainer_flags()])
    assert {name: getattr(trainer_args, name) for name in marked} == {name: getattr(params, name) for name in marked}
    assert RunParameters().trainer_flags() == []


@pytest.mark.parametrize("flags,setting", [([], "auto"), (["--compile"], "on"), (["--no-compile"], "off")])
def test_compile_is_auto_on_or_off_from_the_cli_through_prefects_validation(flags, setting):
    args = cli.parser().parse_args(["run", *flags])
    validated = imagenet18.validate_parameters(cli._flow_parameters(args, dry_run=False))
    assert RunParameters(**validated).compile == setting


def test_compile_is_a_choice_of_three_in_prefects_form():
    schema = imagenet18.parameters.model_dump()["properties"]["compile"]
    assert (schema["enum"], schema["default"]) == (["auto", "on", "off"], "auto")
    with pytest.raises(ParameterTypeError, match="compile: Input should be 'auto', 'on' or 'off'"):
        imagenet18.validate_parameters({"compile": "sometimes"})
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["run", "--compile", "--no-compile"])


def test_an_aws_runs_region_is_the_one_boto3_would_use_unless_aws_region_says(tmp_path, monkeypatch):
    """`aws configure` writes the region to ~/.aws/config: a run goes there, not to us-east-1."""
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n[profile tokyo]\nregion = ap-northeast-1\n")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    assert AwsOptions().region == "eu-west-1"
    monkeypatch.setenv("AWS_PROFILE", "tokyo")
    assert AwsOptions().region == "ap-northeast-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert AwsOptions().region == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    assert AwsOptions().region == "us-east-2"
    config.write_text("")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(InputError, match="AWS_PROFILE names a profile"):
        AwsOptions()
    monkeypatch.delenv("AWS_PROFILE")
    assert AwsOptions().region == "us-east-1"


def test_a_local_dataset_is_named_by_its_real_absolute_path(tmp_path, monkeypatch):
    """The user's `.`, `~/...` or a link to the folder: the resized copies and the replicas follow the folder
    itself, so every stage is given the same real path; AWS names (snapshots) pass as they are."""
    real = tmp_path / "datasets" / "flowers102"
    real.mkdir(parents=True)
    (tmp_path / "flowers").symlink_to(real)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(real)
    for given in (".", "~/flowers", str(tmp_path / "flowers"), f"file://{tmp_path}/flowers"):
        assert RunParameters(dataset=given).resolved_dataset == str(real), given
    assert RunParameters(backend="aws", dataset="imagenet18-backup").resolved_dataset == "imagenet18-backup"


@pytest.mark.parametrize("parameters,message", [
    ({"replicas": 0}, "replicas: Input should be greater than or equal to 1"),
    ({"keep_hours": 0}, "keep_hours: Input should be greater than 0"),
])
def test_prefect_validates_a_replica_pools_parameters(parameters, message):
    with pytest.raises(ParameterTypeError, match=message):
        replicate.validate_parameters(parameters)


def test_a_schedules_name_is_never_a_file_of_the_working_folder(tmp_path, monkeypatch):
    """`auto` and the built-in names stay names whatever the folder the CLI runs in holds (an `auto/` folder, a
    `seed-16` file); a .toml path, or an existing file of another name, is a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "auto").mkdir()
    (tmp_path / "seed-16").write_text("")
    (tmp_path / "mine").write_text("")
    assert RunParameters(dataset=str(tmp_path)).resolved_schedule == "auto"
    assert RunParameters(backend="aws", machines=16).resolved_schedule == "seed-16"
    assert RunParameters(schedule="mine").resolved_schedule == str(tmp_path / "mine")
    assert RunParameters(schedule="elsewhere.toml").resolved_schedule == str(tmp_path / "elsewhere.toml")
