"""The KMS keys that will encrypt a run's disks, checked before anything is made.

Every disk the project makes is encrypted. The machines' root disks and the snapshot builder's volume take the
account's default key for EBS; a dataset replica takes its snapshot's key where the account owns the encrypted
snapshot, else that default too (the EBS user guide's encryption outcomes). EBS accepts a key it cannot use and
then deletes the volume, or ends the machine as it launches (Client.InternalError): a run would learn it only after
its role, network and file system were made. The AWS managed key (`alias/aws/ebs`, the default until someone sets
another) is always usable. Any other is described (kms:DescribeKey): a customer managed key must be Enabled.
Whether these credentials may use it EBS alone finds out; where they may not even read the default key or
describe a key, the check says what it could not ask rather than refuse a run that may well work (the AWS managed
key, named by its ARN in a snapshot the builder made, is one they need not describe). An AMI of the account's own
whose snapshot is encrypted keeps its key for the root disks; the AMIs the project uses are AWS's.

The results bucket, where it is there already (a team's), keeps its own default encryption: S3 refuses every
upload under a customer managed key that is not Enabled, and the run would learn it only as its project is
uploaded or as its machines write their first results, so that key is described too (a bucket the project
makes is encrypted SSE-S3)."""

from __future__ import annotations

from dataclasses import dataclass

import botocore.exceptions

from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.base import InputError

AWS_MANAGED_ALIAS = "alias/aws/ebs"
AWS_MANAGED_ALIASES = (AWS_MANAGED_ALIAS, "alias/aws/s3")
KMS_ALGORITHMS = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class _Service:
    name: str
    if_unusable: str
    actions: str  # what the service does with a customer managed key as its caller


EBS = _Service("EBS", "EBS deletes the run's volumes as they are made",  # the EBS user guide, "Permissions ..."
               "kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt*")
S3 = _Service("S3", "S3 refuses the run's uploads",  # the S3 user guide, "Using server-side encryption with ..."
              "kms:GenerateDataKey and kms:Decrypt")
MENDS = {"Disabled": "enable it (`aws kms enable-key`)",
         "PendingDeletion": "cancel its deletion and enable it (`aws kms cancel-key-deletion`, `aws kms enable-key`)",
         "PendingImport": "import its key material (`aws kms import-key-material`)"}
OTHER_DEFAULT = "or make another key the default (`aws ec2 modify-ebs-default-kms-key-id`)"
NEW_SNAPSHOT = ("or make the dataset's snapshot anew (`imagenet18 snapshot --from ...`, then delete this one), whose "
                "disks take the account's default key")


@dataclass(frozen=True)
class Checked:
    default: str | None  # the account's default key for EBS; None where these credentials may not read it
    unchecked: tuple[str, ...] = ()  # what could not be asked, and what that leaves to EBS


def check_keys(clients: Clients, account: str, snapshot: dict | None = None, root_disks: bool = True) -> Checked:
    """The account's default EBS key (unless only replicas of an owned encrypted snapshot are made: a pool,
    `root_disks=False`) and such a snapshot's own key. InputError for one EBS cannot use."""
    own_key = snapshot.get("KmsKeyId") if snapshot and snapshot.get("Encrypted") \
        and snapshot.get("OwnerId") == account else None
    default, unchecked = None, []
    if root_disks or own_key is None:
        try:
            default = clients.ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "UnauthorizedOperation":
                raise
            unchecked.append("these credentials may not read the account's default EBS encryption key "
                             "(ec2:GetEbsDefaultKmsKeyId, in tasks/backends/aws/user_policy.json), so it was not "
                             "checked: one EBS cannot use would end the run's disks as they are made")
        else:
            disks = "dataset replicas" if not root_disks else "machines' root disks" if own_key not in (None, default) \
                else "disks"
            unchecked += _check(clients, default, f"the {disks} (the account's default key for EBS)",
                                OTHER_DEFAULT).unchecked
    if own_key is not None and own_key != default:
        unchecked += _check(clients, own_key, f"the dataset replicas (snapshot {snapshot['SnapshotId']} is "
                                              "encrypted with it)", NEW_SNAPSHOT).unchecked
    return Checked(default, tuple(unchecked))


