"""The machines' identity: a role allowed to register with SSM (RunCommand, sessions), to write the run's
s3:// prefix and to read the run's SSM parameters (the wandb key), and nothing else."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import TypeVar

from tasks.backends.aws import pools, tags
from tasks.backends.aws.clients import REFUSALS, Clients, error_code
from tasks.backends.base import ClusterSpec

SSM_MANAGED_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
EC2_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
INLINE_POLICY = "imagenet18-run-storage"
ROLE_PREFIX = "imagenet18-"  # every run's role and instance profile
SPOT_SERVICE = "spot.amazonaws.com"
EFS_SERVICE = "elasticfilesystem.amazonaws.com"  # makes its role at a first mount target
IAM_PROPAGATION_S = 60.0  # how long a role or profile just made may be unknown to IAM's next calls

T = TypeVar("T")


def role_name(run_id: str) -> str:
    return f"{ROLE_PREFIX}{run_id}"[:64]


def ensure_instance_profile(clients: Clients, spec: ClusterSpec, bucket: str, prefix: str,
                            parameter_path: str, readable: tuple[str, ...] = (), parallel: int = 1) -> str:
    """`readable`: more s3:// folders the machines may read (the dataset the snapshot builder copies). The role,
    the profile and the account lookup go at once; the policies and the profile's role once the role exists."""
    iam = clients.client("iam")
    name = role_name(spec.run_id)
    iam_tags = tags.tag_list(spec.run_id, spec.expires_at)
    with pools.pool(parallel, 4) as pool:
        account = pool.submit(lambda: clients.client("sts").get_caller_identity()["Account"])
        profile = pool.submit(_ensure_profile, iam, name, iam_tags)
        _ignore_exists(lambda: iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                                               Tags=iam_tags, Description="imagenet18 run machines"))
        managed = pool.submit(_once_known, lambda: iam.attach_role_policy(RoleName=name, PolicyArn=SSM_MANAGED_POLICY))
        inline = pool.submit(lambda: _once_known(lambda: iam.put_role_policy(
            RoleName=name, PolicyName=INLINE_POLICY,
            PolicyDocument=json.dumps(_storage_policy(clients.region, account.result(), bucket, prefix,
                                                      parameter_path, readable)))))
        if not any(role["RoleName"] == name for role in profile.result()["Roles"]):
            _give_role(iam, name)
        managed.result()
        inline.result()
    return name


def ensure_service_linked_role(clients: Clients, service: str) -> None:
    """The account's service-linked role of `service` (EC2 Spot's, EFS's), which the service makes itself the first
    time it needs it, as the caller: made once per account before anything is paid for, as the console would, and
    kept (it is the account's, not a run's). Credentials that may not make it are refused only where it does not
    exist yet (IAM checks the permission first).
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html,
    https://docs.aws.amazon.com/efs/latest/ug/using-service-linked-roles.html"""
    try:
        clients.client("iam").create_service_linked_role(AWSServiceName=service)
    except Exception as exc:  # noqa: BLE001
        taken = error_code(exc) == "InvalidInput" and "has been taken" in str(exc)
        if not taken and not (error_code(exc) in REFUSALS and service_linked_role_exists(clients, service)):
            raise


def service_linked_role_exists(clients: Clients, service: str) -> bool:
    pages = clients.client("iam").get_paginator("list_roles").paginate(PathPrefix=f"/aws-service-role/{service}/")
    return any(page["Roles"] for page in pages)


def _once_known(call: Callable[[], T], made_at: dt.datetime | None = None) -> T:
    """`call`, naming a role or instance profile made at `made_at` (default: just now), asked again while IAM
    answers that it does not exist, until IAM_PROPAGATION_S after: IAM is eventually consistent, its own calls too
    (troubleshoot_general.html, "Changes that I make are not always immediately visible"; adding a new role to a
    profile meets "NoSuchEntity: The role with name X cannot be found.", hashicorp/terraform-provider-aws#6079).
    Past that, NoSuchEntity is raised: the role or profile is gone."""
    deadline = (made_at.timestamp() if made_at else time.time()) + IAM_PROPAGATION_S
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) != "NoSuchEntity" or time.time() > deadline:
                raise
            time.sleep(1.0)


def _give_role(iam, name: str) -> None:
    """The run's role into its profile (both named `name`). A profile given it moments ago (an earlier attempt,
    the authorize-launch stage) may be read without it, from before the change: adding it again is then refused,
    LimitExceeded, a profile holding one role at most: read again until it shows the run's role."""
    try:
        _once_known(lambda: iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name))
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "LimitExceeded":
            raise
        deadline = time.time() + IAM_PROPAGATION_S
        while not (held := [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=name)[
                "InstanceProfile"]["Roles"]]) and time.time() < deadline:
            time.sleep(1.0)
        if name not in held:
            raise


