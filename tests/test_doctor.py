"""`imagenet18 doctor --backend aws` against the simulator: one table, a nonzero exit with what to do when a
check fails, and nothing created, asked of the world (tests/leftovers.py) before and after."""

import json
import re

import pytest

from deployments import cli
from tasks.backends.aws import permissions
from tests.leftovers import aws_names, aws_resources
from tests.aws_runs import AMI, bucket_under_key, customer_managed_key, delete_default_vpc, users_subnet

SECRET_KEY = "testing"  # the simulator's dummy secret key (tests/awssim/client.py): never printed


def doctor(aws, capsys, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Runs the command; returns its exit code, its table's rows (check -> (result, ok/fail)) and its output,
    after checking it created nothing."""
    names = aws_names(aws)
    code = cli.main(["doctor", "--backend", "aws", "--ami", AMI, *args])
    out = capsys.readouterr().out
    assert aws_resources(aws) == [] and aws_names(aws) == names, "the doctor created nothing"
    assert SECRET_KEY not in out.replace("--service-code", "")
    header, rule, *lines = out.split("\n\n")[0].splitlines()
    assert re.fullmatch(r"check +result +ok/fail", header) and set(rule) == {"-", " "}, out
    rows = {}
    for line in lines:
        name, result, status = re.fullmatch(r"(.+?)  +(.+?)  +(ok|warn|fail|-)", line).groups()
        rows[name] = (result, status)
    return code, rows, out


def test_a_ready_account_passes_every_check(aws, capsys, operator):
    code, rows, out = doctor(aws, capsys)
    assert code == 0, out
    assert list(rows) == ["region", "credentials", "permissions", "instance type", "zones", "spot prices",
                          "quota L-417A185B (on-demand)", "quota L-DB2E81BA (on-demand)", "quota L-7212CCBC (spot)",
                          "quota L-C4BD4855 (spot)", "quota L-3819A6DF (spot)", "replicas' IOPS",
                          "EBS encryption key", "results bucket", "AMI", "network", "Elastic IPs",
                          "launch (dry run)"]
    assert {status for _, status in rows.values()} == {"ok"}, out
    assert rows["credentials"][0] == "account 123456789012"
    assert rows["permissions"][0] == "IAM allows every action of tasks/backends/aws/user_policy.json"
    assert rows["instance type"][0] == "8 x A100 40 GB, compute capability 8.0: torch 2.14.1+cu130 runs it"
    assert rows["zones"][0].startswith("p4d.24xlarge in us-east-1a, ") and "the run's zone: us-east-1a" in out
    assert rows["quota L-417A185B (on-demand)"][0] == ("Running On-Demand P instances: 2048 vCPUs, 0 in use, 16 x "
                                                       "p4d.24xlarge need 1536")
    assert rows["replicas' IOPS"][0] == ("IOPS for Provisioned IOPS SSD (io2) volumes: 500000, 0 in use, 16 replicas "
                                         "at 11500 need 184000")
    assert rows["EBS encryption key"][0] == "the account's default for EBS: alias/aws/ebs (AWS managed)"
    assert rows["results bucket"][0] == ("s3://imagenet18-123456789012-us-east-1: not there yet, made private and "
                                         "encrypted (SSE-S3) by the run")
    assert rows["AMI"][0].startswith(f"{AMI}: ")
    assert rows["network"][0].startswith("default VPC's subnet subnet-")
    assert rows["Elastic IPs"][0] == ("EC2-VPC Elastic IPs: 64, 16 x p4d.24xlarge need one each (an interface on "
                                      "each EFA card)")
    assert "what to do" not in out


def test_a_default_ebs_key_that_is_disabled_fails_with_how_to_mend_it(aws, capsys):
    key = customer_managed_key(aws, "Disabled", ebs_default=True)
    code, rows, out = doctor(aws, capsys)
    assert code == 1 and rows["EBS encryption key"] == (f"EBS cannot encrypt the disks (the account's default key for "
                                                        f"EBS) with KMS key {key}", "fail"), out
    assert "the key is Disabled; enable it (`aws kms enable-key`), or make another key the default" in out


@pytest.mark.parametrize("state", ["Enabled", "Disabled", "Enabled elsewhere"])
def test_a_results_bucket_under_a_customer_managed_key_is_checked_as_s3_will_use_it(aws, capsys, state):
    """Where the bucket is in another region than the run, so is its key."""
    if state == "Enabled elsewhere":
        key = aws.client("kms", region="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
        bucket_under_key(aws, "imagenet18-team", key, region="eu-west-1")
    else:
        key = customer_managed_key(aws, state)
        bucket_under_key(aws, "imagenet18-team", key)
    code, rows, out = doctor(aws, capsys, "--bucket", "imagenet18-team")
    if state.startswith("Enabled"):
        assert code == 0 and rows["results bucket"] == (f"s3://imagenet18-team: KMS key {key} (Enabled)", "ok"), out
    else:
        assert code == 1 and rows["results bucket"] == (f"S3 cannot encrypt the run's results in bucket "
                                                        f"imagenet18-team with KMS key {key}", "fail"), out
        assert "the key is Disabled; enable it (`aws kms enable-key`), or name another --bucket" in out


def test_a_results_bucket_whose_encryption_these_credentials_may_not_read_is_warned_of(aws, capsys, operator):
    policy = json.loads(permissions.POLICY.read_text())
    next(s for s in policy["Statement"] if s["Sid"] == "ResultsBucket")["Action"].remove(
        "s3:GetEncryptionConfiguration")
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                      PolicyDocument=json.dumps(policy))
    bucket_under_key(aws, "imagenet18-team", customer_managed_key(aws))
    code, rows, out = doctor(aws, capsys, "--bucket", "imagenet18-team")
    assert rows["results bucket"] == ("s3://imagenet18-team: not checked", "warn"), out
    assert "these credentials may not read the default encryption of bucket imagenet18-team" in out


def test_a_default_ebs_key_these_credentials_may_not_read_is_warned_of(aws, capsys, operator):
    policy = json.loads(permissions.POLICY.read_text())
    policy["Statement"][0]["Action"].remove("ec2:GetEbsDefaultKmsKeyId")
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                      PolicyDocument=json.dumps(policy))
    code, rows, out = doctor(aws, capsys)
    assert rows["EBS encryption key"] == ("the default key: not checked", "warn"), out
    assert "these credentials may not read the account's default EBS encryption key" in out


def test_too_few_elastic_ips_fail_with_the_request_to_make_and_a_type_with_one_interface_needs_none(aws, capsys):
    aws.set_quotas({"L-0263D0A3": 5})
    code, rows, out = doctor(aws, capsys)
    assert code == 1 and rows["Elastic IPs"] == (
        "16 machines need 16 Elastic IPs (one each, with an interface on every EFA card)", "fail"), out
    assert "--quota-code L-0263D0A3 --desired-value 16`" in out
    code, rows, out = doctor(aws, capsys, "--instance-type", "g5.xlarge")
    assert code == 0 and rows["Elastic IPs"] == (
        "none needed: each machine gets its address at launch, or reaches out through a NAT", "ok"), out


def test_a_new_accounts_io2_iops_quota_fails_the_seeds_sixteen_replicas_and_gp3_has_none(aws, capsys):
    aws.set_quotas({"L-8D977E7E": 100_000})
    code, rows, out = doctor(aws, capsys)
    assert code == 1 and rows["replicas' IOPS"] == (
        "16 io2 dataset replica(s) at 11500 IOPS need 184000 of the quota \"IOPS for Provisioned IOPS SSD "
        "(io2) volumes\" (L-8D977E7E) in us-east-1, which is 100000 with 0 in use by the account's volumes",
        "fail"), out
    assert "--service-code ebs --quota-code L-8D977E7E --desired-value 184000`" in out
    code, rows, out = doctor(aws, capsys, "--volume-type", "gp3", "--iops", "3000")
    assert code == 0 and rows["replicas' IOPS"] == ("gp3 volumes have no IOPS quota", "ok"), out


def test_credentials_missing_some_of_the_policy_fail_with_what_they_may_not_do(aws, capsys, operator):
    iam = aws.client("iam")
    policy = json.loads(permissions.POLICY.read_text())
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "PassTheRunsRoleToItsMachines"]
    policy["Statement"][0]["Action"].remove("ec2:AllocateAddress")
    iam.put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18", PolicyDocument=json.dumps(policy))
    code, rows, out = doctor(aws, capsys)
    assert code == 1 and rows["permissions"] == (
        "these credentials may not ec2:AllocateAddress, iam:PassRole", "fail"), out
    assert "attach tasks/backends/aws/user_policy.json to their user or role" in out


@pytest.mark.parametrize("sid, service", [("SpotsServiceLinkedRole", "spot.amazonaws.com"),
                                          ("FileSystemsServiceLinkedRole", "elasticfilesystem.amazonaws.com")])
def test_credentials_that_may_not_make_a_service_linked_role_pass_where_it_exists(aws, capsys, operator, sid,
                                                                                   service):
    policy = json.loads(permissions.POLICY.read_text())
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != sid]
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                      PolicyDocument=json.dumps(policy))
    code, rows, out = doctor(aws, capsys)
    assert code == 1 and rows["permissions"] == ("these credentials may not iam:CreateServiceLinkedRole", "fail"), out
    aws.client("iam").create_service_linked_role(AWSServiceName=service)  # an administrator's
    code, rows, out = doctor(aws, capsys)
    assert code == 0 and rows["permissions"][1] == "ok", out


def test_credentials_without_the_kms_and_prices_statements_are_warned_of_and_fail_with_a_customer_managed_key(
        aws, capsys, operator):
    """Credentials granted the policy before it named KMS and the Price List: EBS uses the AWS managed key without
    a grant of theirs, a customer managed default key only with one; a plan without the region's prices takes
    us-east-1's."""
    policy = json.loads(permissions.POLICY.read_text())
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] not in (
        permissions.KEY_CHECKS, permissions.CUSTOMER_MANAGED_KEYS, permissions.PRICES)]
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                      PolicyDocument=json.dumps(policy))
    refused = "kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext, pricing:GetProducts"
    code, rows, out = doctor(aws, capsys)
    assert code == 0 and rows["permissions"] == (
        f"these credentials may not {refused}, which a run can do without", "warn"), out
    assert ("without kms:DescribeKey, a run cannot check its disks' KMS keys, and says so as it starts; without "
            "kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext, EBS encrypts with the "
            "account's default key, AWS managed, without them; a dataset snapshot encrypted with a customer managed "
            "key would need them; without pricing:GetProducts, the cost plan takes the machines' us-east-1 price, and "
            "says so") in out
    customer_managed_key(aws, ebs_default=True)
    code, rows, out = doctor(aws, capsys)
    assert code == 1 and rows["permissions"] == (f"these credentials may not {refused}", "fail"), out