@dataclass(frozen=True)
class BucketKey:
    key: str | None  # the KMS key the bucket's default encryption names; None: SSE-S3, or a bucket yet to be made
    described: str  # as the doctor shows it
    unchecked: tuple[str, ...] = ()
    customer_managed: bool = False  # or not known to be AWS managed


def check_bucket_key(clients: Clients, bucket: str, region: str) -> BucketKey:
    """The default encryption key of a bucket that is there, in `region`, which may not be the run's: so is its key.
    InputError for one S3 cannot use."""
    try:
        rules = clients.client("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "ServerSideEncryptionConfigurationNotFoundError":  # before 2023; SSE-S3 since
            return BucketKey(None, f"s3://{bucket}: SSE-S3")
        if error_code(exc) not in ("AccessDenied", "AccessDeniedException"):
            raise
        return BucketKey(None, f"s3://{bucket}: not checked", (
            f"these credentials may not read the default encryption of bucket {bucket} (s3:GetEncryptionConfiguration, "
            "which tasks/backends/aws/user_policy.json allows on imagenet18-* buckets), so it was not checked: under "
            "a KMS key S3 cannot use, the run's uploads are refused",),
            customer_managed=True)
    default = rules[0].get("ApplyServerSideEncryptionByDefault", {}) if rules else {}
    if default.get("SSEAlgorithm") not in KMS_ALGORITHMS:
        return BucketKey(None, f"s3://{bucket}: SSE-S3")
    key = default.get("KMSMasterKeyID") or "alias/aws/s3"
    keys_clients = clients if region == clients.region else Clients(region, clients.journals)
    checked = _check(keys_clients, key, f"the run's results in bucket {bucket}", "or name another --bucket", S3)
    return BucketKey(key, f"s3://{bucket}: KMS key {key}", tuple(checked.unchecked), checked.customer_managed)


def default_is_aws_managed(clients: Clients) -> bool:
    """Whether the account's default EBS key is known to be the AWS managed key, which EBS uses without a grant of
    the caller's; False where these credentials may not read or describe it."""
    try:
        key = clients.ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
        return aws_managed(key) or \
            clients.client("kms").describe_key(KeyId=key)["KeyMetadata"].get("KeyManager") == "AWS"
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) not in ("UnauthorizedOperation", "AccessDeniedException", "NotFoundException"):
            raise
        return False


def aws_managed(key: str) -> bool:
    return any(key == alias or key.endswith(f":{alias}") for alias in AWS_MANAGED_ALIASES)


@dataclass(frozen=True)
class _Described:
    unchecked: list[str]  # what could not be asked
    customer_managed: bool  # or not known to be AWS managed


def _check(clients: Clients, key: str, encrypts: str, otherwise: str, service: _Service = EBS) -> _Described:
    """Whether KMS describes the key as one the service can use; InputError where it does not."""
    if aws_managed(key):
        return _Described([], False)
    said = f"{service.name} cannot encrypt {encrypts} with KMS key {key}"
    try:
        metadata = clients.client("kms").describe_key(KeyId=key)["KeyMetadata"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "NotFoundException":
            raise InputError(f"{said}: KMS knows no such key; {otherwise.removeprefix('or ')}") from None
        if error_code(exc) != "AccessDeniedException":
            raise
        return _Described([f"these credentials may not describe KMS key {key} (kms:DescribeKey), the key of "
                           f"{encrypts}, so it was not checked: with a customer managed key they may not use, "
                           f"{service.if_unusable}; they need {service.actions} on it"], True)
    if metadata.get("KeyManager") == "AWS":
        return _Described([], False)
    if metadata["KeyState"] != "Enabled":
        state = metadata["KeyState"]
        raise InputError(f"{said}: the key is {state}; {MENDS.get(state, 'wait until KMS says it is Enabled')}, "
                         f"{otherwise}")
    return _Described([], True)
