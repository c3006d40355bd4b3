"""A new bucket is not there for every call at once, where moto's is: "Bucket configurations have an eventual
consistency model" (the S3 user guide, "Amazon S3 data consistency model"), and CreateBucket may answer while
HeadBucket still answers 404 for a while (https://github.com/cloudfoundry/storage-cli/pull/148; Terraform's S3
resources ask a new bucket's settings again on NoSuchBucket for two minutes). Here, for `settling_s` after
CreateBucket, every call naming the new bucket answers NoSuchBucket (404; a HEAD's without a body)."""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from moto.s3.models import S3Backend, s3_backends

from .calls import AwsCall
from .errors import Response, error_response


def fix_new_buckets_settle(settling_s: Callable[[], float]) -> None:
    create = S3Backend.create_bucket

    def create_settling(self: Any, *args: Any, **kwargs: Any) -> Any:
        bucket = create(self, *args, **kwargs)
        bucket.settled_by = time.time() + settling_s()
        return bucket

    S3Backend.create_bucket = create_settling


def settled(bucket: Any) -> None:
    """`bucket` answers every call from now on (one made long ago)."""
    bucket.settled_by = 0.0


def refusal(call: AwsCall) -> Response | None:
    name = call.params.get("Bucket", "")
    owner = s3_backends.bucket_accounts.get(name)
    if call.action == "CreateBucket" or owner is None:
        return None
    partition, account = owner
    bucket = s3_backends[account][partition].buckets.get(name)
    if bucket is None or time.time() >= getattr(bucket, "settled_by", 0.0):
        return None
    answer = error_response("s3", "NoSuchBucket", "The specified bucket does not exist", 404)
    return dataclasses.replace(answer, body=b"") if call.action.startswith("Head") else answer
