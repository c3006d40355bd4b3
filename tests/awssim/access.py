"""Calls under IAM policies, as AWS evaluates them, where moto checks none: the machines' S3 calls under their
role's policies, and every call signed by an IAM user's keys under that user's policies (a test gives the flow
such a user to prove a policy enough); and IAM's policy simulator, which answers from the same evaluation. On
AWS a machine's role allows only what the run needs.

A played process gets the credentials of its instance's role (`machine_credentials`), as a real machine gets
them from its instance metadata. An S3 call signed with them is refused (403 AccessDenied) unless a statement
of the role's policies allows it; and since S3 hides whether a key exists from a caller who may not list the
bucket, a HEAD or GET of a missing key is refused too unless s3:ListBucket is allowed with no s3:prefix
condition (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html, "Permissions").
Calls signed with other credentials (the simulator's own test keys) are moto's to answer, as before."""

import dataclasses
import json
import re
import threading
from typing import Any
from xml.sax.saxutils import escape

from moto.iam.models import iam_backends
from moto.s3.models import s3_backends
from moto.sts.models import sts_backends

from . import s3_keys
from .calls import AwsCall, service_model
from .errors import Response, error_response

PARTITION = "aws"
IAM_PREFIX = {"efs": "elasticfilesystem", "service-quotas": "servicequotas"}  # where it is not botocore's name
NEEDS_NO_PERMISSION = {("sts", "GetCallerIdentity")}
SPOT_SERVICE, EFS_SERVICE = "spot.amazonaws.com", "elasticfilesystem.amazonaws.com"
MAKING_ROLES = threading.Lock()
SERVICE_LINKED_ROLES = {  # service -> its role's name, where known
    SPOT_SERVICE: "AWSServiceRoleForEC2Spot", EFS_SERVICE: "AWSServiceRoleForAmazonElasticFileSystem"}
# S3 operations whose IAM action is not s3:<operation>.
ACTION_BY_OPERATION = {
    "HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "CopyObject": "s3:PutObject", "DeleteObjects": "s3:DeleteObject",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration", "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock", "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
}


# What a call does on the caller's behalf in another service, which the caller must be allowed too: EFS makes
# and deletes a mount target's network interface (the EFS API reference, "Permissions" of each operation).
IMPLIED = {
    ("efs", "CreateMountTarget"): ("ec2:DescribeSubnets", "ec2:DescribeNetworkInterfaces",
                                   "ec2:CreateNetworkInterface"),
    ("efs", "DeleteMountTarget"): ("ec2:DeleteNetworkInterface",),
}
# Tags given when a resource is made are a tagging call too (EFS's CreateFileSystem reference, "Permissions"; for
# PutParameter, AWS's refusals quoted in github.com/pepperize/cdk-ssm-parameters-cross-region/issues/442 and
# github.com/aws-amplify/amplify-studio/issues/1094).
TAGGED_ON_CREATION = {("efs", "CreateFileSystem"): "elasticfilesystem:TagResource",
                      ("ssm", "PutParameter"): "ssm:AddTagsToResource"}


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
    action, resource, context = s3_permission(call)
    if not allowed(statements, action, resource, context):
        return _denied(call)
    if action == "s3:GetObject" and not object_exists(bucket, key) and not allowed(
            statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {}):
        return _denied(call)
    for kms_action, key_arn, kms_context in s3_keys.uses(call):
        if not allowed(statements, kms_action, key_arn, kms_context):
            return error_response("s3", "AccessDenied", f"User: {_session_arn(call)} is not authorized to perform: "
                                  f"{kms_action} on resource: {key_arn} because no identity-based policy allows the "
                                  f"{kms_action} action", 403)
    return None


