"""What a user's credentials need to make a run (user_policy.json, the policy the docs tell users to attach),
asked of IAM's policy simulator before anything is made: each action the policy names, on a resource like a
run's, under the policy's conditions. An action named with a wildcard (ec2:Describe*) names no single action and
is left out; the checks that read the account need some of them anyway.
https://docs.aws.amazon.com/IAM/latest/APIReference/API_SimulatePrincipalPolicy.html"""

from __future__ import annotations

import json
import re
from importlib import resources

from tasks.backends.aws import iam
from tasks.backends.aws.clients import Clients

POLICY = resources.files("tasks.backends.aws").joinpath("user_policy.json")
# The policy's statements that only let a service make its service-linked role: needed where the account lacks it.
SERVICE_LINKED_ROLE_STATEMENTS = {"SpotsServiceLinkedRole": iam.SPOT_SERVICE,
                                  "FileSystemsServiceLinkedRole": iam.EFS_SERVICE}
# The statements a run can go without: the key checks (without them a run says what it could not check), the
# region's prices (the plan takes us-east-1's), EBS's use of a customer managed key, which only a disk that takes
# one needs (not the AWS managed key's), and S3's, which only a bucket under one needs.
KEY_CHECKS = "TheDisksEncryptionKeys"
PRICES = "TheRegionsPrices"
CUSTOMER_MANAGED_KEYS = "EbsEncryptsWithACustomerManagedKey"
BUCKET_KEYS = "S3EncryptsWithABucketsCustomerManagedKey"
EXAMPLE_NAME = "doctor"  # stands for a run's id where the policy's resources have a wildcard


def principal(caller_arn: str) -> str:
    """The ARN the simulator evaluates: the role's, for credentials of a session of an assumed role. A session's
    ARN does not carry its role's path, so a role with one (IAM Identity Center's) is not found: the doctor's row
    then warns that it could not check."""
    session = re.fullmatch(r"arn:([\w-]+):sts::(\d+):assumed-role/([^/]+)/.+", caller_arn)
    return f"arn:{session[1]}:iam::{session[2]}:role/{session[3]}" if session else caller_arn


def missing(clients: Clients, skipping: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """The policy's statements of which these credentials may not take some action on any of the statement's
    resources, by Sid, with those actions; the statements whose Sid is in `skipping` are not asked."""
    identity = clients.client("sts").get_caller_identity()
    iam_client = clients.client("iam")
    refused: dict[str, list[str]] = {}
    for statement in json.loads(POLICY.read_text())["Statement"]:
        if statement.get("Sid") in skipping:
            continue
        actions = [action for action in _listed(statement["Action"]) if "*" not in action]
        context = [{"ContextKeyName": key, "ContextKeyValues": _listed(values), "ContextKeyType": "string"}
                   for tests in statement.get("Condition", {}).values() for key, values in tests.items()]
        pages = iam_client.get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=principal(identity["Arn"]), ActionNames=actions, ContextEntries=context,
            ResourceArns=[_example(resource, identity["Account"]) for resource in _listed(statement["Resource"])])
        results = [result for page in pages for result in page["EvaluationResults"]]
        allowed = {r["EvalActionName"] for r in results if r["EvalDecision"] == "allowed"}
        if set(actions) - allowed:
            refused[statement["Sid"]] = sorted(set(actions) - allowed)
    return refused


def _example(resource: str, account: str) -> str:
    """A resource the policy's pattern matches, as a run's would: the account's, named for no run."""
    if resource == "*":
        return resource
    return re.sub(r"^(arn:[\w-]+:[\w-]+:[\w-]*):\*:", rf"\1:{account}:", resource).replace("*", EXAMPLE_NAME)


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
