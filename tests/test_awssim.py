"""The AWS simulator through real boto3: what our wrapper adds to moto, and the machine player."""

import datetime as dt
import json
import re
import threading
import time
import uuid
from pathlib import Path

import boto3
import fsspec
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tasks.backends.aws import catalog, jobs, machines
from tasks.backends.aws.clients import Clients
from tasks.backends.base import ClusterSpec, Machine
from tests.awssim import gpus
from tests.awssim.encryption import VANISH_S
from tests.awssim.hibernation import AgentLife
from tests.awssim.throttle import TokenBucket
from tests.awssim.images import UBUNTU_2204, UBUNTU_2404, UNDESCRIBED
from tests.aws_runs import agents_online, bucket_under_key, customer_managed_key
from tests.processes import alive
from tests.support import wait_for

RUN = {"Key": "imagenet18:run", "Value": "run-1"}
NO_RETRIES = {"total_max_attempts": 1}
IMAGE = UNDESCRIBED
# A boot that restarts SSM's agent once its machine has a way out, as the runs' machines' boot does when the agent
# hibernated: otherwise an agent whose first ping found no way out waits 5 minutes before the next.
RESTARTS_AGENT = "#!/bin/bash\nsystemctl restart --no-block snap.amazon-ssm-agent.amazon-ssm-agent.service\n"


def launch(ec2, instance_type="g5.xlarge", image=IMAGE, **kwargs):
    response = ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1, **kwargs)
    return response["Instances"][0]["InstanceId"]


def state(ec2, instance_id) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def terminate(ec2, *instance_ids: str) -> None:
    """Terminated, not only shutting down: what depends on the machines goes with them."""
    ec2.terminate_instances(InstanceIds=list(instance_ids))
    ec2.get_waiter("instance_terminated").wait(InstanceIds=list(instance_ids), WaiterConfig={"Delay": 0.2})


def error_code(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    return raised.value.response["Error"]["Code"]



def public_subnet_behind_a_gateway(ec2, prefix: str) -> tuple[str, str, str, str]:
    """A VPC (`prefix`.0.0/16) with a subnet in us-east-1a that gives public addresses, its route out an internet
    gateway: (VPC, subnet, gateway, route table)."""
    vpc = ec2.create_vpc(CidrBlock=f"{prefix}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{prefix}.0.0/20", AvailabilityZone="us-east-1a")["Subnet"][
        "SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    return vpc, subnet, gateway, table


def agent_states(aws, *instance_ids: str) -> list[str]:
    """Where each machine's SSM agent is: starting, hibernating or registered."""
    states = {m["instance_id"]: m["agent"] for m in aws.machines()}
    return [states.get(i) for i in instance_ids]


def run_everywhere(aws, ssm, instances: list[str], command: str) -> dict[str, dict]:
    """One shell command on each instance, once their agents are online: instance -> its invocation, ended."""
    wait_for(lambda: all(agents_online(ssm, i) for i in instances), seconds=20)
    sent = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=instances,
                            Parameters={"commands": [command]})["Command"]["CommandId"]
    wait_for(lambda: all(p["exit_code"] is not None for p in aws.played()))
    return {i: ssm.get_command_invocation(CommandId=sent, InstanceId=i) for i in instances}


def available_group(ec2, name: str, **kwargs) -> dict:
    """A new cluster placement group, once it is available."""
    ec2.create_placement_group(GroupName=name, Strategy="cluster", **kwargs)
    return wait_for(lambda: next((g for g in ec2.describe_placement_groups(GroupNames=[name])["PlacementGroups"]
                                  if g["State"] == "available"), None), what=f"{name} available")


def test_placement_groups(aws):
    ec2 = aws.client("ec2")
    tags = [{"ResourceType": "placement-group", "Tags": [RUN]}]
    group = available_group(ec2, "pg-1", TagSpecifications=tags)
    assert group["GroupId"].startswith("pg-") and group["Tags"] == [RUN]
    assert error_code(ec2.create_placement_group, GroupName="pg-1", Strategy="cluster") == (
        "InvalidPlacementGroup.Duplicate"
    )
    ec2.create_placement_group(GroupName="other", Strategy="spread")
    found = ec2.describe_placement_groups(Filters=[{"Name": "tag:imagenet18:run", "Values": ["run-1"]}])
    assert [g["GroupName"] for g in found["PlacementGroups"]] == ["pg-1"]
    assert error_code(ec2.describe_placement_groups, GroupNames=["nope"]) == "InvalidPlacementGroup.Unknown"
    assert error_code(launch, ec2, Placement={"GroupName": "nope"}) == "InvalidPlacementGroup.Unknown"

    instance = launch(ec2, "p3.16xlarge", Placement={"GroupName": "pg-1", "AvailabilityZone": "us-east-1a"})
    assert error_code(ec2.delete_placement_group, GroupName="pg-1") == "InvalidPlacementGroup.InUse"
    terminate(ec2, instance)
    ec2.delete_placement_group(GroupName="pg-1")
    wait_for(lambda: [g["GroupName"] for g in ec2.describe_placement_groups()["PlacementGroups"]] == ["other"])


def test_a_placement_group_is_pending_before_it_is_available_and_deleting_before_it_is_gone(aws):
    """As on AWS (API_PlacementGroup's State): a launch into a group is refused until it is available, and its
    name stays taken while it is deleting."""
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    aws.set_placement_changing(4)
    created = ec2.create_placement_group(GroupName="pg-new", Strategy="cluster")["PlacementGroup"]
    assert created["State"] == "pending"
    assert error_code(launch, ec2, "p4d.24xlarge", Placement={"GroupName": "pg-new"}) == (
        "InvalidPlacementGroup.Unknown")
    available_group(ec2, "pg-later")
    wait_for(lambda: ec2.describe_placement_groups(GroupNames=["pg-new"])["PlacementGroups"][0]["State"] == (
        "available"))
    launch(ec2, "p4d.24xlarge", Placement={"GroupName": "pg-new"})
    ec2.delete_placement_group(GroupName="pg-later")
    assert ec2.describe_placement_groups(GroupNames=["pg-later"])["PlacementGroups"][0]["State"] == "deleting"
    assert error_code(ec2.create_placement_group, GroupName="pg-later", Strategy="cluster") == (
        "InvalidPlacementGroup.Duplicate")
    assert error_code(launch, ec2, "p4d.24xlarge", Placement={"GroupName": "pg-later"}) == (
        "InvalidPlacementGroup.Unknown")
    wait_for(lambda: [g["GroupName"] for g in ec2.describe_placement_groups()["PlacementGroups"]] == ["pg-new"])
    ec2.create_placement_group(GroupName="pg-later", Strategy="cluster")


def test_ebs_encrypts_with_the_default_key_or_an_owned_snapshots_and_drops_a_volume_whose_key_is_disabled(aws):
    """EC2 answers CreateVolume with the volume creating. An encrypted volume takes the account's default EBS key
    (AWS managed, `alias/aws/ebs`, until another is set), or the key of the encrypted snapshot it is made from; one
    whose customer managed key is disabled is gone moments later, never available."""
    ec2, kms = aws.client("ec2"), aws.client("kms")
    assert ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["State"] == "creating"
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == "alias/aws/ebs"
    managed = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == "alias/aws/ebs", "the alias, even once the key exists"
    assert kms.describe_key(KeyId=managed["KmsKeyId"])["KeyMetadata"]["KeyManager"] == "AWS"
    snapshot = ec2.create_snapshot(VolumeId=managed["VolumeId"])
    assert snapshot["Encrypted"] and snapshot["KmsKeyId"] == managed["KmsKeyId"]
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=managed["KmsKeyId"])
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == managed["KmsKeyId"], "a key chosen: by its ARN"

    made = kms.create_key()["KeyMetadata"]
    key = made["Arn"]
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key)
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == key
    kms.disable_key(KeyId=made["KeyId"])
    doomed = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)
    from_snapshot = ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=snapshot["SnapshotId"],
                                      Encrypted=True)
    kept = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    unknown = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True,  # accepted, as EC2 does
                                KmsKeyId=key.replace(made["KeyId"], "00000000-0000-0000-0000-000000000000"))
    assert (doomed["State"], doomed["Encrypted"], doomed["KmsKeyId"]) == ("creating", True, key)
    assert from_snapshot["KmsKeyId"] == managed["KmsKeyId"], "an owned snapshot's key, not the default"
    wait_for(lambda: not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [
        doomed["VolumeId"], unknown["VolumeId"]]}])["Volumes"], 10, "the volumes to go")
    assert [v["State"] for v in ec2.describe_volumes(VolumeIds=[kept, from_snapshot["VolumeId"]])["Volumes"]] == [
        "available", "available"]


def test_ebs_drops_a_users_volume_whose_customer_managed_key_the_user_may_not_use(aws):
    """An IAM user's encrypted volume under a customer managed key needs EBS's KMS actions on it through EC2; the
    AWS managed key needs none of the user's policies."""
    iam, kms = aws.client("iam"), aws.client("kms")
    iam.create_user(UserName="key-user")
    ec2_only = {"Effect": "Allow", "Action": ["ec2:CreateVolume", "ec2:DescribeVolumes"], "Resource": "*"}
    iam.put_user_policy(UserName="key-user", PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [ec2_only]}))
    keys = iam.create_access_key(UserName="key-user")["AccessKey"]
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=aws.endpoint,
                       aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"])

    def stays() -> bool:
        volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)["VolumeId"]
        time.sleep(2 * VANISH_S)
        return bool(ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"])

    assert stays(), "the AWS managed key"
    aws.client("ec2").modify_ebs_default_kms_key_id(KmsKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    assert not stays(), "a customer managed key the user's policies say nothing of"
    through_ec2 = {"Effect": "Allow", "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey",
                                                 "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncrypt*"],
                   "Resource": "*", "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}}
    iam.put_user_policy(UserName="key-user", PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [ec2_only, through_ec2]}))
    assert stays(), "allowed EBS's KMS actions through EC2"


