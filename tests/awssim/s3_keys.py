"""The KMS keys that encrypt S3 objects, which moto records but never uses.

An object is encrypted with SSE-KMS where its upload asks for it (x-amz-server-side-encryption: aws:kms, with
x-amz-server-side-encryption-aws-kms-key-id or else the AWS managed key `aws/s3`) or, asking nothing, where the
bucket's default encryption says so (its KMSMasterKeyID, or `aws/s3`). S3 then uses the key as the caller: an upload
(or the start of a multipart one) needs kms:GenerateDataKey on it, each part of a multipart upload and a download
kms:Decrypt (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html, "Permissions";
https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html). The AWS managed key's own policy
allows every principal of the account through S3, so it needs no IAM permission; a customer managed key needs the
caller's policies to allow it, with the condition keys kms:ViaService (s3.<the bucket's region>.amazonaws.com) and
kms:EncryptionContext:aws:s3:arn (the object's ARN). The AWS managed key's policy cannot be changed, so another
account's caller, whom a bucket policy lets read the bucket, may not read the objects under it: 403 AccessDenied
(UsingKMSEncryption.html, "cross-account operations": a customer managed key's policy must allow them). A key an
upload names without an ARN is the caller's account's; an object's is its bucket owner's (who put it, here).
PutBucketEncryption takes a key id without checking it: a call
under a key KMS does not know is refused (KMS.NotFoundException), as is one under a key that is not Enabled,
whoever calls."""

import re
from typing import Any

from moto.kms.models import KmsBackend, kms_backends
from moto.s3.models import s3_backends

from .calls import AwsCall
from .errors import Response, error_response

UPLOADS = {"PutObject": ("kms:GenerateDataKey",), "CopyObject": ("kms:GenerateDataKey",),
           "CreateMultipartUpload": ("kms:GenerateDataKey",)}
DOWNLOADS = {"GetObject": ("kms:Decrypt",)}
PARTS = {"UploadPart": ("kms:Decrypt",), "UploadPartCopy": ("kms:Decrypt",)}
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
    key_id = _key_id(call)
    if key_id is None:
        return []
    key = _described(call, key_id)
    if key is not None and key.key_manager == "AWS":
        return []
    arn = key.arn if key is not None else key_id
    context = {"kms:ViaService": f"s3.{_region(call)}.amazonaws.com",
               "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{call.params['Bucket']}/{call.params.get('Key', '')}"}
    return [(action, arn, context) for action in {**UPLOADS, **DOWNLOADS, **PARTS}[call.action]]


def foreign_managed_key_refusal(call: AwsCall) -> Response | None:
    """S3's refusal of a download under another account's AWS managed key."""
    if call.service != "s3" or call.action not in DOWNLOADS or "Bucket" not in call.params:
        return None
    key_id = _key_id(call)
    key = _described(call, key_id) if key_id is not None else None
    if key is not None and key.key_manager == "AWS" and key.account_id != call.account:
        return error_response("s3", "AccessDenied", "Access Denied", 403)
    return None


def state_refusal(call: AwsCall) -> Response | None:
    """KMS's refusal of a key it does not know or that is not Enabled, as S3 passes it on to any caller."""
    for _, arn, _ in uses(call):
        key = _described(call, arn)
        if key is None:
            return error_response("s3", "KMS.NotFoundException", f"Key '{arn}' does not exist", 400)
        if key.key_state == "Disabled":
            return error_response("s3", "KMS.DisabledException", f"{arn} is disabled.", 400)
        if key.key_state != "Enabled":
            state = re.sub(r"(?<!^)([A-Z])", r" \1", key.key_state).lower()  # PendingDeletion: pending deletion
            return error_response("s3", "KMS.KMSInvalidStateException", f"{arn} is {state}.", 400)
    return None


def _key_id(call: AwsCall) -> str | None:
    """The key id the call encrypts or decrypts with; None without SSE-KMS."""
    if call.action in UPLOADS:
        return _upload_key(call)
    if call.action in DOWNLOADS:
        bucket = _bucket(call)
        found = bucket.keys.get(call.params.get("Key", "")) if bucket is not None else None
        # The latest version may be a delete marker, which has no encryption.
        return _kms_key(getattr(found, "encryption", None), getattr(found, "kms_key_id", None))
    if call.action in PARTS:
        bucket = _bucket(call)
        upload = bucket.multiparts.get(call.params.get("uploadId", "")) if bucket is not None else None
        if upload is None:
            return None
        # Started without SSE headers, the upload takes the bucket's default (moto applies it only at the end).
        return _kms_key(upload.sse_encryption, upload.kms_key_id) if upload.sse_encryption else _upload_key(call)
    return None


def _upload_key(call: AwsCall) -> str | None:
    """An upload's: its own header's, else the bucket default's."""
    algorithm, key_id = call.params.get("ServerSideEncryption"), call.params.get("SSEKMSKeyId")
    if algorithm is None:
        bucket = _bucket(call)
        rule = (bucket.encryption or {}).get("Rule", {}).get("ApplyServerSideEncryptionByDefault", {}) \
            if bucket is not None else {}
        algorithm, key_id = rule.get("SSEAlgorithm"), rule.get("KMSMasterKeyID")
    return _kms_key(algorithm, key_id)


def _kms_key(algorithm: str | None, key_id: str | None) -> str | None:
    return (key_id or AWS_MANAGED_ALIAS) if algorithm in KMS_ALGORITHMS else None


def _bucket(call: AwsCall) -> Any:
    owner = s3_backends.bucket_accounts.get(call.params["Bucket"])
    if owner is None:
        return None
    partition, account = owner
    return s3_backends[account][partition].buckets.get(call.params["Bucket"])


def _region(call: AwsCall) -> str:
    """Where S3 works on the call: the bucket's region (botocore follows S3's redirect there), not the signer's."""
    bucket = _bucket(call)
    return bucket.region_name if bucket is not None else call.region


def _described(call: AwsCall, key_id: str) -> Any:
    """The key as KMS knows it in the bucket's region (a key ARN names its own), or None."""
    try:
        region = key_id.split(":")[3] if key_id.startswith("arn:") else _region(call)
        owner = s3_backends.bucket_accounts.get(call.params["Bucket"])
        account = (key_id.split(":")[4] if key_id.startswith("arn:")
                   else owner[1] if owner and call.action in DOWNLOADS else call.account)
        return kms_backends[account][region].describe_key(key_id)
    except Exception:  # noqa: BLE001 - moto's NotFound, a KeyError for an id it never saw, a malformed ARN
        return None
