"""moto's in-process backends: the server runs moto in this process, so its state is plain Python objects here."""

from typing import Any

from moto.ec2.models import ec2_backends
from moto.efs.models import efs_backends
from moto.ssm.models import ssm_backends

from .calls import AwsCall

RUN_TAG = "imagenet18:run"


def existing(backend_dict: Any) -> list[tuple[str, str, Any]]:
    """(account, region, backend) for every backend moto has created so far, creating none."""
    # dict.items: moto's own __getitem__ would create a backend for any name asked.
    return [
        (account, region, backend)
        for account, per_region in list(dict.items(backend_dict))
        for region, backend in list(dict.items(per_region))
    ]


def ec2(account: str, region: str) -> Any:
    return ec2_backends[account][region]


def efs(account: str, region: str) -> Any:
    return efs_backends[account][region]


def ssm_all() -> list[tuple[str, str, Any]]:
    return existing(ssm_backends)


def ec2_all() -> list[tuple[str, str, Any]]:
    return existing(ec2_backends)


def efs_all() -> list[tuple[str, str, Any]]:
    return existing(efs_backends)


def instances(ec2_backend: Any) -> list[Any]:
    return [i for reservation in list(ec2_backend.reservations.values()) for i in list(reservation.instances)]


def find_instance(instance_id: str) -> Any | None:
    for _, _, backend in ec2_all():
        for instance in instances(backend):
            if instance.id == instance_id:
                return instance
    return None


def of_run(call: AwsCall, run_id: str) -> bool:
    """The call is one of the run's: a parameter holds the run's id (a tag, a name, a filter), or names an EC2
    resource or EFS file system tagged with it (TerminateInstances, SendCommand, CreateMountTarget, ...)."""
    return any(run_id in value or _run_tag(call, value) == run_id for value in call.params.values())


def _run_tag(call: AwsCall, resource_id: str) -> str | None:
    if resource_id.startswith("fs-"):
        if resource_id not in efs(call.account, call.region).file_systems_by_id:
            return None
        return efs_tags(call.account, call.region, resource_id).get(RUN_TAG)
    # moto's tag store is a defaultdict: .get creates nothing for ids it does not know.
    return dict.get(ec2(call.account, call.region).tags, resource_id, {}).get(RUN_TAG)


def efs_tags(account: str, region: str, file_system_id: str) -> dict[str, str]:
    listed = efs(account, region).tagging_service.list_tags_for_resource(file_system_id)["Tags"]
    return {tag["Key"]: tag["Value"] for tag in listed}


def tagged_regions() -> list[str]:
    """The regions where an EC2 resource, an EFS file system or an SSM parameter carries a run's tag (or carried
    one: moto keeps the tags of some resources after they go), in any account."""
    found = {region for _, region, backend in ec2_all() if any(RUN_TAG in tags for tags in list(backend.tags.values()))}
    found |= {region for account, region, backend in efs_all()
              if any(RUN_TAG in efs_tags(account, region, system) for system in list(backend.file_systems_by_id))}
    found |= {region for _, region, backend in ssm_all()
              if any(RUN_TAG in tags for tags in list(backend._resource_tags.get("Parameter", {}).values()))}
    return sorted(found)