def test_credentials_without_s3s_kms_statement_are_warned_of_and_fail_with_a_bucket_under_a_customer_managed_key(
        aws, capsys, operator):
    policy = json.loads(permissions.POLICY.read_text())
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != permissions.BUCKET_KEYS]
    aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                      PolicyDocument=json.dumps(policy))
    bucket_under_key(aws, "imagenet18-managed", None)
    code, rows, out = doctor(aws, capsys, "--bucket", "imagenet18-managed")
    assert code == 0 and rows["permissions"] == (
        "these credentials may not kms:Decrypt, kms:GenerateDataKey, which a run can do without", "warn"), out
    assert rows["results bucket"] == ("s3://imagenet18-managed: KMS key alias/aws/s3 (AWS managed)", "ok"), out
    assert "S3 encrypts the results bucket without them; a dataset bucket under a customer managed KMS key" in out
    bucket_under_key(aws, "imagenet18-team", customer_managed_key(aws))
    code, rows, out = doctor(aws, capsys, "--bucket", "imagenet18-team")
    assert code == 1 and rows["permissions"] == (
        "these credentials may not kms:Decrypt, kms:GenerateDataKey", "fail"), out


def test_credentials_that_may_not_ask_iam_what_they_may_do_are_warned_of_with_the_refused_call(aws, capsys):
    code, rows, out = doctor(aws, capsys)  # the simulator's own test keys: no IAM user of the account
    assert rows["permissions"] == ("not checked: IAM answered NoSuchEntity to iam:SimulatePrincipalPolicy",
                                   "warn"), out
    aws.add_fault("iam", "ListRoles", "AccessDenied", status=403, match={"PathPrefix": "/aws-service-role/.*"})
    code, rows, out = doctor(aws, capsys)
    assert rows["permissions"] == ("not checked: IAM answered AccessDenied to iam:ListRoles", "warn"), out


