"""Secrets a run's machines need (the wandb key) as SSM SecureString parameters under /imagenet18/<run>/,
tagged with the run and deleted with it."""

from __future__ import annotations

import os

from tasks.backends.aws import tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.base import ClusterSpec, Resource

ROOT = "/imagenet18"
FORWARDED = ("WANDB_API_KEY",)
DELETE_AT_ONCE = 10  # DeleteParameters takes at most 10 names (API_DeleteParameters)


def path(run_id: str) -> str:
    return f"{ROOT}/{run_id}"


def store(clients: Clients, spec: ClusterSpec) -> dict[str, str]:
    """Environment variable -> parameter name, for each forwarded secret set here."""
    ssm = clients.client("ssm")
    stored = {}
    for variable in FORWARDED:
        value = os.environ.get(variable)
        if not value:
            continue
        name = f"{path(spec.run_id)}/{variable.lower()}"
        try:
            ssm.put_parameter(Name=name, Value=value, Type="SecureString",
                              Tags=tags.tag_list(spec.run_id, spec.expires_at))
        except Exception as exc:  # noqa: BLE001 - stored by an earlier attempt
            if error_code(exc) != "ParameterAlreadyExists":
                raise
            ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
        stored[variable] = name
    return stored


def parameters(clients: Clients, run_id: str | None) -> list[Resource]:
    ssm = clients.client("ssm")
    found = []
    for page in ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [ROOT]}]):
        for parameter in page["Parameters"]:
            try:
                parameter_tags = tags.as_dict(ssm.list_tags_for_resource(
                    ResourceType="Parameter", ResourceId=parameter["Name"])["TagList"])
            except Exception as exc:  # noqa: BLE001 - deleted since the listing (another run's teardown, say)
                if error_code(exc) == "InvalidResourceId":
                    continue
                raise
            owner = parameter_tags.get(tags.RUN)
            if owner and run_id in (None, owner):
                found.append(Resource("parameter", parameter["Name"], owner, tags.expires(parameter_tags)))
    return found


def delete(clients: Clients, names: list[str]) -> None:
    ssm = clients.client("ssm")
    for start in range(0, len(names), DELETE_AT_ONCE):
        ssm.delete_parameters(Names=names[start:start + DELETE_AT_ONCE])
