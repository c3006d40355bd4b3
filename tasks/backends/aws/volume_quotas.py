"""The account's EBS quotas a run's replicas count against, checked before anything is made: the provisioned IOPS
of all io1 or io2 volumes in the region, and the storage of each volume type. EC2 refuses a CreateVolume past one
(MaxIOPSLimitExceeded, VolumeLimitExceeded), so without this a run learns of it part-way through its replicas. A new
account's io2 IOPS quota is 100,000: the seed's sixteen replicas at 11,500 IOPS need 184,000.
https://docs.aws.amazon.com/ebs/latest/userguide/ebs-resource-quotas.html"""

from __future__ import annotations

import math

from tasks.backends.aws.clients import Clients
from tasks.backends.aws.quotas import Quota, quota_value
from tasks.backends.base import InputError

IOPS = {"io1": Quota("L-B3A130E6", "IOPS for Provisioned IOPS SSD (io1) volumes", "ebs"),
        "io2": Quota("L-8D977E7E", "IOPS for Provisioned IOPS SSD (io2) volumes", "ebs")}
STORAGE_TIB = {"io1": Quota("L-FD252861", "Storage for Provisioned IOPS SSD (io1) volumes, in TiB", "ebs"),
               "io2": Quota("L-09BD8365", "Storage for Provisioned IOPS SSD (io2) volumes, in TiB", "ebs"),
               "gp3": Quota("L-7A658B76", "Storage for General Purpose SSD (gp3) volumes, in TiB", "ebs")}
GIB_PER_TIB = 1024


def check(clients: Clients, volume_type: str, iops: int, size_gib: int, count: int) -> None:
    """Refuse `count` new volumes of this type, IOPS and size where, with the region's volumes of the type, they
    would pass a quota. Quotas these credentials may not read are left to EC2 (a warning says so)."""
    if count <= 0:
        return
    held = _volumes_of_type(clients, volume_type)
    wanted = f"{count} {volume_type} dataset replica(s) of {size_gib} GiB"
    if volume_type in IOPS:
        check_iops(clients, volume_type, iops, count, held, wanted)
    _refuse_past(clients, STORAGE_TIB[volume_type], sum(v["Size"] for v in held) / GIB_PER_TIB,
                 count * size_gib / GIB_PER_TIB, wanted, "another aws.volume_type")


def check_iops(clients: Clients, volume_type: str, iops: int, count: int, held: list[dict] | None = None,
               wanted: str | None = None) -> tuple[float | None, float]:
    """Refuse `count` new io1/io2 volumes of `iops` each past the region's IOPS quota for the type, the
    account's volumes of the type (`held`, else listed) counted; returns the quota (None: not readable) and the
    IOPS in use."""
    held = _volumes_of_type(clients, volume_type) if held is None else held
    used = sum(v.get("Iops", 0) for v in held)
    value = _refuse_past(clients, IOPS[volume_type], used, count * iops,
                         f"{wanted or f'{count} {volume_type} dataset replica(s)'} at {iops} IOPS",
                         "aws.volume_type gp3 (it has no IOPS quota) or a lower aws.iops")
    return value, used


def _volumes_of_type(clients: Clients, volume_type: str) -> list[dict]:
    pages = clients.ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": "volume-type", "Values": [volume_type]}])
    return [volume for page in pages for volume in page["Volumes"]]


def _refuse_past(clients: Clients, quota: Quota, used: float, needed: float, wanted: str,
                 instead: str) -> float | None:
    """The quota's value (None: not readable), where `needed` more fits beside `used`; else InputError."""
    value = quota_value(clients, quota)
    if value is None or used + needed <= value:
        return value
    raise InputError(
        f"{wanted} need {_figure(needed)} of the quota \"{quota.name}\" ({quota.code}) in {clients.region}, which "
        f"is {_figure(value)} with {_figure(used)} in use by the account's volumes: ask AWS for more (`aws "
        f"service-quotas request-service-quota-increase --region {clients.region} --service-code {quota.service} "
        f"--quota-code {quota.code} --desired-value {math.ceil(used + needed)}`), or ask for fewer replicas (a run "
        f"makes one a machine), or choose {instead}")


def _figure(amount: float) -> str:
    """IOPS whole, TiB to three significant figures (16 GiB: 0.0156)."""
    return f"{amount:.10g}" if amount == int(amount) else f"{amount:.3g}"