def test_a_zero_quota_fails_with_the_request_to_make(aws, capsys):
    aws.set_quotas({"L-3819A6DF": 0, "L-417A185B": 0})
    code, rows, out = doctor(aws, capsys, "--machines", "2")
    assert code == 1
    assert rows["quota L-417A185B (on-demand)"] == (
        "Running On-Demand P instances: 0 vCPUs, 0 in use, 2 x p4d.24xlarge need 192", "fail")
    assert rows["quota L-3819A6DF (spot)"] == ("All G and VT Spot Instance Requests: 0 vCPUs (not this run's)", "warn")
    assert ("- quota L-417A185B (on-demand): 2 x p4d.24xlarge need 192 vCPUs of the quota \"Running On-Demand P "
            "instances\" (L-417A185B) in us-east-1, which is 0 for this account (a new account's is 0): ask AWS for "
            "more") in out
    assert "--quota-code L-417A185B --desired-value 192`" in out


def test_spot_checks_the_spot_quota(aws, capsys):
    aws.set_quotas({"L-3819A6DF": 3})
    code, rows, out = doctor(aws, capsys, "--spot", "--instance-type", "g5.xlarge", "--machines", "1")
    assert code == 1
    assert rows["quota L-3819A6DF (spot)"] == (
        "All G and VT Spot Instance Requests: 3 vCPUs, 0 in use, 1 x g5.xlarge need 4", "fail")
    assert rows["quota L-DB2E81BA (on-demand)"][1] == "ok", "the on-demand quota is not this run's"
    assert rows["launch (dry run)"] == ("EC2 would start 1 x g5.xlarge spot (permissions only)", "ok")


