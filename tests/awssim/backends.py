"""moto's in-process backends: the server runs moto in this process, so its state is plain Python objects here."""

from typing import Any

from moto.ec2.models import ec2_backends
from moto.efs.models import efs_backends
from moto.ssm.models import ssm_backends


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
