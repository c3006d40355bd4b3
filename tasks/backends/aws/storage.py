"""The results bucket: where a run's logs, metrics, TensorBoard events and checkpoints stay after teardown
(the seed kept them on EFS). Private, encrypted, made once per account and region."""

from __future__ import annotations

from tasks.backends.aws.clients import Clients, error_code


def ensure_bucket(clients: Clients, name: str | None) -> str:
    s3 = clients.client("s3")
    if name is None:
        name = f"imagenet18-{clients.check_credentials()}-{clients.region}"
    try:
        s3.head_bucket(Bucket=name)
        return name
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    location = {} if clients.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": clients.region}}
    s3.create_bucket(Bucket=name, **location)
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    return name


def put(clients: Clients, bucket: str, key: str, body: bytes) -> None:
    clients.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