def test_without_a_default_vpc_the_network_fails_with_its_remedies(aws, capsys):
    delete_default_vpc(aws)
    code, rows, out = doctor(aws, capsys)
    assert code == 1
    assert rows["network"] == ("no default subnet in us-east-1a (no default VPC?)", "fail")
    assert ("- network: this account has no default subnet in us-east-1a (no default VPC in us-east-1?), so EC2 "
            "cannot check the launch before anything is made") in out
    assert rows["launch (dry run)"] == ("not checked: needs the zone, AMI and network above", "-")
    assert "give aws.subnet_id" in out and "`aws ec2 create-default-vpc --region us-east-1`" in out


def test_a_users_subnet_is_checked_for_its_way_out(aws, capsys):
    delete_default_vpc(aws)
    code, rows, out = doctor(aws, capsys, "--subnet", users_subnet(aws, way_out=False))
    assert code == 1 and rows["network"][1] == "fail" and "has no way out to the internet" in rows["network"][0]


def test_vpc_block_public_access_on_the_runs_own_network_fails_with_its_remedies(aws, capsys):
    aws.block_public_access("block-ingress")
    code, rows, out = doctor(aws, capsys)
    assert code == 1
    assert rows["network"] == ("VPC Block Public Access is on in us-east-1 (block-ingress)", "fail")
    assert "name a subnet (aws.subnet_id) behind a NAT gateway, or in a VPC or subnet excluded from it" in out


def test_a_users_vpc_with_dns_servers_of_its_own_is_a_warning(aws, capsys):
    delete_default_vpc(aws)
    code, rows, out = doctor(aws, capsys, "--subnet", users_subnet(aws, dns_servers=("10.99.0.53",)))
    assert rows["network"][1] == "warn" and "DNS servers of its own" in rows["network"][0], out
    assert "unless those servers forward amazonaws.com names to it" in out


@pytest.mark.parametrize("instance_type,message", [
    ("p3.16xlarge", "p3.16xlarge has V100 GPUs (compute capability 7.0), which torch 2.14.1+cu130, the machines' "
                    "build, has no kernels for (it needs 7.5 or newer)"),
    ("p9.mega", "unknown instance type 'p9.mega'"),
])
def test_a_type_the_build_cannot_run_fails(aws, capsys, instance_type, message):
    code, rows, out = doctor(aws, capsys, "--instance-type", instance_type)
    assert code == 1 and rows["instance type"] == (message, "fail"), out
    assert "choose one of p4d.24xlarge, p5.48xlarge, g5.xlarge, g6.xlarge" in out


def test_without_credentials_nothing_else_is_asked(aws, capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = cli.main(["doctor", "--backend", "aws"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"^credentials +no AWS credentials +fail$", out, re.M), out
    assert re.search(r"^AMI +not checked: needs the region and credentials above +-$", out, re.M), out
