"""The KMS keys that will encrypt a run's disks, checked before anything is made.

Every disk the project makes is encrypted. The machines' root disks and the snapshot builder's volume take the
account's default key for EBS; a dataset replica takes its snapshot's key where the account owns the encrypted
snapshot, else that default too (the EBS user guide's encryption outcomes). EBS accepts a key it cannot use and
then deletes the volume, or ends the machine as it launches (Client.InternalError): a run would learn it only after
its role, network and file system were made. The AWS managed key (`alias/aws/ebs`, the default until someone sets
another) is always usable; a customer managed key must be Enabled, and these credentials must be let use it. This
checks what can be asked without using the key (kms:DescribeKey): its state, and that it may be described."""

from __future__ import annotations

from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.base import InputError

AWS_MANAGED_DEFAULT = "alias/aws/ebs"
# What EBS does with a customer managed key as its caller (the EBS user guide, "Permissions for IAM users").
KMS_ACTIONS = "kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt*"
MENDS = {"Disabled": "enable it (`aws kms enable-key`)",
         "PendingDeletion": "cancel its deletion and enable it (`aws kms cancel-key-deletion`, `aws kms enable-key`)"}


def check_keys(clients: Clients, account: str, snapshot: dict | None = None) -> str:
    """The account's default EBS key, and where it differs the key of the dataset's snapshot; returns the default."""
    default = clients.ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
    own_key = snapshot.get("KmsKeyId") if snapshot and snapshot.get("Encrypted") \
        and snapshot.get("OwnerId") == account else None
    disks = "disks" if own_key is None else "machines' root disks"
    _check(clients, default, f"the {disks} (the account's default key for EBS)",
           "or make another key the default (`aws ec2 modify-ebs-default-kms-key-id`)")
    if own_key is not None and own_key != default:
        _check(clients, own_key, f"the dataset replicas (snapshot {snapshot['SnapshotId']} is encrypted with it)",
               "or copy the snapshot under another key (`aws ec2 copy-snapshot --kms-key-id`)")
    return default


def _check(clients: Clients, key: str, encrypts: str, otherwise: str) -> None:
    if key == AWS_MANAGED_DEFAULT:
        return
    said = f"EBS cannot encrypt {encrypts} with KMS key {key}"
    try:
        metadata = clients.client("kms").describe_key(KeyId=key)["KeyMetadata"]
    except Exception as exc:  # noqa: BLE001 - the two answers that say the key cannot be used; others propagate
        if error_code(exc) == "NotFoundException":
            raise InputError(f"{said}: KMS knows no such key; {otherwise.removeprefix('or ')}") from None
        if error_code(exc) == "AccessDeniedException":
            raise InputError(f"{said}: these credentials may not use it; they need {KMS_ACTIONS} on it, from its key "
                             f"policy or theirs, {otherwise}") from None
        raise
    if metadata.get("KeyManager") == "AWS" or metadata["KeyState"] == "Enabled":
        return
    state = metadata["KeyState"]
    raise InputError(f"{said}: the key is {state}; {MENDS.get(state, 'wait until KMS says it is Enabled')}, "
                     f"{otherwise}")
