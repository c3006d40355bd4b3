"""The machines' S3 calls under their role's policies, as AWS evaluates them. moto checks no IAM policy, so a
machine here could read and write anything; on AWS its instance profile's role allows only what the run needs.

A played process gets the credentials of its instance's role (`machine_credentials`), as a real machine gets
them from its instance metadata. An S3 call signed with them is refused (403 AccessDenied) unless a statement
of the role's policies allows it; and since S3 hides whether a key exists from a caller who may not list the
bucket, a HEAD or GET of a missing key is refused too unless s3:ListBucket is allowed with no s3:prefix
condition (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html, "Permissions").
Calls signed with other credentials (the user's) are moto's to answer, as before."""

import dataclasses
import json
import re
from typing import Any

from moto.iam.models import iam_backends
from moto.s3.models import s3_backends
from moto.sts.models import sts_backends

from .calls import AwsCall
from .errors import Response, error_response

PARTITION = "aws"
# S3 operations whose IAM action is not s3:<operation>.
ACTION_BY_OPERATION = {
    "HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "CopyObject": "s3:PutObject", "DeleteObjects": "s3:DeleteObject",
}


def machine_credentials(instance: Any) -> dict[str, str]:
    """The environment that gives a played process its instance's role; none without an instance profile."""
    association = instance.ec2_backend.iam_instance_profile_associations.get(instance.id)
    roles = association.iam_instance_profile.roles if association else []
    if not roles:
        return {}
    sts = sts_backends[instance.ec2_backend.account_id][PARTITION]
    assumed = sts.assume_role(region_name=instance.ec2_backend.region_name, role_session_name=instance.id,
                              role_arn=roles[0].arn, policy="", duration=43200, external_id="")
    return {"AWS_ACCESS_KEY_ID": assumed.access_key_id, "AWS_SECRET_ACCESS_KEY": assumed.secret_access_key,
            "AWS_SESSION_TOKEN": assumed.session_token}


def s3_refusal(call: AwsCall) -> Response | None:
    """AccessDenied where AWS would refuse this S3 call of a machine's role; None lets moto answer."""
    statements = _role_statements(call)
    if statements is None or "Bucket" not in call.params:
        return None
    bucket, key = call.params["Bucket"], call.params.get("Key")
    action = ACTION_BY_OPERATION.get(call.action, f"s3:{call.action}")
    listing = action == "s3:ListBucket"
    resource = f"arn:aws:s3:::{bucket}" + ("" if listing or key is None else f"/{key}")
    context = {"s3:prefix": call.params["prefix"]} if listing and "prefix" in call.params else {}
    if not allowed(statements, action, resource, context):
        return _denied(call)
    if action == "s3:GetObject" and not _exists(bucket, key) and not allowed(
            statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {}):
        return _denied(call)
    return None


def allowed(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, str]) -> bool:
    """IAM's answer within one identity: some statement allows, and none denies."""
    effects = {s.get("Effect") for s in statements if _applies(s, action, resource, context)}
    return "Allow" in effects and "Deny" not in effects


def _applies(statement: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    return (any(_glob(pattern, action, case=False) for pattern in _listed(statement.get("Action")))
            and any(_glob(pattern, resource) for pattern in _listed(statement.get("Resource")))
            and _conditions_hold(statement.get("Condition", {}), context))


def _conditions_hold(condition: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    """Every condition holds; a key the request lacks fails its condition, as does an operator not evaluated
    here (it never grants more than AWS would)."""
    for operator, tests in condition.items():
        for key, values in tests.items():
            if key not in context or operator not in ("StringLike", "StringEquals"):
                return False
            exact = operator == "StringEquals"
            if not any(context[key] == v if exact else _glob(v, context[key]) for v in _listed(values)):
                return False
    return True


def _glob(pattern: str, value: str, case: bool = True) -> bool:
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _role_statements(call: AwsCall) -> list[dict[str, Any]] | None:
    """The statements of the role whose temporary credentials signed the call; None when no role's did."""
    iam = iam_backends[call.account][PARTITION]
    access_key = iam.access_keys.get(call.access_key)
    if access_key is None or not access_key.role_arn:
        return None
    role = next((r for r in list(iam.roles.values()) if r.arn == access_key.role_arn), None)
    if role is None:  # deleted since: its sessions may do nothing
        return []
    documents = list(role.policies.values()) + [
        version.document for policy in list(role.managed_policies.values()) for version in policy.versions
        if version.version_id == policy.default_version_id]
    statements = []
    for document in documents:
        found = (json.loads(document) if isinstance(document, str) else document).get("Statement", [])
        statements += [found] if isinstance(found, dict) else found
    return statements


def _exists(bucket: str, key: str | None) -> bool:
    owner = s3_backends.bucket_accounts.get(bucket)
    if owner is None or key is None:
        return False
    partition, account = owner
    found = s3_backends[account][partition].buckets.get(bucket)
    return found is not None and found.keys.get(key) is not None


def _denied(call: AwsCall) -> Response:
    answer = error_response("s3", "AccessDenied", f"the role's policies do not allow {call.action} here", 403)
    if call.action.startswith("Head"):  # an answer to HEAD has no body: one sent would be read as the next answer
        return dataclasses.replace(answer, body=b"")
    return answer