def role_refusal(call: AwsCall) -> Response | None:
    """Where a machine's role signed a call to a service other than S3 (s3_refusal's): refused as AWS refuses
    what the role's policies, its managed ones included, do not allow. None lets the call through."""
    statements = _role_statements(call)
    if statements is None or call.service == "s3" or (call.service, call.action) in NEEDS_NO_PERMISSION:
        return None
    for action, resource, context in _needed(call):
        if not allowed(statements, action, resource, {"aws:RequestedRegion": call.region, **context}):
            code = "AccessDeniedException" if service_model(call.service).protocol.endswith("json") else \
                "UnauthorizedOperation" if call.service == "ec2" else "AccessDenied"
            return error_response(call.service, code, f"the role's policies do not allow {action} on {resource}",
                                  403)
    return None


def user_refusal(call: AwsCall) -> Response | None:
    """Where an IAM user's keys signed the call (the credentials a user gives the flow): refused as AWS refuses
    what the user's policies do not allow, including what the call implies: ec2:CreateTags for EC2 tags given at
    creation (elasticfilesystem:TagResource for EFS's), the EC2 actions on a mount target's network interface
    (IMPLIED), iam:PassRole of the instance profile's role for a launch that names one
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_passrole.html). Resources are ARNs for S3 and
    for IAM roles and instance profiles, "*" for the rest; every call has the global condition key
    aws:RequestedRegion (where an organization's policy denies regions). None lets the call through."""
    user = _signing_user(call)
    if user is None or (call.service, call.action) in NEEDS_NO_PERMISSION:
        return None
    statements = _user_statements(user)
    for action, resource, context in _needed(call):
        if not allowed(statements, action, resource, {"aws:RequestedRegion": call.region, **context}):
            message = f"User: {user.arn} is not authorized to perform: {action} on resource: {resource}"
            if call.service == "ec2":
                return error_response("ec2", "UnauthorizedOperation", message, 403)
            code = "AccessDeniedException" if service_model(call.service).protocol.endswith("json") \
                else "AccessDenied"
            return error_response(call.service, code, message, 403)
    return None


def user_allows(call: AwsCall, actions: tuple[str, ...], resource: str, context: dict[str, str]) -> bool:
    """Whether the call's signer, where an IAM user, is allowed every one of `actions` on `resource` (what a call
    does as its caller in another service); moto answers for other signers, which are allowed."""
    user = _signing_user(call)
    if user is None:
        return True
    statements = _user_statements(user)
    return all(allowed(statements, action, resource, {"aws:RequestedRegion": call.region, **context})
               for action in actions)


def spot_role_refusal(call: AwsCall) -> Response | None:
    """A spot launch needs EC2 Spot's service-linked role, which EC2 makes the first time as the caller: one whose
    policies do not allow iam:CreateServiceLinkedRole for spot.amazonaws.com is refused
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html; the
    refusal as quoted in github.com/kubernetes/kops/issues/16475 and CloudSnorkel/cdk-github-runners/issues/182).
    None lets the launch through, the role made if it was missing."""
    if call.params.get("InstanceMarketOptions.MarketType") != "spot" or call.params.get("DryRun") == "true":
        return None
    if _service_makes_its_role(call, SPOT_SERVICE):
        return None
    return error_response("ec2", "AuthFailure.ServiceLinkedRoleCreationNotPermitted", "The provided credentials "
                          "do not have permission to create the service-linked role for EC2 Spot Instances.", 403)


def file_system_role_refusal(call: AwsCall) -> Response | None:
    """A mount target needs EFS's service-linked role, which EFS makes the first time as the caller, who must be
    allowed iam:CreateServiceLinkedRole for elasticfilesystem.amazonaws.com
    (https://docs.aws.amazon.com/efs/latest/ug/using-service-linked-roles.html; EFS's refusal as a user met it on
    their own account, aws-samples/eks-workshop-v2#1106). None lets the call through, the role made if missing."""
    if _service_makes_its_role(call, EFS_SERVICE):
        return None
    return error_response("efs", "AccessDeniedException",
                          "User is not authorized to perform that action on the specified resource", 403)


