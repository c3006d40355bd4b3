"""Buckets belong to an account, where moto lets every account use every bucket. S3 refuses a caller of another
account (403 AccessDenied) unless the bucket's policy allows that account ("Principal": "*", the account, or its
root), and refuses a call whose ExpectedBucketOwner (x-amz-expected-bucket-owner) is not the bucket's owner
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-owner-condition.html). A Requester Pays bucket
refuses another account's call that does not say it pays (x-amz-request-payer: requester) with 403, as S3 does
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/ObjectsinRequesterPaysBuckets.html). CreateBucket of a name
another account holds is moto's to answer: BucketAlreadyExists."""

import dataclasses
import json
from typing import Any

from moto.s3.models import s3_backends

from . import access
from .calls import AwsCall
from .errors import Response, error_response


def refusal(call: AwsCall) -> Response | None:
    name = call.params.get("Bucket")
    owner = s3_backends.bucket_accounts.get(name or "")
    if call.service != "s3" or owner is None or call.action == "CreateBucket":
        return None
    partition, account = owner
    bucket = s3_backends[account][partition].buckets.get(name)
    expected = call.params.get("ExpectedBucketOwner")
    if (expected and expected != account) or (account != call.account and (
            not _policy_allows(bucket, call) or not _pays_if_asked(bucket, call))):
        answer = error_response("s3", "AccessDenied", "Access Denied", 403)
        return dataclasses.replace(answer, body=b"") if call.action.startswith("Head") else answer
    return None


def _policy_allows(bucket: Any, call: AwsCall) -> bool:
    if bucket is None or not bucket.policy:
        return False
    statements = json.loads(bucket.policy).get("Statement", [])
    theirs = [s for s in ([statements] if isinstance(statements, dict) else statements)
              if _names(s.get("Principal"), call.account)]
    action, resource, context = access.s3_permission(call)
    if action == "s3:GetObject" and not access.object_exists(bucket.name, call.params.get("Key")):
        # S3 says whether a key exists only to a caller who may list the bucket (GetObject's "Permissions").
        return access.allowed(theirs, "s3:ListBucket", f"arn:aws:s3:::{bucket.name}", {})
    return access.allowed(theirs, action, resource, context)


def _pays_if_asked(bucket: Any, call: AwsCall) -> bool:
    return bucket is None or bucket.payer != "Requester" or call.params.get("RequestPayer") == "requester"


def _names(principal: Any, account: str) -> bool:
    if principal == "*":
        return True
    named = principal.get("AWS", []) if isinstance(principal, dict) else []
    return any(p in ("*", account, f"arn:aws:iam::{account}:root")
               for p in ([named] if isinstance(named, str) else named))