def _ensure_profile(iam, name: str, iam_tags: list[dict]) -> dict:
    _ignore_exists(lambda: iam.create_instance_profile(InstanceProfileName=name, Tags=iam_tags))
    return _once_known(lambda: iam.get_instance_profile(InstanceProfileName=name))["InstanceProfile"]


def _storage_policy(region: str, account: str, bucket: str, prefix: str, parameter_path: str,
                    readable: tuple[str, ...]) -> dict:
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": f"{prefix}/*"}}},
        # A bucket whose default encryption is a customer managed KMS key (the dataset's, or a team's results
        # bucket) has S3 use the key as the caller; the S3 statements keep to what the run may reach.
        {"Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}}},
        {"Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:aws:ssm:{region}:{account}:parameter{parameter_path}/*"},
        # AmazonSSMManagedInstanceCore, which the agent needs, allows reading every parameter of the account:
        # another run's secrets, anything else kept there. Only the run's own are readable.
        {"Effect": "Deny", "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
         "NotResource": f"arn:aws:ssm:{region}:{account}:parameter{parameter_path}/*"}]}
    for url in readable:
        source_bucket, _, source_prefix = url.removeprefix("s3://").partition("/")
        policy["Statement"] += [
            {"Effect": "Allow", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{source_bucket}/{source_prefix.strip('/')}/*"},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{source_bucket}"}]
    return policy


def delete_instance_profile(clients: Clients, run_id: str) -> None:
    iam = clients.client("iam")
    name = role_name(run_id)
    try:
        _delete_profile(iam, name)
    except Exception as exc:  # noqa: BLE001 - already gone is fine
        if error_code(exc) != "NoSuchEntity":
            raise
    try:
        for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        iam.delete_role(RoleName=name)
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "NoSuchEntity":
            raise


def _delete_profile(iam, name: str) -> None:
    """Its role taken out, then the profile. One given its role moments ago may be read without it (see
    _give_role): AWS then refuses to delete it, DeleteConflict, until a read shows the role to take out."""
    deadline = time.time() + IAM_PROPAGATION_S
    while True:
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
        try:
            iam.delete_instance_profile(InstanceProfileName=name)
            return
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) != "DeleteConflict" or time.time() > deadline:
                raise
            time.sleep(1.0)


def run_identities(clients: Clients, run_id: str | None) -> list[dict]:
    """Our roles and instance profiles tagged with a run (a run's pair shares one name), with their tags. The two
    are made at once, so either may be there alone: the other refused, or the run killed between them. One made
    moments ago is listed, but IAM may not know it yet to the call reading its tags: asked again meanwhile."""
    iam = clients.client("iam")
    found: dict[str, dict] = {}
    for page in iam.get_paginator("list_roles").paginate(PathPrefix="/"):
        for role in page["Roles"]:
            _keep_ours(found, role["RoleName"], role["CreateDate"],
                       lambda name: iam.list_role_tags(RoleName=name)["Tags"], run_id)
    for page in iam.get_paginator("list_instance_profiles").paginate(PathPrefix="/"):
        # A listing carries no tags: asked of each profile (https://boto3.amazonaws.com/v1/documentation/api/
        # 1.26.161/reference/services/iam/client/list_instance_profiles.html).
        for profile in page["InstanceProfiles"]:
            _keep_ours(found, profile["InstanceProfileName"], profile["CreateDate"],
                       lambda name: iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"].get(
                           "Tags", []), run_id)
    return list(found.values())


def _keep_ours(found: dict[str, dict], name: str, made_at: dt.datetime, tags_of: Callable[[str], list[dict]],
               run_id: str | None) -> None:
    if not name.startswith(ROLE_PREFIX) or name in found:
        return
    try:
        named_tags = tags.as_dict(_once_known(lambda: tags_of(name), made_at))
    except Exception as exc:  # noqa: BLE001 - deleted since the listing (another run's teardown, say)
        if error_code(exc) == "NoSuchEntity":
            return
        raise
    if tags.RUN in named_tags and run_id in (None, named_tags[tags.RUN]):
        found[name] = {"RoleName": name, "Tags": named_tags}


def _ignore_exists(create) -> None:
    try:
        create()
    except Exception as exc:  # noqa: BLE001 - idempotent by name: it exists from an earlier attempt
        if error_code(exc) != "EntityAlreadyExists":
            raise