def _service_makes_its_role(call: AwsCall, service: str) -> bool:
    """Whether the service's role exists or the caller may have the service make it (then it is made, once:
    two runs' first mount targets may come at once)."""
    iam = iam_backends[call.account][PARTITION]
    with MAKING_ROLES:
        if any(role.path == f"/aws-service-role/{service}/" for role in list(iam.roles.values())):
            return True
        user = _signing_user(call)
        if user is not None and not allowed(_user_statements(user), "iam:CreateServiceLinkedRole",
                                            _service_linked_role_arn(call.account, service),
                                            {"iam:AWSServiceName": service}):
            return False
        iam.create_service_linked_role(service, "", "")
        return True


def _parameter_arn(call: AwsCall, name: str) -> str:
    """"parameter" + the parameter's name, with a "/" between where the name has none."""
    return f"arn:aws:ssm:{call.region}:{call.account}:parameter{'' if name.startswith('/') else '/'}{name}"


def _service_linked_role_arn(account: str, service: str) -> str:
    name = SERVICE_LINKED_ROLES.get(service, f"AWSServiceRoleFor{service.split('.')[0].capitalize()}")
    return f"arn:aws:iam::{account}:role/aws-service-role/{service}/{name}"


def _user_statements(user: Any) -> list[dict[str, Any]]:
    return _statements(list(user.policies.values()) + _managed_documents(user))


def _needed(call: AwsCall) -> list[tuple[str, str, dict[str, str]]]:
    """(action, resource, condition keys) the call is authorized by, each of which must be allowed."""
    if call.service == "s3":
        return [s3_permission(call), *s3_keys.uses(call)]
    context = {"iam:AWSServiceName": call.params["AWSServiceName"]} if "AWSServiceName" in call.params else {}
    action = f"{IAM_PREFIX.get(call.service, call.service)}:{call.action}"
    names = call.list_param("Names") if call.service == "ssm" else []  # GetParameters: each parameter's
    needed = [(action, _parameter_arn(call, name), context) for name in names] or [(action, _resource(call), context)]
    needed += [(action, "*", {}) for action in IMPLIED.get((call.service, call.action), ())]
    if call.service == "ec2" and any(k.startswith("TagSpecification.") for k in call.params):
        needed.append(("ec2:CreateTags", "*", {}))
    tagging = TAGGED_ON_CREATION.get((call.service, call.action))
    if tagging and any(k.startswith("Tags.") for k in call.params):
        needed.append((tagging, "*", {}))
    profile = call.params.get("IamInstanceProfile.Name")
    if call.action == "RunInstances" and profile:
        for role in _profile_roles(call, profile):
            needed.append(("iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"}))
    return needed


def s3_permission(call: AwsCall) -> tuple[str, str, dict[str, str]]:
    """(action, resource, condition keys) an S3 call is authorized by: a listing by its bucket and prefix, an
    object's call by the object."""
    action = ACTION_BY_OPERATION.get(call.action, f"s3:{call.action}")
    bucket, key = call.params.get("Bucket", ""), call.params.get("Key")
    listing = action == "s3:ListBucket"
    resource = f"arn:aws:s3:::{bucket}" + ("" if listing or key is None else f"/{key}")
    return action, resource, {"s3:prefix": call.params["prefix"]} if listing and "prefix" in call.params else {}


def _resource(call: AwsCall) -> str:
    if call.service == "ssm" and "Name" in call.params:
        return _parameter_arn(call, call.params["Name"])
    if call.service != "iam":
        return "*"
    if call.action == "CreateServiceLinkedRole":
        return _service_linked_role_arn(call.account, call.params.get("AWSServiceName", ""))
    if "InstanceProfileName" in call.params:
        return f"arn:aws:iam::{call.account}:instance-profile/{call.params['InstanceProfileName']}"
    if "RoleName" in call.params:
        return f"arn:aws:iam::{call.account}:role/{call.params['RoleName']}"
    return "*"


def _profile_roles(call: AwsCall, profile: str) -> list[str]:
    iam = iam_backends[call.account][PARTITION]
    found = next((p for p in list(iam.instance_profiles.values()) if p.name == profile), None)
    return [role.arn for role in found.roles] if found else []