def test_s3_uses_a_customer_managed_key_as_its_caller_whom_the_key_must_allow(aws):
    """Uploads under a bucket's default SSE-KMS key need kms:GenerateDataKey of the caller, an IAM user or a role's
    session, as does the start of a multipart upload; its parts and downloads need kms:Decrypt, through S3. The AWS
    managed key aws/s3 needs nothing of them, and an upload asking for AES256 no key."""
    iam, kms, s3, sts = aws.client("iam"), aws.client("kms"), aws.client("s3"), aws.client("sts")
    aws.set_iam_propagation(0)  # IAM's own consistency is another test's
    key = kms.create_key()["KeyMetadata"]
    bucket_under_key(aws, "managed", None)
    bucket_under_key(aws, "customer", key["KeyId"])
    s3.put_object(Bucket="customer", Key="kept", Body=b"theirs")
    s3_only = {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "*"}
    iam.create_user(UserName="s3-user")
    keys = iam.create_access_key(UserName="s3-user")["AccessKey"]
    iam.create_role(RoleName="s3-role", AssumeRolePolicyDocument="{}")
    iam.put_role_policy(RoleName="s3-role", PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [s3_only]}))
    session = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/s3-role", RoleSessionName="machine")[
        "Credentials"]

    def client(access_key: str, secret_key: str, token: str | None = None):
        return boto3.client("s3", region_name="us-east-1", endpoint_url=aws.endpoint, config=Config(
            retries=NO_RETRIES), aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            aws_session_token=token)

    def users_policy(*statements) -> None:
        iam.put_user_policy(UserName="s3-user", PolicyName="p", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [s3_only, *statements]}))

    users_s3 = client(keys["AccessKeyId"], keys["SecretAccessKey"])
    roles_s3 = client(session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"])
    users_policy()
    users_s3.put_object(Bucket="managed", Key="k", Body=b"x")
    assert users_s3.get_object(Bucket="managed", Key="k")["Body"].read() == b"x", "the AWS managed key"
    users_s3.put_object(Bucket="customer", Key="plain", Body=b"x", ServerSideEncryption="AES256")
    assert users_s3.get_object(Bucket="customer", Key="plain")["Body"].read() == b"x"
    for caller, who in ((users_s3, r"arn:aws:iam::123456789012:user/s3-user"),
                        (roles_s3, r"arn:aws:sts::123456789012:assumed-role/s3-role/machine")):
        with pytest.raises(ClientError, match=f"^An error occurred \\(AccessDenied\\) when calling the PutObject "
                                              f"operation: User: {who} is not authorized to perform: "
                                              f"kms:GenerateDataKey on resource: {re.escape(key['Arn'])}"):
            caller.put_object(Bucket="customer", Key="k", Body=b"x")
        assert error_code(caller.create_multipart_upload, Bucket="customer", Key="k") == "AccessDenied"
        with pytest.raises(ClientError, match="not authorized to perform: kms:Decrypt"):
            caller.get_object(Bucket="customer", Key="kept")

    through_s3 = {"Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": key["Arn"],
                  "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}}}
    users_policy(through_s3)
    users_s3.put_object(Bucket="customer", Key="k", Body=b"y")
    upload = users_s3.create_multipart_upload(Bucket="customer", Key="big")["UploadId"]
    with pytest.raises(ClientError, match="not authorized to perform: kms:Decrypt"):
        users_s3.upload_part(Bucket="customer", Key="big", UploadId=upload, PartNumber=1, Body=b"part")
    users_policy({**through_s3, "Action": ["kms:GenerateDataKey", "kms:Decrypt"]})
    users_s3.upload_part(Bucket="customer", Key="big", UploadId=upload, PartNumber=1, Body=b"part")
    assert users_s3.get_object(Bucket="customer", Key="kept")["Body"].read() == b"theirs"
    european = aws.client("kms", region="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
    bucket_under_key(aws, "european", european, region="eu-west-1")
    s3.put_object(Bucket="european", Key="k", Body=b"x")  # signed for us-east-1: the key is the bucket region's


@pytest.mark.parametrize("state,code,message", [
    ("Disabled", "KMS.DisabledException", r"^{arn} is disabled\.$"),
    ("PendingDeletion", "KMS.KMSInvalidStateException", r"^{arn} is pending deletion\.$"),
    ("Unknown", "KMS.NotFoundException", r"^Key 'arn:aws:kms:us-east-1:123456789012:key/\S+' does not exist$")])
def test_s3_refuses_whoever_calls_under_a_key_that_is_not_enabled_or_unknown(aws, state, code, message):
    """PutBucketEncryption takes any key id; S3 refuses the uploads and downloads under it once KMS does."""
    s3 = aws.client("s3")
    arn = f"arn:aws:kms:us-east-1:123456789012:key/{uuid.uuid4()}" if state == "Unknown" else \
        customer_managed_key(aws)
    bucket_under_key(aws, "customer", arn)
    if state != "Unknown":
        s3.put_object(Bucket="customer", Key="kept", Body=b"theirs")
        key = arn.rpartition("/")[2]
        aws.client("kms").disable_key(KeyId=key) if state == "Disabled" else \
            aws.client("kms").schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
        with pytest.raises(ClientError) as refused:
            s3.get_object(Bucket="customer", Key="kept")
        assert refused.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="customer", Key="k", Body=b"z")
    assert refused.value.response["Error"]["Code"] == code
    assert re.match(message.format(arn=re.escape(arn)), refused.value.response["Error"]["Message"])


def test_a_new_volume_is_creating_for_a_moment_and_may_be_neither_deleted_nor_attached_until_available(aws):
    ec2 = aws.client("ec2")
    aws.set_volume_creating(5.0)
    instance = launch(ec2, Placement={"AvailabilityZone": "us-east-1a"})
    wait_for(lambda: state(ec2, instance) == "running", 10, "the machine to run")
    [root] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance]}])["Volumes"]
    assert root["State"] == "in-use", "a machine's own disk is made attached"
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
    assert volume["State"] == "creating"
    assert ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"][0]["State"] == "creating"
    assert error_code(ec2.delete_volume, VolumeId=volume["VolumeId"]) == "IncorrectState"
    assert error_code(ec2.attach_volume, VolumeId=volume["VolumeId"], InstanceId=instance, Device="/dev/sdf") == (
        "IncorrectState")
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume["VolumeId"]], WaiterConfig={"Delay": 0.2})
    ec2.attach_volume(VolumeId=volume["VolumeId"], InstanceId=instance, Device="/dev/sdf")


