"""The results bucket: where a run's logs, metrics, TensorBoard events and checkpoints stay after teardown
(the seed kept them on EFS). Private, encrypted, made once per account and region."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tasks.backends.aws import pools
from tasks.backends.aws.clients import Clients, error_code

PROJECT_PARTS = ("trainer", "tasks", "flows", "deployments", "pyproject.toml", "README.md", "requirements.lock")


def bucket_name(clients: Clients, name: str | None) -> str:
    return name or f"imagenet18-{clients.check_credentials()}-{clients.region}"


def upload_project(clients: Clients, bucket: str, url: str, parallel: int = 1) -> None:
    """The project's source, where user-data fetches it from (`url` is in `bucket`, made if missing: private
    and encrypted, its two settings made beside the upload, which then asks for encryption itself; a bucket that
    was there keeps its own default, e.g. a KMS key its policy requires)."""
    s3 = clients.client("s3")
    made = _make_bucket(clients, bucket)
    with pools.pool(parallel, 3) as pool:
        calls = [pool.submit(s3.put_object, Bucket=bucket, Key=url.removeprefix(f"s3://{bucket}/"),
                             Body=project_archive(), **({"ServerSideEncryption": "AES256"} if made else {}))]
        if made:
            calls += [pool.submit(s3.put_public_access_block, Bucket=bucket, PublicAccessBlockConfiguration={
                          "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                          "RestrictPublicBuckets": True}),
                      pool.submit(s3.put_bucket_encryption, Bucket=bucket, ServerSideEncryptionConfiguration={
                          "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})]
        for call in calls:
            call.result()


def _make_bucket(clients: Clients, name: str) -> bool:
    """True when the bucket was made now, False when it was there."""
    s3 = clients.client("s3")
    try:
        s3.head_bucket(Bucket=name)
        return False
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    location = {} if clients.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": clients.region}}
    try:
        s3.create_bucket(Bucket=name, **location)
    except Exception as exc:  # noqa: BLE001 - another run made it a moment ago
        if error_code(exc) != "BucketAlreadyOwnedByYou":
            raise
    return True


def project_archive() -> bytes:
    """The project's source as the machines install it (user-data unpacks it into /opt/imagenet18)."""
    root = Path(__file__).resolve().parents[3]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for part in PROJECT_PARTS:
            archive.add(root / part, arcname=part,
                        filter=lambda info: None if "__pycache__" in info.name else info)
    return buffer.getvalue()