def _signing_user(call: AwsCall) -> Any:
    iam = iam_backends[call.account][PARTITION]
    access_key = iam.access_keys.get(call.access_key)
    if access_key is None or getattr(access_key, "role_arn", None) or not getattr(access_key, "user_name", None):
        return None
    return iam.users.get(access_key.user_name)


def allowed(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, str]) -> bool:
    """IAM's answer within one identity: some statement allows, and none denies."""
    return decision(statements, action, resource, context) == "allowed"


def decision(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, str]) -> str:
    """As IAM's policy simulator names it: a statement that denies wins, else one that allows, else none does."""
    effects = {s.get("Effect") for s in statements if _applies(s, action, resource, context)}
    return "explicitDeny" if "Deny" in effects else "allowed" if "Allow" in effects else "implicitDeny"


def _applies(statement: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    if "NotResource" in statement:  # every resource but those named
        on_resource = not any(_glob(pattern, resource) for pattern in _listed(statement["NotResource"]))
    else:
        on_resource = any(_glob(pattern, resource) for pattern in _listed(statement.get("Resource")))
    return (any(_glob(pattern, action, case=False) for pattern in _listed(statement.get("Action")))
            and on_resource and _conditions_hold(statement.get("Condition", {}), context))


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
    if access_key is None or not getattr(access_key, "role_arn", None):
        return None
    role = next((r for r in list(iam.roles.values()) if r.arn == access_key.role_arn), None)
    if role is None:  # deleted since: its sessions may do nothing
        return []
    return _statements(list(role.policies.values()) + _managed_documents(role))


def _session_arn(call: AwsCall) -> str:
    """arn:aws:sts::<account>:assumed-role/<role>/<session> of the role session that signed the call."""
    assumed = next((a for a in list(sts_backends[call.account][PARTITION].assumed_roles)
                    if a.access_key_id == call.access_key), None)
    return assumed.arn if assumed is not None else iam_backends[call.account][PARTITION].access_keys[
        call.access_key].role_arn


def _managed_documents(identity: Any) -> list[Any]:
    return [version.document for policy in list(identity.managed_policies.values()) for version in policy.versions
            if version.version_id == policy.default_version_id]


def _statements(documents: list[Any]) -> list[dict[str, Any]]:
    statements = []
    for document in documents:
        found = (json.loads(document) if isinstance(document, str) else document).get("Statement", [])
        statements += [found] if isinstance(found, dict) else found
    return statements


def object_exists(bucket: str, key: str | None) -> bool:
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


def simulate_principal_policy(call: AwsCall) -> Response:
    """IAM's policy simulator (moto has none) for a user or role of the account: each action on each resource,
    "allowed" where its policies allow it, else an explicit or implicit deny."""
    iam = iam_backends[call.account][PARTITION]
    source = call.params.get("PolicySourceArn", "")
    identity = next((i for i in [*list(iam.users.values()), *list(iam.roles.values())] if i.arn == source), None)
    if identity is None:
        return error_response("iam", "NoSuchEntity", f"The principal {source} cannot be found.", 404)
    statements = _statements(list(identity.policies.values()) + _managed_documents(identity))
    context, number = {}, 1
    while (key := call.params.get(f"ContextEntries.member.{number}.ContextKeyName")) is not None:
        values = call.list_param(f"ContextEntries.member.{number}.ContextKeyValues.member")
        context[key] = values[0] if values else ""
        number += 1
    members = []
    for action in call.list_param("ActionNames.member"):
        for resource in call.list_param("ResourceArns.member") or ["*"]:
            members.append(f"<member><EvalActionName>{escape(action)}</EvalActionName><EvalResourceName>"
                           f"{escape(resource)}</EvalResourceName><EvalDecision>"
                           f"{decision(statements, action, resource, context)}</EvalDecision></member>")
    body = ('<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            f'<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{"".join(members)}'
            '</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>awssim</RequestId>'
            '</ResponseMetadata></SimulatePrincipalPolicyResponse>')
    return Response(200, [("Content-Type", "text/xml")], body.encode())