def test_another_accounts_bucket_is_refused_unless_its_policy_allows_and_never_to_an_expected_owner(aws):
    """S3's bucket names are global: one another account holds answers this account 403, unless its bucket policy
    allows the account; a call expecting another owner is refused, and the name cannot be made again."""
    s3 = aws.client("s3", retries=NO_RETRIES)
    aws.make_foreign_bucket("theirs")
    aws.make_foreign_bucket("shared", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::shared/*"}]})
    aws.make_foreign_bucket("listed", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": ["arn:aws:s3:::listed", "arn:aws:s3:::listed/*"]}]})
    assert error_code(s3.head_bucket, Bucket="theirs") == "403"
    assert error_code(s3.put_object, Bucket="theirs", Key="k", Body=b"x") == "AccessDenied"
    assert error_code(s3.create_bucket, Bucket="theirs") == "BucketAlreadyExists"
    assert error_code(s3.get_object, Bucket="shared", Key="missing") == "AccessDenied", "nor may it list the bucket"
    assert error_code(s3.put_object, Bucket="shared", Key="k", Body=b"x") == "AccessDenied", "reads only"
    assert error_code(s3.get_object, Bucket="listed", Key="missing") == "NoSuchKey", "its policy allows reads"
    assert s3.list_objects_v2(Bucket="listed")["KeyCount"] == 0
    aws.make_bucket("ours")
    s3.head_bucket(Bucket="ours", ExpectedBucketOwner="123456789012")
    assert error_code(s3.head_bucket, Bucket="ours", ExpectedBucketOwner="111111111111") == "403"


def test_a_requester_pays_bucket_refuses_another_accounts_reads_that_do_not_say_they_pay(aws):
    s3 = aws.client("s3", retries=NO_RETRIES)
    aws.make_foreign_bucket("public", requester_pays=True, objects={"data/a": "a"}, policy={
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject",
                                                "s3:ListBucket"], "Resource": ["arn:aws:s3:::public",
                                                                               "arn:aws:s3:::public/*"]}]})
    assert error_code(s3.list_objects_v2, Bucket="public") == "AccessDenied"
    assert error_code(s3.get_object, Bucket="public", Key="data/a") == "AccessDenied"
    assert error_code(s3.head_object, Bucket="public", Key="data/a") == "403"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="public", RequestPayer="requester")["Contents"]] == ["data/a"]
    assert s3.get_object(Bucket="public", Key="data/a", RequestPayer="requester")["Body"].read() == b"a"


def test_another_accounts_objects_under_its_aws_managed_key_are_refused_though_its_bucket_policy_allows(aws):
    s3 = aws.client("s3", retries=NO_RETRIES)
    readable = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                        "Resource": "arn:aws:s3:::theirs/*"}]}
    aws.make_foreign_bucket("theirs", policy=readable, objects={"a": "a"}, objects_encryption="aws:kms")
    assert error_code(s3.get_object, Bucket="theirs", Key="a") == "AccessDenied"
    aws.make_bucket("ours").put_object(Bucket="ours", Key="a", Body=b"a", ServerSideEncryption="aws:kms")
    assert s3.get_object(Bucket="ours", Key="a")["Body"].read() == b"a", "the account's own AWS managed key"


def test_a_machine_whose_encrypted_root_disk_has_a_disabled_key_ends_as_it_launches(aws):
    ec2, kms = aws.client("ec2"), aws.client("kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key)
    kms.disable_key(KeyId=key)
    disk = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8, "Encrypted": True, "DeleteOnTermination": True}}]
    instance_id = launch(ec2, BlockDeviceMappings=disk)
    wait_for(lambda: state(ec2, instance_id) in ("shutting-down", "terminated"), 10, "the machine to end")
    [ended] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert ended["StateReason"]["Code"] == "Client.InternalError"


def test_instance_types(aws):
    ec2 = aws.client("ec2")
    wanted = ["p3.16xlarge", "p3dn.24xlarge", "p4d.24xlarge", "p5.48xlarge", "g5.xlarge", "g6.xlarge"]
    offers = ec2.describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": wanted}]
    )["InstanceTypeOfferings"]
    assert {o["InstanceType"] for o in offers} == set(wanted)
    assert ("p3.16xlarge", "us-east-1a") in {(o["InstanceType"], o["Location"]) for o in offers}
    for instance_type in wanted:
        launch(ec2, instance_type)
    assert error_code(launch, ec2, "p9.mega") == "InvalidParameterValue"
    assert error_code(launch, ec2, "p3dn.24xlarge", Placement={"AvailabilityZone": "us-east-1a"}) == "Unsupported"


def test_a_local_zone_is_listed_with_its_offerings_only_once_the_account_opts_in_to_it(aws):
    ec2 = aws.client("ec2", retries=NO_RETRIES)

    def local_zone() -> tuple[dict[str, str], bool]:
        """The zones listed that are not Availability Zones, by type, and whether g5.xlarge is offered in Boston."""
        zones = ec2.describe_availability_zones()["AvailabilityZones"]
        offers = ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": ["g5.xlarge"]}]
        )["InstanceTypeOfferings"]
        return ({z["ZoneName"]: z["ZoneType"] for z in zones if z["ZoneType"] != "availability-zone"},
                "us-east-1-bos-1a" in {o["Location"] for o in offers})

    assert local_zone() == ({}, False), "not opted in: not listed"
    aws.opt_in_local_zone()
    assert local_zone() == ({"us-east-1-bos-1a": "local-zone"}, True)


def test_a_launchs_network_interfaces_are_checked_as_ec2_checks_them_and_recorded(aws):
    ec2 = aws.client("ec2")
    subnet = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": ["us-east-1a"]}])["Subnets"][0]
    available_group(ec2, "pg-1")

    def card(index, kind="efa-only", **extra):
        return {"NetworkCardIndex": index, "DeviceIndex": 0, "InterfaceType": kind, "SubnetId": subnet["SubnetId"],
                **extra}

    p4d = {"instance_type": "p4d.24xlarge", "Placement": {"GroupName": "pg-1", "AvailabilityZone": "us-east-1a"}}
    assert error_code(launch, ec2, **p4d, NetworkInterfaces=[card(i, "efa" if i == 0 else "efa-only")
                                                              for i in range(5)]) == "InvalidParameterCombination"
    assert error_code(launch, ec2, **p4d, NetworkInterfaces=[card(0, "efa", AssociatePublicIpAddress=True),
                                                              card(1)]) == "InvalidParameterCombination"
    assert error_code(launch, ec2, **p4d, NetworkInterfaces=[card(0)]) == "InvalidParameterCombination"
    assert error_code(launch, ec2, "g5.xlarge", NetworkInterfaces=[card(0, "efa")]) == "InvalidParameterCombination"
    assert error_code(launch, ec2, **p4d, NetworkInterfaces=[card(0, "efa"), card(0, "efa")]) == (
        "InvalidParameterValue")

    instance = launch(ec2, **p4d, NetworkInterfaces=[card(0, "efa", AssociatePublicIpAddress=True)])
    [launched] = aws.launches()
    assert launched["group"] == "pg-1" and launched["instances"] == [instance]
    assert [(i["NetworkCardIndex"], i["DeviceIndex"], i["InterfaceType"]) for i in launched["interfaces"]] == [
        ("0", "0", "efa")]


def test_an_iam_users_calls_are_held_to_its_policies_as_aws_holds_them(aws):
    """moto allows any call; a user's keys here get what its policies allow and no more: EC2 answers
    UnauthorizedOperation (a dry run too), JSON services AccessDeniedException, IAM AccessDenied; tags given at
    creation need ec2:CreateTags, and a launch naming an instance profile needs iam:PassRole of its role."""
    iam = aws.client("iam")
    aws.set_iam_propagation(0)  # IAM's own consistency is another test's
    iam.create_user(UserName="narrow")
    iam.put_user_policy(UserName="narrow", PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17",
                                                                                     "Statement": [
        {"Effect": "Allow", "Action": ["ec2:Describe*", "ec2:RunInstances", "iam:CreateRole"], "Resource": "*"},
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::*:role/passable",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}]}))
    key = iam.create_access_key(UserName="narrow")["AccessKey"]
    session = boto3.session.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key[
        "SecretAccessKey"], region_name="us-east-1")
    ec2, ssm, users_iam = (session.client(name, endpoint_url=aws.endpoint, config=Config(retries=NO_RETRIES))
                           for name in ("ec2", "ssm", "iam"))
    aws.set_profile_propagation(0)  # the launches below name the profiles at once
    for role in ("passable", "kept"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName=role)
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)

    ec2.describe_instances()
    assert error_code(ec2.create_volume, AvailabilityZone="us-east-1a", Size=1) == "UnauthorizedOperation"
    assert error_code(ec2.create_volume, AvailabilityZone="us-east-1a", Size=1, DryRun=True) == (
        "UnauthorizedOperation")
    tagged = [{"ResourceType": "instance", "Tags": [RUN]}]
    assert error_code(launch, ec2, TagSpecifications=tagged) == "UnauthorizedOperation", "no ec2:CreateTags"
    assert error_code(launch, ec2, IamInstanceProfile={"Name": "kept"}) == "UnauthorizedOperation", "no PassRole"
    launch(ec2, IamInstanceProfile={"Name": "passable"})
    assert error_code(ssm.describe_parameters) == "AccessDeniedException"
    assert error_code(users_iam.delete_role, RoleName="kept") == "AccessDenied"
    users_iam.create_role(RoleName="made", AssumeRolePolicyDocument="{}")


def test_a_machine_has_an_interface_on_each_card_which_goes_with_it_unless_the_launch_said_otherwise(aws):
    """EC2 makes each interface a launch asks for, one per network card; gives the machine no public address
    (it has more than one interface), even in a subnet that maps them; deletes at termination those marked
    DeleteOnTermination, and refuses to delete a subnet an interface is left in."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.60.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.60.0.0/20", AvailabilityZone="us-east-1a")["Subnet"][
        "SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    available_group(ec2, "pg-cards")
    cards = [{"NetworkCardIndex": card, "DeviceIndex": 0, "InterfaceType": "efa" if card == 0 else "efa-only",
              "SubnetId": subnet, "DeleteOnTermination": card != 3} for card in range(4)]
    instance = launch(ec2, "p4d.24xlarge", NetworkInterfaces=cards,
                      Placement={"GroupName": "pg-cards", "AvailabilityZone": "us-east-1a"})
    in_subnet = [{"Name": "subnet-id", "Values": [subnet]}]
    assert len(ec2.describe_network_interfaces(Filters=in_subnet)["NetworkInterfaces"]) == 4
    [described] = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"]
    assert "PublicIpAddress" not in described

    terminate(ec2, instance)
    [left] = ec2.describe_network_interfaces(Filters=in_subnet)["NetworkInterfaces"]
    assert left["Status"] == "available", "card 3's interface, which the launch asked to keep"
    assert error_code(ec2.delete_subnet, SubnetId=subnet) == "DependencyViolation"
    ec2.delete_network_interface(NetworkInterfaceId=left["NetworkInterfaceId"])
    ec2.delete_subnet(SubnetId=subnet)


def test_a_machine_is_pending_a_while_and_ec2_puts_no_elastic_ip_on_it_meanwhile(aws):
    aws.set_pending(30)
    ec2 = aws.client("ec2")
    machine = launch(ec2)
    [instance] = ec2.describe_instances(InstanceIds=[machine])["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "pending"
    address = ec2.allocate_address(Domain="vpc")["AllocationId"]
    interface = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
    assert error_code(ec2.associate_address, AllocationId=address, NetworkInterfaceId=interface) == (
        "IncorrectInstanceState")
    assert error_code(ec2.associate_address, AllocationId=address, InstanceId=machine) == "InvalidInstanceID"
    aws.set_pending(0)
    running = launch(ec2)
    ec2.get_waiter("instance_running").wait(InstanceIds=[running], WaiterConfig={"Delay": 1})
    ec2.associate_address(AllocationId=address, InstanceId=running)


def test_a_machine_reaches_out_through_a_public_address_and_elastic_ips_behave_as_on_ec2(aws):
    """A machine's SSM agent registers through its way out: in a subnet whose route out is an internet gateway, a
    machine without a public address never registers. Its agent's first ping found no way out, so it hibernates
    (5 minutes before the next) and registers once an Elastic IP is on its interface only if its boot restarts it
    then. EC2 refuses to release an address still associated outside the default VPC, frees it when its machine
    goes, and allocates no more than the account's quota."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    vpc = ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.50.0.0/20", AvailabilityZone="us-east-1a")["Subnet"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet["SubnetId"])
    cut_off, in_default_vpc = launch(ec2, SubnetId=subnet["SubnetId"], UserData=RESTARTS_AGENT), launch(ec2)
    left_hibernating = launch(ec2, SubnetId=subnet["SubnetId"],
                              UserData=RESTARTS_AGENT.replace("snap.amazon-ssm-agent.", ""))
    wait_for(lambda: agents_online(ssm, in_default_vpc), seconds=20)  # registered a second after it ran
    wait_for(lambda: agent_states(aws, cut_off, left_hibernating) == ["hibernating"] * 2, seconds=20)
    assert not agents_online(ssm, cut_off)

    address, second = (ec2.allocate_address(Domain="vpc")["AllocationId"] for _ in range(2))
    for machine, allocation in ((cut_off, address), (left_hibernating, second)):
        [instance] = ec2.describe_instances(InstanceIds=[machine])["Reservations"][0]["Instances"]
        ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=instance["NetworkInterfaces"][0][
            "NetworkInterfaceId"])
    wait_for(lambda: agents_online(ssm, cut_off), seconds=20)
    assert not agents_online(ssm, left_hibernating), "the deb's unit: not the snap's agent on Ubuntu"
    assert agent_states(aws, left_hibernating) == ["hibernating"]
    assert error_code(ec2.release_address, AllocationId=address) == "InvalidIPAddress.InUse"

    other = launch(ec2, SubnetId=subnet["SubnetId"])
    ec2.get_waiter("instance_running").wait(InstanceIds=[other], WaiterConfig={"Delay": 1})
    [instance] = ec2.describe_instances(InstanceIds=[other])["Reservations"][0]["Instances"]
    other_interface = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
    assert error_code(ec2.associate_address, AllocationId=address, NetworkInterfaceId=other_interface,
                      AllowReassociation=False) == "Resource.AlreadyAssociated"
    ec2.associate_address(AllocationId=address, NetworkInterfaceId=other_interface)
    [moved] = ec2.describe_addresses(AllocationIds=[address])["Addresses"]
    assert moved["NetworkInterfaceId"] == other_interface, "EC2 moves an associated address unless told not to"
    [left] = ec2.describe_instances(InstanceIds=[cut_off])["Reservations"][0]["Instances"]
    assert "PublicIpAddress" not in left
    terminate(ec2, cut_off, other, left_hibernating)
    [freed] = ec2.describe_addresses(AllocationIds=[address])["Addresses"]
    assert "AssociationId" not in freed, "the address left with its machine's interface"
    ec2.release_address(AllocationId=address)
    ec2.release_address(AllocationId=second)

    quotas = aws.client("service-quotas")
    assert quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode="L-0263D0A3")["Quota"]["Value"] == 5
    assert quotas.get_aws_default_service_quota(ServiceCode="vpc", QuotaCode="L-F678F1CE")["Quota"]["Value"] == 5
    aws.set_quotas({"L-F678F1CE": 2, "L-A4707A72": 2})  # the default VPC and this one hold them
    assert error_code(ec2.create_vpc, CidrBlock="10.51.0.0/16") == "VpcLimitExceeded"
    assert error_code(ec2.create_internet_gateway) == "InternetGatewayLimitExceeded"
    aws.set_quotas({"L-0263D0A3": 1})
    ec2.allocate_address(Domain="vpc")
    assert error_code(ec2.allocate_address, Domain="vpc") == "AddressLimitExceeded"


def test_vpc_block_public_access_cuts_off_internet_gateways_but_in_the_vpcs_excluded_from_it(aws):
    """Machines with public addresses behind an internet gateway: the default VPC's is blocked both ways, so its
    machine's agent finds no way out and hibernates; an exclusion allowing egress lets another VPC's out."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    vpc, subnet, _, _ = public_subnet_behind_a_gateway(ec2, "10.52")
    aws.block_public_access("block-bidirectional", {vpc: "allow-egress"})
    options = ec2.describe_vpc_block_public_access_options()["VpcBlockPublicAccessOptions"]
    assert (options["InternetGatewayBlockMode"], options["ExclusionsAllowed"]) == ("block-bidirectional", "allowed")
    [exclusion] = ec2.describe_vpc_block_public_access_exclusions()["VpcBlockPublicAccessExclusions"]
    assert exclusion["ResourceArn"].endswith(f":vpc/{vpc}") and exclusion["State"] == "create-complete"
    excluded, blocked = launch(ec2, SubnetId=subnet), launch(ec2)
    wait_for(lambda: agents_online(ssm, excluded), seconds=20)
    wait_for(lambda: agent_states(aws, blocked) == ["hibernating"], seconds=20)
    terminate(ec2, excluded, blocked)


def test_a_hibernating_agent_pings_as_amazon_ssm_agent_backs_off():
    """Its first ping failed: 5 minutes of nothing, then three pings 5 minutes apart, three 10 minutes apart, ...
    up to an hour apart; it registers at the first ping through a way out, or at once when its boot restarts it."""
    agent = AgentLife(first_ping_at=0.0, hibernation_s=300)
    pings = []
    for second in range(40_000):
        before = agent.next_ping_at
        agent.advance(float(second), reaches_out=False, restarts_on_the_way_out=False)
        if agent.next_ping_at != before and second:
            pings.append(second)
    assert (agent.state, pings[:10]) == ("hibernating", [300, 600, 900, 1200, 1800, 2400, 3000, 4200, 5400, 6600])
    assert [b - a for a, b in zip(pings, pings[1:])][-3:] == [3600] * 3
    agent.advance(40_000.0, reaches_out=True, restarts_on_the_way_out=False)
    assert agent.state == "hibernating", "between two pings"
    agent.advance(agent.next_ping_at, reaches_out=True, restarts_on_the_way_out=False)
    assert (agent.state, agent.restarted) == ("registered", False)
    restarted = AgentLife(first_ping_at=0.0)
    restarted.advance(0.0, reaches_out=False, restarts_on_the_way_out=True)
    restarted.advance(1.0, reaches_out=True, restarts_on_the_way_out=True)
    assert (restarted.state, restarted.restarted) == ("registered", True)


def test_a_route_to_a_detached_gateway_is_a_blackhole_and_no_way_out(aws):
    """EC2 marks a route whose internet gateway is not attached to the VPC blackhole, and nothing passes it."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    vpc, subnet, gateway, table = public_subnet_behind_a_gateway(ec2, "10.60")
    ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)

    def route_out():
        [routes] = [t["Routes"] for t in ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"]]
        return next(r for r in routes if r["DestinationCidrBlock"] == "0.0.0.0/0")["State"]

    assert route_out() == "blackhole"
    cut_off, in_default_vpc = launch(ec2, SubnetId=subnet, UserData=RESTARTS_AGENT), launch(ec2)
    wait_for(lambda: agents_online(ssm, in_default_vpc), seconds=20)
    assert not agents_online(ssm, cut_off), "its public address leads nowhere"
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    assert route_out() == "active"
    wait_for(lambda: agents_online(ssm, cut_off), seconds=20)


def test_a_volume_from_a_snapshot_is_initialized_at_the_rate_asked_and_reports_its_progress(aws, tmp_path):
    (tmp_path / "data").mkdir()
    snapshot = aws.make_snapshot(tmp_path / "data")
    ec2 = aws.client("ec2")

    def volume(**rate):
        return ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=snapshot, Size=8, **rate)["VolumeId"]

    def initialization(volume_id):
        [status] = ec2.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"]
        return status.get("InitializationStatusDetails")

    assert error_code(volume, VolumeInitializationRate=400) == "InvalidParameterValue"
    assert error_code(ec2.create_volume, AvailabilityZone="us-east-1a", Size=8, VolumeInitializationRate=300) == (
        "InvalidParameterCombination")
    aws.set_initialization_report_delay(2)
    fast, slow = volume(VolumeInitializationRate=300), volume()
    empty = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    assert initialization(fast) is None, "not reported yet: EBS takes up to 5 minutes"
    assert initialization(empty) is None, "an empty volume needs no initialization"
    assert wait_for(lambda: initialization(slow), seconds=10)["InitializationType"] == "default"
    done = wait_for(lambda: (found := initialization(fast))["Progress"] == 100 and found, seconds=30)
    assert done["InitializationType"] == "provisioned-rate" and done["EstimatedTimeToCompleteInSeconds"] == 0
    assert initialization(slow)["Progress"] < 100, "EBS's default rate: still cold"
    assert error_code(ec2.describe_volume_status, VolumeIds=["vol-0123456789abcdef0"]) == "InvalidVolume.NotFound"


def test_fault_fires_the_given_number_of_times_in_each_protocol(aws):
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    aws.add_fault("ec2", "RunInstances", "InsufficientInstanceCapacity", times=2, after=1,
                  match={"InstanceType": "p4d.24xlarge"})
    launch(ec2, "p4d.24xlarge")  # `after`: the first matching call goes through
    assert error_code(launch, ec2, "p4d.24xlarge") == "InsufficientInstanceCapacity"
    launch(ec2, "g5.xlarge")  # no match
    assert error_code(launch, ec2, "p4d.24xlarge") == "InsufficientInstanceCapacity"
    launch(ec2, "p4d.24xlarge")
    assert [(r["seen"], r["fired"]) for r in aws.fault_counts()] == [(4, 2)]

    aws.add_fault("ssm", "SendCommand", "ThrottlingException", times=1)
    aws.add_fault("efs", "CreateFileSystem", "FileSystemLimitExceeded", times=1)
    aws.add_fault("s3", "PutObject", "SlowDown", times=1)
    ssm, efs, s3 = (aws.client(s, retries=NO_RETRIES) for s in ("ssm", "efs", "s3"))
    assert error_code(ssm.send_command, DocumentName="AWS-RunShellScript", InstanceIds=["i-1"]) == "ThrottlingException"
    assert error_code(efs.create_file_system, CreationToken="t") == "FileSystemLimitExceeded"
    aws.make_bucket("faults")
    assert error_code(s3.put_object, Bucket="faults", Key="k", Body=b"x") == "SlowDown"
    aws.clear_faults()
    assert aws.fault_counts() == []


def test_a_carried_out_fault_fires_only_for_a_call_that_was_done(aws):
    """Its call is done and only the answer lost: a call the simulator refuses instead (past the Elastic IP quota,
    or naming what EC2 does not know yet) was not done, so the rule is not spent on it; one the simulator answers
    itself (a placement group) is done, and its answer lost."""
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    aws.set_quotas({"L-0263D0A3": 0})
    aws.add_fault("ec2", "AllocateAddress", "InternalError", status=500, times=1, carried_out=True, label="lost")
    assert error_code(ec2.allocate_address, Domain="vpc") == "AddressLimitExceeded"
    assert [r["fired"] for r in aws.fault_counts("lost")] == [0]
    aws.set_quotas({"L-0263D0A3": 5})
    assert error_code(ec2.allocate_address, Domain="vpc") == "InternalError"
    assert [r["fired"] for r in aws.fault_counts("lost")] == [1]
    assert len(ec2.describe_addresses()["Addresses"]) == 1, "done, its answer lost"

    aws.add_fault("ec2", "CreatePlacementGroup", "InternalError", status=500, times=1, carried_out=True)
    assert error_code(ec2.create_placement_group, GroupName="lost-answer", Strategy="cluster") == "InternalError"
    assert [g["GroupName"] for g in ec2.describe_placement_groups()["PlacementGroups"]] == ["lost-answer"]

    aws.set_consistency_window(3600)
    vpc = ec2.create_vpc(CidrBlock="10.70.0.0/16")["Vpc"]["VpcId"]
    aws.add_fault("ec2", "CreateSubnet", "InternalError", status=500, times=1, carried_out=True, label="young")
    assert error_code(ec2.create_subnet, VpcId=vpc, CidrBlock="10.70.0.0/20") == "InvalidVpcID.NotFound"
    assert [r["fired"] for r in aws.fault_counts("young")] == [0]


def test_within_the_consistency_window_ec2_describes_a_machine_as_it_was_before_it_was_told_to_terminate(aws):
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    aws.set_pending(3600)
    machine = launch(ec2)

    def described() -> str:
        return ec2.describe_instances(InstanceIds=[machine])["Reservations"][0]["Instances"][0]["State"]["Name"]

    def listed(state_filter: str, *values: str) -> list[str]:
        return [i["InstanceId"] for r in ec2.describe_instances(Filters=[
            {"Name": "image-id", "Values": [IMAGE]}, {"Name": state_filter, "Values": list(values)}])["Reservations"]
            for i in r["Instances"]]

    aws.set_consistency_window(2)
    assert ec2.terminate_instances(InstanceIds=[machine])["TerminatingInstances"][0]["PreviousState"]["Name"] == \
        "pending"
    assert described() == "pending"
    # A filter on the state matches the state described, not the one EC2 has settled on.
    assert listed("instance-state-name", "pending", "running") == [machine]
    assert listed("instance-state-name", "shutting-down", "terminated") == []
    assert listed("instance-state-code", "0") == [machine]  # pending's (moto filters no code)
    wait_for(lambda: described() in ("shutting-down", "terminated"), seconds=10)
    assert listed("instance-state-name", "shutting-down", "terminated") == [machine]
    assert listed("instance-state-name", "pending", "running") == []


def test_within_the_consistency_window_ec2_neither_knows_nor_lists_what_was_just_made(aws):
    """AWS's eventual consistency at its worst: a resource made moments ago is NotFound by id and left out of
    listings (a reservation with it alone too), while what was made before the window is listed as ever, even
    where it refers to a new one."""
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    old = ec2.allocate_address(Domain="vpc")["AllocationId"]
    old_group = ec2.create_security_group(GroupName="old", Description="old")["GroupId"]
    aws.set_consistency_window(3600)
    new = ec2.allocate_address(Domain="vpc")["AllocationId"]
    group = ec2.create_security_group(GroupName="new", Description="new")["GroupId"]
    aws.set_consistency_window(0)
    ec2.authorize_security_group_ingress(GroupId=old_group, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}])
    aws.set_consistency_window(3600)
    machine = launch(ec2)
    assert [a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]] == [old]
    assert error_code(ec2.describe_addresses, AllocationIds=[new]) == "InvalidAllocationID.NotFound"
    [listed] = [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
    assert (listed["GroupId"], listed["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"]) == (old_group, group)
    assert machine not in [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert all(r["Instances"] for r in ec2.describe_instances()["Reservations"])
    aws.set_consistency_window(0)
    assert sorted(a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]) == sorted([old, new])
    assert machine in [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert group in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]


def test_ec2_knows_an_instance_profile_only_a_while_after_iam_made_it_and_never_one_iam_lacks(aws):
    """As EC2 answers (InvalidParameterValue, not moto's IAM NoSuchEntity): a launch naming a profile that does not
    exist, or one made or given its role moments ago, is refused, its dry run too."""
    ec2, iam = aws.client("ec2", retries=NO_RETRIES), aws.client("iam")
    aws.set_iam_propagation(0)  # IAM's own (the next test's)
    unknown = "Value (imagenet18-p) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
    for dry_run in (True, False):
        with pytest.raises(ClientError, match=re.escape(unknown)) as refused:
            launch(ec2, IamInstanceProfile={"Name": "imagenet18-p"}, DryRun=dry_run)
        assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    aws.set_profile_propagation(3600)
    iam.create_instance_profile(InstanceProfileName="imagenet18-p")
    assert error_code(launch, ec2, IamInstanceProfile={"Name": "imagenet18-p"}) == "InvalidParameterValue"
    aws.set_profile_propagation(0)
    launch(ec2, IamInstanceProfile={"Name": "imagenet18-p"})
    iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    aws.set_profile_propagation(3600)
    iam.add_role_to_instance_profile(InstanceProfileName="imagenet18-p", RoleName="r")
    assert error_code(launch, ec2, IamInstanceProfile={"Name": "imagenet18-p"}) == "InvalidParameterValue"


def test_iam_knows_a_role_or_instance_profile_only_a_while_after_making_it(aws):
    iam = aws.client("iam", retries=NO_RETRIES)
    aws.set_iam_propagation(3600)
    iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    iam.create_instance_profile(InstanceProfileName="p")
    for call, parameters, message in [
        (iam.attach_role_policy, {"RoleName": "r", "PolicyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"},
         "The role with name r cannot be found."),
        (iam.put_role_policy, {"RoleName": "r", "PolicyName": "x", "PolicyDocument": "{}"},
         "The role with name r cannot be found."),
        (iam.get_instance_profile, {"InstanceProfileName": "p"}, "Instance Profile p cannot be found."),
        (iam.add_role_to_instance_profile, {"InstanceProfileName": "p", "RoleName": "r"},
         "Instance Profile p cannot be found."),
        (iam.list_role_tags, {"RoleName": "r"}, "The role with name r cannot be found."),
        (iam.delete_role, {"RoleName": "r"}, "The role with name r cannot be found."),
        (iam.delete_instance_profile, {"InstanceProfileName": "p"}, "Instance Profile p cannot be found."),
    ]:
        with pytest.raises(ClientError) as unknown:
            call(**parameters)
        assert (unknown.value.response["Error"]["Code"], unknown.value.response["Error"]["Message"]) == (
            "NoSuchEntity", message)
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == ["r"], "listed all the same"
    aws.set_iam_propagation(0)
    iam.add_role_to_instance_profile(InstanceProfileName="p", RoleName="r")
    assert iam.get_instance_profile(InstanceProfileName="p")["InstanceProfile"]["Roles"][0]["RoleName"] == "r"


def test_iam_reads_a_profile_without_the_role_given_it_moments_ago_and_refuses_giving_it_again(aws):
    iam = aws.client("iam", retries=NO_RETRIES)
    aws.set_iam_propagation(2)
    iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    iam.create_instance_profile(InstanceProfileName="p")
    time.sleep(2)  # both known
    iam.add_role_to_instance_profile(InstanceProfileName="p", RoleName="r")
    assert iam.get_instance_profile(InstanceProfileName="p")["InstanceProfile"]["Roles"] == []
    with pytest.raises(ClientError) as again:
        iam.add_role_to_instance_profile(InstanceProfileName="p", RoleName="r")
    assert (again.value.response["Error"]["Code"], again.value.response["Error"]["Message"]) == (
        "LimitExceeded", "Cannot exceed quota for InstanceSessionsPerInstanceProfile: 1")
    aws.set_iam_propagation(0)
    assert [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName="p")["InstanceProfile"]["Roles"]] == [
        "r"]


def test_ec2_ends_the_machines_of_a_launch_it_accepted_as_they_start_with_the_reason_asked(aws):
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    aws.end_launches("p4d.24xlarge", 1)
    ended, other_type, after = launch(ec2, "p4d.24xlarge"), launch(ec2, "g5.xlarge"), launch(ec2, "p4d.24xlarge")
    wait_for(lambda: state(ec2, ended) == "terminated" and state(ec2, after) == "running", seconds=10)
    [reason] = [i["StateReason"] for r in ec2.describe_instances(InstanceIds=[ended])["Reservations"]
                for i in r["Instances"]]
    assert reason == {"Code": "Server.InsufficientInstanceCapacity", "Message": "Server.InsufficientInstanceCapacity: "
                      "There was insufficient capacity available to satisfy the launch request."}
    assert state(ec2, other_type) == "running", "only machines of the type asked, and as many as asked"
    with pytest.raises(RuntimeError, match="no launch ends with 'Client.Nonsense'"):
        aws.end_launches("p4d.24xlarge", 1, "Client.Nonsense")


def test_a_rule_for_a_run_strikes_only_its_calls_and_clearing_its_label_ends_only_its_rules(aws):
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    tagged = [{"ResourceType": "instance", "Tags": [RUN]}]
    mine, other = launch(ec2, TagSpecifications=tagged), launch(ec2)
    aws.add_fault("ec2", "TerminateInstances", "UnauthorizedOperation", run="run-1", label="a")
    aws.add_fault("ec2", "CreateVolume", "VolumeLimitExceeded", run="run-1", label="b")
    assert error_code(ec2.terminate_instances, InstanceIds=[mine]) == "UnauthorizedOperation", "a resource of the run's"
    ec2.terminate_instances(InstanceIds=[other])
    volume = {"AvailabilityZone": "us-east-1a", "Size": 1}
    assert error_code(ec2.create_volume, **volume, TagSpecifications=[{"ResourceType": "volume", "Tags": [RUN]}]) == (
        "VolumeLimitExceeded"), "a call that carries the run's id"
    ec2.create_volume(**volume, TagSpecifications=[{"ResourceType": "volume",
                                                    "Tags": [{"Key": RUN["Key"], "Value": "run-2"}]}])
    aws.clear_faults("a")
    assert [(r["label"], r["seen"], r["fired"]) for r in aws.fault_counts()] == [("b", 1, 1)]
    ec2.terminate_instances(InstanceIds=[mine])


def test_clearing_a_label_ends_the_calls_its_rules_hold(aws):
    aws.add_fault("ec2", "DescribeVolumes", "ServiceUnavailable", hold_s=300, label="held")
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    answers = []
    held = threading.Thread(target=lambda: answers.append(error_code(ec2.describe_volumes)))
    held.start()
    wait_for(lambda: aws.fault_counts("held")[0]["fired"])
    aws.clear_faults("held")
    held.join(timeout=60)
    assert answers == ["ServiceUnavailable"], "the held call got its error when its rule was cleared"


def test_standard_retries_recover_from_throttling(aws):
    aws.add_fault("ec2", "DescribeInstances", "RequestLimitExceeded", times=1)  # 503
    aws.add_fault("ssm", "ListCommands", "ThrottlingException", times=1)  # 400
    aws.add_fault("efs", "DescribeFileSystems", "ThrottlingException", times=1)  # 429
    ec2, ssm, efs = aws.client("ec2"), aws.client("ssm"), aws.client("efs")  # standard retry mode
    for answer in (ec2.describe_instances(), ssm.list_commands(), efs.describe_file_systems()):
        assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert [r["fired"] for r in aws.fault_counts()] == [1, 1, 1]


def test_ssm_reads_are_throttled_past_their_rate_and_refilled_with_time():
    now = [0.0]
    bucket = TokenBucket(burst=3, rate_per_s=2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert [bucket.take() for _ in range(2)] == [True, False], "one token a half second"
    now[0] += 60
    assert sum(bucket.take() for _ in range(10)) == 3, "never more than the burst"


def test_list_commands_filters_and_pages_as_aws_does(aws):
    ec2, ssm = aws.client("ec2"), aws.client("ssm", retries=NO_RETRIES)
    instance = launch(ec2)
    wait_for(lambda: agents_online(ssm, instance), seconds=20)
    sent = [ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance], Comment=f"c{n}",
                             Parameters={"commands": ["true"]})["Command"]["CommandId"] for n in range(3)]
    first = ssm.list_commands(MaxResults=2)
    assert len(first["Commands"]) == 2 and first["NextToken"]
    rest = ssm.list_commands(MaxResults=2, NextToken=first["NextToken"])
    assert "NextToken" not in rest
    assert sorted(c["CommandId"] for c in first["Commands"] + rest["Commands"]) == sorted(sent)
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ssm.list_commands(Filters=[{"key": "InvokedAfter", "value": later}])["Commands"] == []
    assert ssm.list_commands(Filters=[{"key": "DocumentName", "value": "AWS-RunPowerShellScript"}])["Commands"] == []
    assert error_code(ssm.list_commands, Filters=[{"key": "Comment", "value": "c1"}]) == "InvalidFilterKey"


def test_calls_past_a_maximum_of_the_api_model_are_refused_as_aws_refuses_them(aws):
    ssm, iam, efs = (aws.client(name, retries=NO_RETRIES) for name in ("ssm", "iam", "efs"))
    names = [f"/limits/p{n}" for n in range(11)]
    for name in names:
        ssm.put_parameter(Name=name, Value="v", Type="String")
    assert error_code(ssm.delete_parameters, Names=names) == "ValidationException", "at most 10 names"
    assert len(ssm.delete_parameters(Names=names[:10])["DeletedParameters"]) == 10
    assert error_code(iam.create_role, RoleName="r" * 65, AssumeRolePolicyDocument="{}") == "ValidationError"
    assert error_code(iam.create_role, RoleName="r", AssumeRolePolicyDocument="{}",
                      Tags=[{"Key": f"k{n}", "Value": "v"} for n in range(51)]) == "ValidationError"
    iam.create_role(RoleName="r" * 64, AssumeRolePolicyDocument="{}")
    assert error_code(ssm.list_commands, MaxResults=51) == "ValidationException"
    assert error_code(efs.create_file_system, CreationToken="t" * 65) == "BadRequest"
    efs.create_file_system(CreationToken="t" * 64)


def test_a_new_bucket_answers_as_if_it_were_not_there_for_a_moment(aws):
    """Bucket configurations are eventually consistent: for a while after CreateBucket, S3 may answer the new
    bucket's calls NoSuchBucket (a HEAD's 404 without a body)."""
    aws.set_bucket_settling(1.0)
    s3 = aws.client("s3", retries=NO_RETRIES)
    s3.create_bucket(Bucket="settling")
    assert error_code(s3.head_bucket, Bucket="settling") == "404"
    assert error_code(s3.put_public_access_block, Bucket="settling", PublicAccessBlockConfiguration={
        "BlockPublicAcls": True}) == "NoSuchBucket"
    assert error_code(s3.put_object, Bucket="settling", Key="k", Body=b"x") == "NoSuchBucket"
    time.sleep(1.0)
    s3.head_bucket(Bucket="settling")
    s3.put_object(Bucket="settling", Key="k", Body=b"x")


def test_s3fs_reaches_the_simulator_through_the_environment(aws):
    aws.make_bucket("runs")
    with fsspec.open("s3://runs/a/metrics.jsonl", "w") as f:
        f.write("{}\n")
    assert aws.client("s3").get_object(Bucket="runs", Key="a/metrics.jsonl")["Body"].read() == b"{}\n"


def test_player_runs_commands_against_the_machine_disks(aws, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hello.txt").write_text("hello from the snapshot\n")
    snapshot = aws.make_snapshot(tmp_path / "data", description="dataset")
    ec2, ssm, efs = aws.client("ec2"), aws.client("ssm"), aws.client("efs")
    tags = [{"ResourceType": "instance", "Tags": [RUN]}]
    instances = [launch(ec2, TagSpecifications=tags, Placement={"AvailabilityZone": "us-east-1a"}) for _ in range(2)]
    wait_for(lambda: all(state(ec2, instance) == "running" for instance in instances))  # EC2 attaches to no other
    for instance in instances:
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=snapshot)["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[volume], WaiterConfig={"Delay": 0.1})
        ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    file_system = efs.create_file_system(CreationToken="run-1", Tags=[RUN])["FileSystemId"]

    master = ec2.describe_instances(InstanceIds=instances[1:])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    wait_for(lambda: agents_online(ssm, *instances))
    script = [
        "set -e",
        "cat /mnt/data/hello.txt > /mnt/efs/$IMAGENET18_SIM_INSTANCE.txt",
        "test -x /opt/imagenet18/.venv/bin/python && test -d /opt/imagenet18/tests/awssim",
        f"echo --master_addr={master} --master_port=29500",
        "exit 3",
    ]
    command = ssm.send_command(
        DocumentName="AWS-RunShellScript", InstanceIds=instances[:1], Parameters={"commands": script}
    )["Command"]["CommandId"]
    wait_for(lambda: aws.played()[0]["exit_code"] is not None)
    invocation = ssm.get_command_invocation(CommandId=command, InstanceId=instances[0])
    assert (invocation["Status"], invocation["ResponseCode"]) == ("Failed", 3)
    port = re.fullmatch(r"--master_addr=127\.0\.0\.1 --master_port=(\d+)\n", invocation["StandardOutputContent"])
    assert port and port[1] != "29500"
    assert aws.played()[0]["exit_code"] == 3 and ssm.list_commands()["Commands"][0]["Status"] == "Failed"
    assert (aws.root / "efs" / file_system / f"{instances[0]}.txt").read_text() == "hello from the snapshot\n"

    # A long command dies with its machine: terminated by the flow, or by a spot interruption; so does what left
    # its process group (torchrun's workers run in sessions of their own).
    long = ["setsid sleep 600 & echo $! > /mnt/efs/$IMAGENET18_SIM_INSTANCE.escaped",
            "echo $$ > /mnt/efs/$IMAGENET18_SIM_INSTANCE.pid", "sleep 600"]
    ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=instances, Parameters={"commands": long})
    pid_files = [aws.root / "efs" / file_system / f"{i}.{kind}" for i in instances for kind in ("pid", "escaped")]
    pids = [int(wait_for(lambda f=f: f.exists() and f.read_text().strip())) for f in pid_files]
    ec2.terminate_instances(InstanceIds=instances[:1])
    aws.interrupt(instances[1])
    reason = ec2.describe_instances(InstanceIds=instances[1:])["Reservations"][0]["Instances"][0]["StateReason"]
    assert reason["Code"] == "Server.SpotInstanceTermination"
    wait_for(lambda: all(p["exit_code"] is not None for p in aws.played()), seconds=2)
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), seconds=2)


@pytest.mark.slow
def test_ssm_agents_register_late_and_run_commands_as_the_agent_does(aws):
    """The agent registers a while after its machine runs; SendCommand refuses the machine until then, and an
    executionTimeout over AWS-RunShellScript's 48 h. A script runs from a file through `sh -c` (dash here, as on
    Ubuntu): bash's options fail it unless its #! line asks for bash."""
    aws.set_agent_delay(10)  # long enough for the two calls below on a loaded machine
    ec2, ssm = aws.client("ec2"), aws.client("ssm", retries=NO_RETRIES)
    instance = launch(ec2)

    def send(commands, **parameters):
        return ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance],
                                Parameters={"commands": commands, **parameters})["Command"]["CommandId"]

    assert error_code(send, ["true"]) == "InvalidInstanceId"
    assert not agents_online(ssm, instance)
    wait_for(lambda: agents_online(ssm, instance), seconds=20)
    assert error_code(send, ["true"], executionTimeout=["259200"]) == "InvalidParameters"
    sent = {"sh": send(["set -uo pipefail", "echo unreachable"], executionTimeout=["172800"]),
            "bash": send(["#!/bin/bash", "set -uo pipefail", 'echo "bash $BASH_VERSION" >&2', "exit 3"])}
    wait_for(lambda: all(p["exit_code"] is not None for p in aws.played()))
    ended = {shell: ssm.get_command_invocation(CommandId=command, InstanceId=instance)
             for shell, command in sent.items()}
    assert (ended["sh"]["Status"], ended["sh"]["ResponseCode"]) == ("Failed", 2)
    assert "Illegal option -o pipefail" in ended["sh"]["StandardErrorContent"]
    assert ended["sh"]["StandardOutputContent"] == ""
    assert (ended["bash"]["Status"], ended["bash"]["ResponseCode"]) == ("Failed", 3)
    assert ended["bash"]["StandardErrorContent"].startswith("bash 5")
    assert [c["Status"] for c in ssm.list_commands(InstanceId=instance)["Commands"]] == ["Failed", "Failed"]


def test_a_command_has_the_agents_environment_and_every_machine_of_a_launch_its_role(aws):
    """SSM's agent passes a command none of its own environment (no HOME, no region for the SDKs), and every
    machine a launch request makes gets the request's instance profile (moto gives it to the first only)."""
    ec2, iam, ssm = aws.client("ec2"), aws.client("iam"), aws.client("ssm")
    aws.set_profile_propagation(0)  # launched at once
    aws.set_iam_propagation(0)
    iam.create_role(RoleName="machines", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))
    iam.create_instance_profile(InstanceProfileName="machines")
    iam.add_role_to_instance_profile(InstanceProfileName="machines", RoleName="machines")
    instances = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=IMAGE, InstanceType="g5.xlarge", MinCount=2, MaxCount=2,
        IamInstanceProfile={"Name": "machines"})["Instances"]]
    for instance, invocation in run_everywhere(aws, ssm, instances, "env").items():
        output = invocation["StandardOutputContent"]
        environment = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
        assert "HOME" not in environment and "AWS_DEFAULT_REGION" not in environment and \
            "AWS_REGION" not in environment
        assert environment["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
        assert (environment["AWS_SSM_INSTANCE_ID"], environment["AWS_SSM_REGION_NAME"]) == (instance, "us-east-1")
        assert environment["AWS_ACCESS_KEY_ID"] != "testing" and environment["AWS_SESSION_TOKEN"], "the role's"


def test_a_command_past_its_execution_timeout_is_killed_and_times_out_as_the_agent_reports_it(aws):
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    instance = launch(ec2)
    wait_for(lambda: agents_online(ssm, instance), seconds=20)
    since = dt.datetime.now(dt.timezone.utc)
    command = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance],
                               Comment=jobs.job_comment("train", 0),
                               Parameters={"commands": ["echo $$", "sleep 600"], "executionTimeout": ["1"]})
    wait_for(lambda: aws.played()[0]["exit_code"] is not None, seconds=30)
    invocation = ssm.get_command_invocation(CommandId=command["Command"]["CommandId"], InstanceId=instance)
    assert (invocation["Status"], invocation["StatusDetails"]) == ("TimedOut", "ExecutionTimedOut")
    assert not alive(int(invocation["StandardOutputContent"])), "the agent killed it"
    assert ssm.list_commands()["Commands"][0]["Status"] == "TimedOut"
    ended = jobs.command_ends(Clients(aws.region), [Machine(0, instance, "", "")], "train", since)
    cause = f"its SSM command on {instance} ended ExecutionTimedOut (code -1)"
    assert ended == {0: (jobs.EXECUTION_TIMED_OUT, cause)}, \
        "the job fails, not as a lost machine a restart would mend, and its failure line says why"


def test_user_data_is_checked_and_its_shutdown_timer_honoured(aws):
    ec2 = aws.client("ec2")
    timer = launch(ec2, UserData="#!/bin/bash\nsystemd-run --on-active=1 /sbin/shutdown -h now\n",
                   InstanceInitiatedShutdownBehavior="terminate")
    broken = launch(ec2, UserData="#!/bin/bash\nif then\n")
    array = "a=(1 2)\n"  # bash's, not sh's: the #! line picks the shell, as cloud-init runs the file
    bash, sh = launch(ec2, UserData="#!/bin/bash\n" + array), launch(ec2, UserData="#!/bin/sh\n" + array)
    checks = {m["instance_id"]: m for m in aws.machines()}
    assert checks[timer]["user_data_check"] == "ok" and checks[timer]["shutdown_after_s"] == 1
    assert checks[broken]["user_data_check"] != "ok"
    assert checks[bash]["user_data_check"] == "ok" and "Syntax error" in checks[sh]["user_data_check"]
    wait_for(lambda: state(ec2, timer) == "terminated", seconds=5)
    assert Path(aws.root / "instances" / timer / "user-data").read_text().startswith("#!/bin/bash")


APT_UPDATE = "apt-get -q -o DPkg::Lock::Timeout=600 update"  # as the shipped boot has it, its sources all
NO_DEADSNAKES = "https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu"  # the PPA's source, replaced: not added
FINAL_CHECK = """/opt/imagenet18/.venv/bin/python -c 'import sys; sys.exit(sys.version_info.releaselevel != "final")'"""


def test_a_boot_that_cannot_reach_the_ppa_fails_rather_than_install_ubuntus_release_candidate(aws):
    """apt-get update only warns where a source fails, and apt then installs Ubuntu 22.04's python3.11, 3.11.0rc1,
    on which torch.compile segfaults: the shipped boot fails instead (the PPA's lists fetched again on their own,
    --error-on=any), and where that is gone, the venv's check of its Python does."""
    ec2 = aws.client("ec2")
    aws.make_unreachable("ppa.launchpadcontent.net")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    shipped = machines.user_data(ClusterSpec("run-no-ppa", "boot", 1, "g5.xlarge", False, expires),
                                 ["vol-0123456789abcdef0"],
                                 machines.BootConfig("fs-0123", "us-east-1", "s3://bucket/code.tar.gz", 1.0))
    warned_only = shipped.replace(" --error-on=any update", " update")  # the PPA's own update too only warns
    assert warned_only != shipped
    launched = [launch(ec2, image=UBUNTU_2204.image_id, UserData=script) for script in (shipped, warned_only)]
    checks = {m["instance_id"]: m["user_data_check"] for m in aws.machines()}
    assert checks[launched[0]].startswith("boot failed: E: Failed to fetch https://ppa.launchpadcontent.net/"), checks
    assert checks[launched[1]] == "boot failed: error: Python 3.11.0rc1 is not a final release", checks


def test_a_boot_that_would_fail_on_the_image_fails_and_its_machine_has_no_project(aws):
    """user-data read against its AMI's facts: the project's install needs an interpreter inside its Requires-Python,
    with its venv module, and the EFS mount needs nfs-common and its /etc/fstab entry; what the AMI lacks must be
    installed first, from what its archive has, asking again while the image's first-boot apt-daily holds the
    package lists; the project's install asks again after a download cut off. A machine whose boot failed has no
    venv: a job's python is not found there; one whose Python has no C headers fails
    torch.compile's first GPU kernel, and one whose Python is Ubuntu 22.04's own python3.11, a release candidate
    (not the deadsnakes PPA's final release), segfaults there."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    spec = ClusterSpec("run-boot", "boot", 1, "g5.xlarge", False, expires)
    shipped = machines.user_data(spec, ["vol-0123456789abcdef0"],
                                 machines.BootConfig("fs-0123", "us-east-1", "s3://bucket/code.tar.gz", 1.0))
    cases = [  # (image, text replaced in the shipped user-data, how the boot fails)
        (UBUNTU_2204, {}, None),
        (UBUNTU_2204, {"python3.11 -m venv": "python3 -m venv"}, "install the python3.10-venv package"),
        (UBUNTU_2204, {"python3.11 -m venv": "python3 -m venv", "python3.11-venv": "python3-venv"},
         "requires a different Python: 3.10.12 not in '>=3.11,<3.12'"),
        (UBUNTU_2204, {" nfs-common": ""}, "mount.nfs4 helper program (nfs-common is not installed)"),
        (UBUNTU_2204, {"_netdev,nofail 0 0' >>/etc/fstab": "_netdev,nofail 0 0' >/dev/null"},
         "mount: /mnt/efs: can't find in /etc/fstab."),
        (UBUNTU_2404, {}, "ok"),  # the deadsnakes PPA has 3.11 for 24.04 too
        (UBUNTU_2404, {NO_DEADSNAKES: "https://example.com/ubuntu"}, "E: Unable to locate package python3.11"),
        (UBUNTU_2204, {f'retrying 60 "$apt_again" {APT_UPDATE}': "apt-get -q update"},
         "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1093 (apt-get)"),  # apt-daily's
        (UBUNTU_2204, {f'retrying 60 "$apt_again" {APT_UPDATE}':
                       "for _ in 1 2 3; do\n  apt-get -q update && break\n  sleep 10\ndone"}, "ok"),  # asked again
        (UBUNTU_2204, {'retrying 3 "$cut_off" /opt': "/opt"},  # tried once: the torch wheel's download is cut off
         "Got        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (UBUNTU_2204, {'retrying 3 "$cut_off" /opt': 'retrying 1 "$cut_off" /opt'},  # tried once all the same
         "Got        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (UBUNTU_2204, {'retrying 3 "$cut_off" /opt': 'retrying 3 "$apt_again" /opt'},  # asked again on other words
         "Got        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (UBUNTU_2204, {f'retrying 60 "$apt_again" {APT_UPDATE}':
                       f'retrying 60 "[Tt]imed out" {APT_UPDATE}'},  # not on a lock
         "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1093 (apt-get)"),
        (UBUNTU_2204, {f'retrying 60 "$apt_again" {APT_UPDATE}':
                       f'retrying 60 "$cut_off" {APT_UPDATE}'},  # set further down
         "cut_off: unbound variable"),
        (UBUNTU_2204, {"retrying() {": "retrying_once() {"}, "retrying: command not found"),
        (UBUNTU_2204, {"restart_hibernating_agent </dev/null":  # used before its definition has run
                       'retrying 2 "" true\nrestart_hibernating_agent </dev/null'}, "retrying: command not found"),
        (UBUNTU_2204, {NO_DEADSNAKES: "https://example.com/ubuntu"}, "error: Python 3.11.0rc1 is not a final release"),
        (UBUNTU_2204, {NO_DEADSNAKES: "https://example.com/ubuntu", FINAL_CHECK: "true"}, "ok"),  # with 3.11.0rc1
        (UBUNTU_2204, {" python3.11-dev": ""}, "ok"),  # boots, but its Python has no C headers
    ]
    launched = []
    for image, changes, _ in cases:
        script = shipped
        for old, new in changes.items():
            script = script.replace(old, new)
        launched.append(launch(ec2, image=image.image_id, UserData=script))
    checks = {m["instance_id"]: m["user_data_check"] for m in aws.machines()}
    assert checks[launched[0]] == "ok", "the shipped user-data boots the default AMI"
    for instance, (_, changes, failure) in zip(launched[1:], cases[1:]):
        assert all(old in shipped for old in changes), changes
        assert checks[instance].endswith(failure), checks[instance]
    booted, failed = launched[0], launched[1]
    ran = run_everywhere(aws, ssm, [booted, failed], "/opt/imagenet18/.venv/bin/python -c 'print(42)'")
    assert (ran[booted]["Status"], ran[booted]["StandardOutputContent"]) == ("Success", "42\n")
    assert (ran[failed]["Status"], ran[failed]["ResponseCode"]) == ("Failed", 127)
    assert "not found" in ran[failed]["StandardErrorContent"]
    # torch.compile on a GPU: Triton builds its launchers against Python.h, which only python3.11-dev brings, and
    # its compiler segfaults on a release candidate of Python.
    candidate, headless = launched[-2:]
    ran = run_everywhere(aws, ssm, [booted, candidate, headless],
                         "/opt/imagenet18/.venv/bin/python -c 'print(42)' --compile")
    assert (ran[booted]["Status"], ran[booted]["StandardOutputContent"]) == ("Success", "42\n")
    assert (ran[headless]["Status"], ran[headless]["ResponseCode"]) == ("Failed", 1)
    assert "fatal error: Python.h: No such file or directory" in ran[headless]["StandardErrorContent"]
    assert (ran[candidate]["Status"], ran[candidate]["ResponseCode"]) == ("Failed", 139)
    assert "Segmentation fault" in ran[candidate]["StandardErrorContent"]


def test_ec2_quotas_are_answered_by_service_quotas_and_enforced_at_the_launch_not_in_a_dry_run(aws):
    quotas, ec2 = aws.client("service-quotas"), aws.client("ec2", retries=NO_RETRIES)
    assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-417A185B")["Quota"]["Value"] == 2048
    assert quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]["Value"] == 0
    aws.set_quotas({"L-DB2E81BA": 4, "L-3819A6DF": 0})
    assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]["Value"] == 4
    assert error_code(ec2.run_instances, ImageId=IMAGE, InstanceType="g5.xlarge", MinCount=2, MaxCount=2,
                      DryRun=True) == "DryRunOperation"
    first = launch(ec2)  # 4 vCPUs of 4
    assert error_code(launch, ec2) == "VcpuLimitExceeded"
    assert error_code(launch, ec2, InstanceMarketOptions={"MarketType": "spot"}) == "MaxSpotInstanceCountExceeded"
    launch(ec2, "p4d.24xlarge")  # another quota
    aws.set_quotas({"L-C4BD4855": 0})
    assert error_code(launch, ec2, "p5.48xlarge", InstanceMarketOptions={"MarketType": "spot"}) == (
        "MaxSpotInstanceCountExceeded"), "spot P5 machines count against a quota of their own"
    launch(ec2, "p4d.24xlarge", InstanceMarketOptions={"MarketType": "spot"})
    aws.set_shutting_down(3600)
    ec2.terminate_instances(InstanceIds=[first])
    assert error_code(launch, ec2) == "VcpuLimitExceeded", "a machine let go counts while it shuts down"


def test_the_project_python_fails_as_torch_does_on_a_gpu_its_build_has_no_kernels_for(aws):
    """A V100 (sm_70) runs none of the machines' torch build's kernels: its python stops at the first one, with
    CUDA's error, where an A10G (sm_86) runs it. A command without the project's python runs anywhere."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    v100, a10g = launch(ec2, "p3.16xlarge"), launch(ec2, "g5.xlarge")
    wait_for(lambda: agents_online(ssm, v100, a10g), seconds=20)
    sent = {commands[0]: ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[v100, a10g],
                                          Parameters={"commands": commands})["Command"]["CommandId"]
            for commands in (["/opt/imagenet18/.venv/bin/python -c 'print(42)'"], ["echo 42"])}
    wait_for(lambda: len(aws.played()) == 4 and all(p["exit_code"] is not None for p in aws.played()), seconds=30)
    ran = {(commands, i): ssm.get_command_invocation(CommandId=command, InstanceId=i)
           for commands, command in sent.items() for i in (v100, a10g)}
    python, echo = sent
    assert (ran[python, v100]["Status"], ran[python, v100]["ResponseCode"]) == ("Failed", 1)
    assert ran[python, v100]["StandardErrorContent"].endswith(
        "RuntimeError: CUDA error: no kernel image is available for execution on the device\n")
    assert "sm_70 is not compatible" in ran[python, v100]["StandardErrorContent"]
    assert [ran[k]["StandardOutputContent"] for k in ((python, a10g), (echo, v100), (echo, a10g))] == ["42\n"] * 3


def test_the_simulators_gpus_agree_with_the_catalogue_and_torchs_rule():
    assert {name: gpus.gpu(name)[1] for name in catalog.INSTANCE_TYPES} == {
        name: kind.compute_capability for name, kind in catalog.INSTANCE_TYPES.items()}
    flags = "sm_75 sm_80 sm_86 sm_90"
    runs = {name: gpus.no_kernel_error(name, flags) is None for name in ("p3.16xlarge", "g4dn.xlarge", "g6.xlarge")}
    assert runs == {"p3.16xlarge": False, "g4dn.xlarge": True, "g6.xlarge": True}
    assert gpus.no_kernel_error("p3.16xlarge", "sm_80 compute_70") is None, "PTX runs on newer GPUs"
    assert gpus.no_kernel_error("p5.48xlarge", "sm_80 sm_86") is not None, "no kernels across a major version"
    assert gpus.no_kernel_error("p3.16xlarge", "") is None, "a CPU-only build: nothing to check against"


def test_an_account_has_the_regions_a_new_aws_account_has_and_none_of_its_opt_in_ones(aws):
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    enabled = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions()["Regions"]}
    assert len(enabled) == 17 and set(enabled.values()) == {"opt-in-not-required"}, "those before March 2019"
    every = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions(AllRegions=True)["Regions"]}
    assert every["af-south-1"] == every["eu-south-1"] == "not-opted-in" and len(every) > len(enabled)
    assert not any(name.startswith(("us-gov-", "cn-")) for name in every), "other partitions' regions are unseen"
    assert [r["OptInStatus"] for r in ec2.describe_regions(RegionNames=["ap-east-1"])["Regions"]] == ["not-opted-in"]
    cape_town = {name: aws.client(name, retries=NO_RETRIES, region="af-south-1") for name in ("ec2", "ssm", "efs")}
    assert error_code(cape_town["ec2"].describe_volumes) == "AuthFailure"
    assert error_code(cape_town["ssm"].describe_parameters) == "UnrecognizedClientException"
    assert error_code(cape_town["efs"].describe_file_systems) == "UnrecognizedClientException"
    assert aws.client("ec2", region="eu-north-1").describe_volumes()["Volumes"] == []


def test_ebs_counts_every_volume_of_a_type_against_its_iops_and_storage_quotas(aws):
    """EBS's quotas are per region and volume type: the IOPS of all io1 or io2 volumes, the size of all of each
    type. A new account may provision 100,000 io2 IOPS."""
    quotas = aws.client("service-quotas", retries=NO_RETRIES)
    assert quotas.get_aws_default_service_quota(ServiceCode="ebs", QuotaCode="L-8D977E7E")["Quota"]["Value"] == 100_000
    aws.set_quotas({"L-8D977E7E": 100_000, "L-7A658B76": 1})
    assert quotas.get_service_quota(ServiceCode="ebs", QuotaCode="L-8D977E7E")["Quota"]["Value"] == 100_000
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    for _ in range(8):
        ec2.create_volume(AvailabilityZone="us-east-1a", Size=20, VolumeType="io2", Iops=11_500)
    assert error_code(ec2.create_volume, AvailabilityZone="us-east-1a", Size=20, VolumeType="io2",
                      Iops=11_500) == "MaxIOPSLimitExceeded", "the ninth of the seed's replicas: 103,500 IOPS"
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=230, VolumeType="io1", Iops=11_500)
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=600, VolumeType="gp3")
    assert error_code(ec2.create_volume, AvailabilityZone="us-east-1a", Size=600,
                      VolumeType="gp3") == "VolumeLimitExceeded", "1,200 GiB of gp3 is past 1 TiB"


@pytest.mark.parametrize("volume,refusal", [
    ({"VolumeType": "io1", "Size": 20, "Iops": 11_500}, "Iops to volume size ratio of 575.000000 is too high; maximum "
     "is 50"),
    ({"VolumeType": "io2", "Size": 11, "Iops": 11_500}, "Iops to volume size ratio of 1045.454545 is too high; "
     "maximum is 1000"),
    ({"VolumeType": "gp3", "Size": 20, "Iops": 16_000}, "Iops to volume size ratio of 800.000000 is too high; maximum "
     "is 500"),
    ({"VolumeType": "gp3", "Size": 200, "Throughput": 1000}, "Throughput (MiBps) to iops ratio of 0.333333 is too "
     "high; maximum is 0.250000 MiBps per iops"),  # 3,000 IOPS, gp3's own
    ({"VolumeType": "gp3", "Size": 200, "Iops": 3_999, "Throughput": 1000}, "Throughput (MiBps) to iops ratio of "
     "0.250063 is too high; maximum is 0.250000 MiBps per iops"),
    ({"VolumeType": "io2", "Size": 12, "Iops": 11_500}, None),
    ({"VolumeType": "gp3", "Size": 1}, None),  # 3,000 IOPS and 125 MiB/s whatever the size
    ({"VolumeType": "gp3", "Size": 32, "Iops": 16_000, "Throughput": 1000}, None),
    ({"VolumeType": "gp3", "Size": 8, "Iops": 4_000, "Throughput": 1000}, None),
])
def test_ebs_refuses_a_volume_whose_size_cannot_have_its_iops_or_whose_iops_its_throughput(aws, volume, refusal):
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    if refusal is None:
        ec2.create_volume(AvailabilityZone="us-east-1a", **volume)
        return
    with pytest.raises(ClientError) as refused:
        ec2.create_volume(AvailabilityZone="us-east-1a", **volume)
    assert (refused.value.response["Error"]["Code"], refused.value.response["Error"]["Message"]) == (
        "InvalidParameterValue", refusal)


def test_a_users_calls_need_what_they_do_in_other_services_and_their_tags_on_creation(aws, operator):
    """A mount target is a network interface EFS makes and deletes as the caller, and tags given at creation are a
    tagging call (EFS's TagResource, SSM's AddTagsToResource): each needs the caller's permission."""
    subnet = aws.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    allowed = ["elasticfilesystem:*", "ec2:Describe*", "ssm:PutParameter"]

    def allow(actions: list[str]) -> None:
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        aws.client("iam").put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                                          PolicyDocument=json.dumps(policy))

    allow(allowed)
    aws.client("iam").create_service_linked_role(AWSServiceName="elasticfilesystem.amazonaws.com")  # EFS's, there
    efs, ssm = (boto3.session.Session().client(name, config=Config(retries=NO_RETRIES)) for name in ("efs", "ssm"))
    system = efs.create_file_system(CreationToken="t", Tags=[{"Key": "k", "Value": "v"}])["FileSystemId"]
    assert error_code(efs.create_mount_target, FileSystemId=system, SubnetId=subnet) == "AccessDeniedException"
    assert error_code(ssm.put_parameter, Name="/p", Value="v", Type="String",
                      Tags=[{"Key": "k", "Value": "v"}]) == "AccessDeniedException"
    ssm.put_parameter(Name="/p", Value="v", Type="String")
    allow([*allowed, "ec2:CreateNetworkInterface"])
    target = efs.create_mount_target(FileSystemId=system, SubnetId=subnet)["MountTargetId"]
    assert error_code(efs.delete_mount_target, MountTargetId=target) == "AccessDeniedException"
    allow(["elasticfilesystem:CreateFileSystem"])
    assert error_code(efs.create_file_system, CreationToken="u", Tags=[{"Key": "k", "Value": "v"}]) == (
        "AccessDeniedException"), "no elasticfilesystem:TagResource"
    efs.create_file_system(CreationToken="w")


def test_a_spot_launch_makes_spots_service_linked_role_as_the_caller_once(aws, operator):
    """EC2 makes EC2 Spot's service-linked role at an account's first spot launch, as the caller: one who may not
    create it is refused with AuthFailure.ServiceLinkedRoleCreationNotPermitted; once made, it serves every caller."""
    iam = aws.client("iam")
    users_ec2 = boto3.session.Session().client("ec2", config=Config(retries=NO_RETRIES))  # the operator's keys
    spot = {"InstanceMarketOptions": {"MarketType": "spot"}}
    launch_allowed = {"Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:Describe*"], "Resource": "*"}
    iam.put_user_policy(UserName="imagenet18-operator", PolicyName="imagenet18",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [launch_allowed]}))
    assert error_code(launch, users_ec2, **spot) == "AuthFailure.ServiceLinkedRoleCreationNotPermitted"
    launch(users_ec2)  # on demand
    launch(aws.client("ec2"), **spot)  # an administrator's
    [role] = [r for r in iam.list_roles()["Roles"] if r["Path"] == "/aws-service-role/spot.amazonaws.com/"]
    assert role["RoleName"] == "AWSServiceRoleForEC2Spot"
    launch(users_ec2, **spot)
    assert error_code(iam.create_service_linked_role, AWSServiceName="spot.amazonaws.com") == "InvalidInput"


def test_a_volume_is_attached_only_as_ec2_attaches_it(aws):
    """Available, in the machine's zone, to a running (or stopped) machine; moto attached anything."""
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    aws.set_pending(3.0)
    machine = launch(ec2, Placement={"AvailabilityZone": "us-east-1a"})
    here, there = (ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"] for zone in ("us-east-1a",
                                                                                            "us-east-1b"))
    ec2.get_waiter("volume_available").wait(VolumeIds=[here, there], WaiterConfig={"Delay": 0.1})
    assert error_code(ec2.attach_volume, VolumeId=here, InstanceId=machine, Device="/dev/sdf") == (
        "IncorrectInstanceState"), "still pending"
    wait_for(lambda: state(ec2, machine) == "running", seconds=20)
    assert error_code(ec2.attach_volume, VolumeId=there, InstanceId=machine, Device="/dev/sdf") == (
        "InvalidVolume.ZoneMismatch")
    ec2.attach_volume(VolumeId=here, InstanceId=machine, Device="/dev/sdf")
    other = launch(ec2, Placement={"AvailabilityZone": "us-east-1a"})
    wait_for(lambda: state(ec2, other) == "running", seconds=20)
    assert error_code(ec2.attach_volume, VolumeId=here, InstanceId=other, Device="/dev/sdf") == "VolumeInUse"


def test_a_terminated_machine_shuts_down_first_and_keeps_its_volumes_until_it_is_gone(aws):
    """EC2's machine is shutting-down (for minutes, on a big one) before it is terminated, its volumes attached
    meanwhile (neither detached nor another machine's); moto terminated it at once. A spot interruption's reason
    stays."""
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    machine, spare = (launch(ec2, Placement={"AvailabilityZone": "us-east-1a"}) for _ in range(2))
    wait_for(lambda: {state(ec2, machine), state(ec2, spare)} == {"running"}, seconds=20)
    data = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[data], WaiterConfig={"Delay": 0.1})
    ec2.attach_volume(VolumeId=data, InstanceId=machine, Device="/dev/sdf")
    aws.set_shutting_down(4.0)
    aws.interrupt(machine)
    [changed] = ec2.terminate_instances(InstanceIds=[machine])["TerminatingInstances"]
    assert changed["PreviousState"]["Name"] == changed["CurrentState"]["Name"] == "shutting-down"
    [volume] = ec2.describe_volumes(VolumeIds=[data])["Volumes"]
    assert volume["State"] == "in-use" and [a["State"] for a in volume["Attachments"]] == ["attached"]
    assert error_code(ec2.attach_volume, VolumeId=data, InstanceId=spare, Device="/dev/sdf") == "VolumeInUse"
    assert error_code(ec2.detach_volume, VolumeId=data, InstanceId=machine, Force=True) == "IncorrectInstanceState"
    wait_for(lambda: state(ec2, machine) == "terminated", seconds=20)
    [volume] = ec2.describe_volumes(VolumeIds=[data])["Volumes"]
    assert volume["State"] == "available" and not volume["Attachments"]
    [described] = ec2.describe_instances(InstanceIds=[machine])["Reservations"][0]["Instances"]
    assert described["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    ec2.attach_volume(VolumeId=data, InstanceId=spare, Device="/dev/sdf")


def test_a_security_group_or_vpc_something_depends_on_is_not_deleted(aws):
    """As EC2 refuses: a group an interface has or another group's rule names, a VPC with its internet gateway
    or a group of its own; moto deleted them all."""
    ec2 = aws.client("ec2", retries=NO_RETRIES)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    used, naming = (ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
                    for name in ("used", "naming"))
    ec2.authorize_security_group_ingress(GroupId=naming, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": used}, {"GroupId": naming}]}])
    interface = ec2.create_network_interface(SubnetId=subnet, Groups=[used])["NetworkInterface"]["NetworkInterfaceId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    assert error_code(ec2.delete_security_group, GroupId=used) == "DependencyViolation", "an interface has it"
    ec2.delete_network_interface(NetworkInterfaceId=interface)
    assert error_code(ec2.delete_security_group, GroupId=used) == "DependencyViolation", "a rule of another names it"
    ec2.delete_subnet(SubnetId=subnet)
    assert error_code(ec2.delete_vpc, VpcId=vpc) == "DependencyViolation", "its groups and gateway"
    ec2.delete_security_group(GroupId=naming)  # its rule naming itself does not hold it
    ec2.delete_security_group(GroupId=used)
    assert error_code(ec2.delete_vpc, VpcId=vpc) == "DependencyViolation", "its gateway"
    ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    ec2.delete_vpc(VpcId=vpc)
    ec2.create_security_group(GroupName="by-name", Description="the default VPC's")
    ec2.delete_security_group(GroupName="by-name")


def test_a_reboot_ends_a_machines_commands_which_its_agent_reports_failed_and_holds_those_sent_meanwhile(aws):
    """EC2 restarts the machine's OS; SSM's agent, running again, finds the process of the command it ran gone and
    reports it Failed, code 1, saying so in its step's Output (amazon-ssm-agent's generateUnexpectedFailResult),
    which ListCommandInvocations gives with details (moto lacks it); a command sent while the machine was down
    waits for the agent. A terminated machine's reboot is ignored (API_RebootInstances)."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    aws.set_reboot(5)  # long enough for the looks at the machine while it is down
    instance = launch(ec2)
    wait_for(lambda: agents_online(ssm, instance), seconds=20)
    cut = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance],
                           Parameters={"commands": ["sleep 600"]})["Command"]["CommandId"]
    wait_for(lambda: aws.played(), what="the command to run")
    ec2.reboot_instances(InstanceIds=[instance])
    wait_for(lambda: not agents_online(ssm, instance), seconds=2, what="the agent's ping lost")
    sent = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance],
                            Parameters={"commands": ["echo after"]})["Command"]["CommandId"]
    wait_for(lambda: len(aws.played()) == 2, what="the second command seen")
    assert ssm.get_command_invocation(CommandId=sent, InstanceId=instance)["Status"] == "Pending"
    assert ssm.get_command_invocation(CommandId=cut, InstanceId=instance)["Status"] == "InProgress"
    wait_for(lambda: all(p["exit_code"] is not None for p in aws.played()), seconds=20)
    lost = ssm.get_command_invocation(CommandId=cut, InstanceId=instance)
    assert (lost["Status"], lost["ResponseCode"], lost["StandardOutputContent"], lost["StandardErrorContent"]) == (
        "Failed", 1, "", ""), "the agent's words are in its step's Output alone"
    [listed] = ssm.list_command_invocations(CommandId=cut, InstanceId=instance, Details=True)["CommandInvocations"]
    assert listed["Status"] == "Failed" and listed["CommandPlugins"][0]["Output"].startswith(
        "document process failed unexpectedly: ")
    after = ssm.get_command_invocation(CommandId=sent, InstanceId=instance)
    assert (after["Status"], after["StandardOutputContent"]) == ("Success", "after\n")
    [listed] = ssm.list_command_invocations(CommandId=sent, Details=True)["CommandInvocations"]
    assert (listed["InstanceId"], listed["CommandPlugins"][0]["Output"]) == (instance, "after\n")
    assert agents_online(ssm, instance) and [m["boots"] for m in aws.machines()] == [2]
    terminate(ec2, instance)
    ec2.reboot_instances(InstanceIds=[instance])
    assert state(ec2, instance) == "terminated" and [m["boots"] for m in aws.machines()] == [2]


@pytest.mark.parametrize("check,failing", [("system", "SystemStatus"), ("instance", "InstanceStatus")])
def test_a_machine_that_fails_is_running_with_its_status_check_impaired_and_its_commands_in_progress(aws, check,
                                                                                                    failing):
    """What a failed host or a hung OS looks like on EC2: the machine is described running, the check fails
    (API_InstanceStatusSummary), its agent stops pinging, and the command it ran never ends."""
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    instance = launch(ec2)
    wait_for(lambda: agents_online(ssm, instance), seconds=20)
    sent = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[instance],
                            Parameters={"commands": ["sleep 600"]})["Command"]["CommandId"]
    wait_for(lambda: aws.played(), what="the command to run")
    aws.impair(instance, check, ago_s=600)
    [status] = ec2.describe_instance_status(InstanceIds=[instance])["InstanceStatuses"]
    assert {name: status[name]["Status"] for name in ("SystemStatus", "InstanceStatus")} == {
        "SystemStatus": "ok", "InstanceStatus": "ok", failing: "impaired"}
    [detail] = status[failing]["Details"]
    assert (detail["Name"], detail["Status"]) == ("reachability", "failed")
    assert abs((dt.datetime.now(dt.timezone.utc) - detail["ImpairedSince"]).total_seconds() - 600) < 60
    assert state(ec2, instance) == "running" and not agents_online(ssm, instance)
    time.sleep(1)
    assert ssm.get_command_invocation(CommandId=sent, InstanceId=instance)["Status"] == "InProgress"
    assert aws.played()[0]["cut_short"] and aws.played()[0]["exit_code"] is None
