"""The KMS keys that encrypt S3 objects, which moto records but never uses.

An object is encrypted with SSE-KMS where its upload asks for it (x-amz-server-side-encryption: aws:kms, with
x-amz-server-side-encryption-aws-kms-key-id or else the AWS managed key `aws/s3`) or, asking nothing, where the
bucket's default encryption says so (its KMSMasterKeyID, or `aws/s3`). S3 then uses the key as the caller: an upload
needs kms:GenerateDataKey on it, a multipart upload kms:Decrypt too, a download kms:Decrypt
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html, "Permissions";
https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html). The AWS managed key's own policy allows
every principal of the account through S3, so it needs no IAM permission; a customer managed key needs the
caller's policies to allow it, with the condition keys kms:ViaService (s3.<region>.amazonaws.com) and
kms:EncryptionContext:aws:s3:arn (the object's ARN). A key KMS does not know is refused as one not allowed; a key
that is not Enabled is refused whoever calls."""

from typing import Any

from moto.kms.models import KmsBackend, kms_backends
from moto.s3.models import s3_backends

from .calls import AwsCall
from .errors import Response, error_response

UPLOADS = {"PutObject": ("kms:GenerateDataKey",), "CopyObject": ("kms:GenerateDataKey",),
           "CreateMultipartUpload": ("kms:GenerateDataKey", "kms:Decrypt")}
DOWNLOADS = {"GetObject": ("kms:Decrypt",)}
KMS_ALGORITHMS = ("aws:kms", "aws:kms:dsse")
AWS_MANAGED_ALIAS = "alias/aws/s3"


def fix_aws_managed_keys() -> None:
    """The keys KMS makes for its `alias/aws/*` names on first use are AWS managed (moto makes them customer
    managed)."""
    make = KmsBackend._generate_default_keys

    def generate_default_keys(self: Any, alias_name: str) -> str | None:
        key_id = make(self, alias_name)
        if key_id is not None:
            self.keys[key_id].key_manager = "AWS"
        return key_id

    KmsBackend._generate_default_keys = generate_default_keys


def uses(call: AwsCall) -> list[tuple[str, str, dict[str, str]]]:
    """(KMS action, key ARN, condition keys) the S3 call needs of its caller; none for the AWS managed key. A key
    KMS does not know is named as the call named it."""
    if call.service != "s3" or "Bucket" not in call.params:
        return []
    key_id = _upload_key(call) if call.action in UPLOADS else _object_key(call) if call.action in DOWNLOADS else None
    if key_id is None:
        return []
    key = _described(call, key_id)
    if key is not None and key.key_manager == "AWS":
        return []
    arn = key.arn if key is not None else key_id
    context = {"kms:ViaService": f"s3.{call.region}.amazonaws.com",
               "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{call.params['Bucket']}/{call.params.get('Key', '')}"}
    return [(action, arn, context) for action in {**UPLOADS, **DOWNLOADS}[call.action]]


def state_refusal(call: AwsCall) -> Response | None:
    """KMS's refusal of a key that is not Enabled, as S3 passes it on to any caller."""
    for _, arn, _ in uses(call):
        key = _described(call, arn)
        if key is None or key.key_state == "Enabled":
            continue
        if key.key_state == "Disabled":
            return error_response("s3", "KMS.DisabledException", f"{arn} is disabled.", 400)
        return error_response("s3", "KMS.KMSInvalidStateException", f"{arn} is {key.key_state}.", 400)
    return None


def _upload_key(call: AwsCall) -> str | None:
    """The key id an upload encrypts with: its own header's, else the bucket default's; None without SSE-KMS."""
    algorithm, key_id = call.params.get("ServerSideEncryption"), call.params.get("SSEKMSKeyId")
    if algorithm is None:
        bucket = _bucket(call)
        rule = (bucket.encryption or {}).get("Rule", {}).get("ApplyServerSideEncryptionByDefault", {}) \
            if bucket is not None else {}
        algorithm, key_id = rule.get("SSEAlgorithm"), rule.get("KMSMasterKeyID")
    if algorithm not in KMS_ALGORITHMS:
        return None
    return key_id or AWS_MANAGED_ALIAS


def _object_key(call: AwsCall) -> str | None:
    bucket = _bucket(call)
    found = bucket.keys.get(call.params.get("Key", "")) if bucket is not None else None
    if found is None or found.encryption not in KMS_ALGORITHMS:
        return None
    return found.kms_key_id or AWS_MANAGED_ALIAS


def _bucket(call: AwsCall) -> Any:
    owner = s3_backends.bucket_accounts.get(call.params["Bucket"])
    if owner is None:
        return None
    partition, account = owner
    return s3_backends[account][partition].buckets.get(call.params["Bucket"])


def _described(call: AwsCall, key_id: str) -> Any:
    """The key as KMS knows it in the call's region (a key ARN names its own), or None."""
    region = key_id.split(":")[3] if key_id.startswith("arn:") else call.region
    account = key_id.split(":")[4] if key_id.startswith("arn:") else call.account
    try:
        return kms_backends[account][region].describe_key(key_id)
    except Exception:  # noqa: BLE001 - moto's NotFound, or a KeyError for an id it never saw
        return None
