"""The results bucket: where a run's logs, metrics, TensorBoard events and checkpoints stay after teardown
(the seed kept them on EFS). Private, encrypted, made once per account and region."""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from tasks.backends.aws import encryption
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.base import BackendError, InputError

RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
BUCKET_SETTLING_S = 120.0  # how long a new bucket may answer NoSuchBucket (Terraform's S3 resources wait as long)
PROJECT_PARTS = ("trainer", "tasks", "flows", "deployments", "pyproject.toml", "README.md", "requirements.lock")


def bucket_name(clients: Clients, name: str | None) -> str:
    return name or _default_name(clients.check_credentials(), clients.region)


def _default_name(account: str, region: str) -> str:
    return f"imagenet18-{account}-{region}"


def check_bucket(clients: Clients, bucket: str, account: str) -> encryption.BucketKey:
    """The results bucket as a run of `account` will use it, before anything is made: one there already is the
    account's (S3 refuses another account's, and its name cannot be made again) and under a key S3 can use
    (encryption.check_bucket_key). InputError otherwise."""
    try:
        # Its answer names the bucket's region (x-amz-bucket-region), where S3 keeps its KMS key.
        region = clients.client("s3").head_bucket(Bucket=bucket, ExpectedBucketOwner=account)["BucketRegion"]
    except Exception as exc:  # noqa: BLE001 - botocore's ClientError, whose code for a HEAD is the HTTP status
        if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            if problem := new_name_problem(bucket):
                raise InputError(f"there is no bucket {bucket} to use, and S3 makes none so named: {problem}") \
                    from None
            return encryption.BucketKey(None, f"s3://{bucket}: not there yet, made private and encrypted (SSE-S3) "
                                              "by the run")
        if error_code(exc) in ("403", "AccessDenied"):
            default = _default_name(account, clients.region)
            mend = "give --bucket, one of the account's" if bucket == default else \
                f"name another --bucket, or none for the run's own, {default}"
            raise InputError(f"bucket {bucket} is another account's, or these credentials may not list it (S3 "
                             f"answered 403 to HeadBucket as account {account}): {mend}") from None
        raise
    return encryption.check_bucket_key(clients, bucket, region)


def new_name_problem(name: str) -> str | None:
    """What S3's rules for a new general purpose bucket's name say of `name`; None where it may be made
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html). A bucket made before
    March 2018 in us-east-1 may have another name, and is used as it is."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name) or ".." in name:
        return ("3 to 63 lowercase letters, digits, dots and hyphens, beginning and ending with a letter or digit, "
                "no two dots together")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "not formatted as an IP address"
    if name.startswith(RESERVED_PREFIXES) or name.endswith(RESERVED_SUFFIXES):
        return f"not beginning with {', '.join(RESERVED_PREFIXES)} nor ending with {', '.join(RESERVED_SUFFIXES)}"
    return None


def upload_project(clients: Clients, bucket: str, url: str) -> None:
    """The project's source, where user-data fetches it from (`url` is in `bucket`, made if missing: ensure_bucket)."""
    ensure_bucket(clients, bucket)
    s3, archive = clients.client("s3"), project_archive()
    _once_settled(bucket, lambda: s3.put_object(Bucket=bucket, Key=url.removeprefix(f"s3://{bucket}/"), Body=archive))


def ensure_bucket(clients: Clients, bucket: str) -> None:
    """The bucket, made if missing: private and encrypted (SSE-S3), returning once S3 answers for it. One that was
    there keeps its own settings (a KMS key its policy requires, say)."""
    if not _make_bucket(clients, bucket):
        return
    s3 = clients.client("s3")
    # One setting at a time: S3 may refuse a change while another is under way (OperationAborted).
    _once_settled(bucket, lambda: s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}))
    _once_settled(bucket, lambda: s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}))


def _once_settled(bucket: str, call: Callable[[], object]) -> None:
    """`call` on a bucket made moments ago, asked again while S3 answers that the bucket is not there: "Bucket
    configurations have an eventual consistency model" (the S3 user guide's consistency model), and a new bucket
    may answer NoSuchBucket for a while."""
    deadline, delay = time.monotonic() + BUCKET_SETTLING_S, 0.1
    while True:
        try:
            call()
            return
        except Exception as exc:  # noqa: BLE001 - botocore's ClientError
            if error_code(exc) != "NoSuchBucket":
                raise
            if time.monotonic() > deadline:
                raise BackendError(f"bucket {bucket}, made {BUCKET_SETTLING_S:.0f} s ago, is still not there for S3: "
                                   f"{exc}") from exc
        time.sleep(delay)
        delay = min(2 * delay, 5.0)


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
