"""The KMS keys that encrypt EBS volumes, which moto names but never uses.

Which key: a volume made encrypted without a KmsKeyId is encrypted by the account's default key for EBS (the AWS
managed `alias/aws/ebs` unless ModifyEbsDefaultKmsKeyId chose another), except one made from an encrypted snapshot
the account owns, which keeps the snapshot's key ("An encrypted snapshot that you own is restored to a volume that
is encrypted to the same KMS key", the EBS user guide's encryption outcomes); another account's encrypted snapshot
gives the default. CreateSnapshot keeps its volume's key. GetEbsDefaultKmsKeyId answers `alias/aws/ebs`, even once
the key exists, until a key is chosen, then that key's ARN.

When EBS cannot use the key, it says so only after answering ("Amazon Web Services authenticates the KMS key
asynchronously. Therefore, if you specify an identifier that is not valid, the action can appear to complete, but
eventually fails": CreateVolume's KmsKeyId). It cannot use a customer managed key that is not Enabled (disabled,
pending deletion), nor one the caller may not use: an IAM user's call whose policies do not allow EBS's KMS
actions on it through EC2 (the AWS managed key's policy lets every caller in the account use it through EBS). Such
a volume is described `creating`, and VANISH_S later EC2 knows it no more. A machine whose encrypted disk has a key
that is not Enabled ends as it launches, with Client.InternalError (the EC2 troubleshooting guide's "instance
terminates immediately")."""

import threading
import time
import uuid
from typing import Any

from moto.ec2.models.elastic_block_store import EBSBackend
from moto.kms.models import kms_backends

from . import access, backends
from .calls import AwsCall
from .errors import Response, xml_response
from .initialization import EC2_NS, created_volume

VANISH_S = 1.0
AWS_MANAGED_ALIAS = "alias/aws/ebs"
# What EBS does with the key as the caller, through EC2 (the EBS user guide, "Permissions for IAM users").
EBS_KMS_ACTIONS = ("kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
                   "kms:ReEncryptFrom", "kms:ReEncryptTo")


def fix_ebs_encryption() -> None:
    """The default key is AWS managed; a volume keeps its owned snapshot's key (another account's: the default),
    CreateSnapshot its volume's."""
    make_default = EBSBackend._create_default_encryption_key

    def create_default_encryption_key(self: Any) -> str:
        arn = make_default(self)
        kms_backends[self.account_id][self.region_name].describe_key(arn).key_manager = "AWS"
        return arn

    EBSBackend._create_default_encryption_key = create_default_encryption_key

    create_volume = EBSBackend.create_volume

    def create_volume_keeping_snapshot_key(self: Any, *args: Any, **kwargs: Any) -> Any:
        snapshot = self.snapshots.get(kwargs.get("snapshot_id") or "")
        if snapshot is not None and snapshot.encrypted and not kwargs.get("kms_key_id"):
            owned = snapshot.owner_id == self.account_id
            kwargs.update(encrypted=True, kms_key_id=snapshot.kms_key_id if owned else None)  # else: the default
        return create_volume(self, *args, **kwargs)

    EBSBackend.create_volume = create_volume_keeping_snapshot_key

    create_snapshot = EBSBackend.create_snapshot

    def create_snapshot_keeping_volume_key(self: Any, volume_id: str, *args: Any, **kwargs: Any) -> Any:
        snapshot = create_snapshot(self, volume_id, *args, **kwargs)
        if snapshot.encrypted and not snapshot.kms_key_id:
            snapshot.kms_key_id = self.get_volume(volume_id).kms_key_id
        return snapshot

    EBSBackend.create_snapshot = create_snapshot_keeping_volume_key

    modify_default = EBSBackend.modify_ebs_default_kms_key_id

    def modify_default_key(self: Any, kms_key_id: str) -> str:
        arn = modify_default(self, kms_key_id)
        self.default_key_chosen = bool(kms_key_id)
        return arn

    EBSBackend.modify_ebs_default_kms_key_id = modify_default_key


def default_key_answer(call: AwsCall) -> Response:
    """GetEbsDefaultKmsKeyId, which moto lacks."""
    ec2 = backends.ec2(call.account, call.region)
    key = ec2.default_kms_key_id if getattr(ec2, "default_key_chosen", False) else AWS_MANAGED_ALIAS
    return xml_response(f'<GetEbsDefaultKmsKeyIdResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>'
                        f"<kmsKeyId>{key}</kmsKeyId></GetEbsDefaultKmsKeyIdResponse>")


def usable(account: str, region: str, key_id: str | None, call: AwsCall | None = None) -> bool:
    """Whether EBS can encrypt with the key for this call's caller (any caller where no call is given); it cannot
    with one KMS does not know here."""
    try:
        key = kms_backends[account][region].describe_key(key_id or "")
    except Exception:  # noqa: BLE001 - moto's NotFound, or a KeyError for an id it never saw
        return False
    if key.key_manager == "AWS":
        return True
    if key.key_state != "Enabled":
        return False
    return call is None or access.user_allows(call, EBS_KMS_ACTIONS, key.arn,
                                              {"kms:ViaService": f"ec2.{region}.amazonaws.com"})


class Encryption:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doomed: dict[str, tuple[str, str, float]] = {}  # volume id -> (account, region, when it goes)

    def reset(self) -> None:
        with self._lock:
            self._doomed.clear()

    def record_create(self, call: AwsCall, response_body: bytes) -> None:
        volume_id = created_volume(response_body)
        volume = backends.ec2(call.account, call.region).volumes[volume_id]
        if not volume.encrypted or usable(call.account, call.region, volume.kms_key_id, call):
            return
        volume.creating = True
        with self._lock:
            self._doomed[volume_id] = (call.account, call.region, time.time() + VANISH_S)

    def vanish(self) -> None:
        """EBS deletes the doomed volumes whose time has come."""
        now = time.time()
        with self._lock:
            gone = [(volume_id, where) for volume_id, where in self._doomed.items() if where[2] <= now]
            for volume_id, _ in gone:
                del self._doomed[volume_id]
        for volume_id, (account, region, _) in gone:
            ec2 = backends.ec2(account, region)
            ec2.volumes.pop(volume_id, None)
            ec2.tags.pop(volume_id, None)


def launch_fails(instance: Any) -> bool:
    """Whether a new machine has an encrypted disk whose key EBS cannot use."""
    ec2 = instance.ec2_backend
    return any(volume.encrypted and not usable(ec2.account_id, ec2.region_name, volume.kms_key_id)
               for volume in list(ec2.volumes.values())
               if volume.attachment is not None and volume.attachment.instance.id == instance.id)
