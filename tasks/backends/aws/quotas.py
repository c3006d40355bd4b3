"""The account's vCPU quotas for GPU machines and for the snapshot builder's, read from Service Quotas before
anything is made. EC2 counts a launch's vCPUs against them (a new account has 0 for P and G, and its Standard
quota may be under the builder's 16), and its dry run of a launch checks permissions, not quotas, so without this
a run learns of the quota only after its network, file system and replicas exist. A quota counts every running
machine of the account in the region that it covers, not only the run's: those are counted too (and EC2 counts
machines let go a while longer: `fits_once_let_go`).
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-on-demand-instances.html (On-Demand quotas) and
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html (Spot quotas)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from tasks.backends.aws import catalog
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.base import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quota:
    code: str
    name: str
    service: str = "ec2"  # Service Quotas' code for the service
    new_account: float = 0  # AWS's default value (GetAWSDefaultServiceQuota)


# (bucket, spot) -> the quota EC2 counts the machines against. On-demand, every P machine counts against one
# quota; spot P5 machines (p5, p5e, p5en) against one of their own, the other P machines against L-7212CCBC, whose
# name was "All P Spot Instance Requests" before P5 got its own (using-spot-limits.html lists both names).
QUOTAS = {
    ("P", False): Quota("L-417A185B", "Running On-Demand P instances"),
    ("P5", False): Quota("L-417A185B", "Running On-Demand P instances"),
    ("G", False): Quota("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("P", True): Quota("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests"),
    ("P5", True): Quota("L-C4BD4855", "All P5 Spot Instance Requests"),
    ("G", True): Quota("L-3819A6DF", "All G and VT Spot Instance Requests"),
}
SPOT_QUOTAS = {quota for (_, spot), quota in QUOTAS.items() if spot}
# On-demand machines of the general-purpose, compute, memory and storage families: the snapshot builder's.
STANDARD = Quota("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", new_account=5)
FEWER_MACHINES = "run fewer machines"
LET_GO_S = 600.0  # how long after its termination a machine may still be counted against its quota
# An instance type's bucket, from the letters its name starts with (dl, inf, trn, hpc, x, u-, f, mac have quotas of
# their own, which no machine here uses).
BUCKETS = {"p": "P", "g": "G", "gr": "G", "vt": "G",
           **dict.fromkeys(("a", "c", "d", "h", "i", "im", "is", "m", "r", "t", "z"), "Standard")}


def quota_for(instance_type: str, spot: bool) -> Quota | None:
    """The vCPU quota EC2 counts a machine of `instance_type` against; None for a bucket not checked here."""
    letters = re.match(r"[a-z]*", instance_type)[0]
    bucket = "P5" if instance_type.startswith("p5") else BUCKETS.get(letters)
    if bucket == "Standard":
        return None if spot else STANDARD
    return QUOTAS.get((bucket, spot))


def check(clients: Clients, instance_type: str, machines: int, spot: bool) -> None:
    """Refuse a run whose machines need more vCPUs than the account's quota for their type leaves."""
    quota = quota_for(instance_type, spot)
    if quota is None:
        log.info("no vCPU quota of %s %s machines is checked before the launch", "spot" if spot else "on-demand",
                 instance_type)
        return
    check_vcpus(clients, quota, f"{machines} x {instance_type} need",
                machines * catalog.instance_type(instance_type).vcpus, FEWER_MACHINES)


def fits_once_let_go(clients: Clients, instance_type: str, machines: int, spot: bool) -> bool:
    """Whether a launch EC2 refused over its quota may pass once machines let go are no longer counted: the
    account has machines of the quota's bucket shutting down or stopping, or terminated within LET_GO_S, and its
    pending and running ones (and open spot requests) leave room for the launch's vCPUs. A refusal with none let
    go (a spot limit under the quota's value, say) will not lift by waiting."""
    quota = quota_for(instance_type, spot)
    value = quota_value(clients, quota) if quota else None
    if value is None or not let_go(clients, quota):
        return False
    need = machines * default_vcpus(clients, {instance_type})[instance_type]
    return need + in_use(clients, quota)[1] <= value


def let_go(clients: Clients, quota: Quota) -> list[str]:
    """The account's machines counted by `quota` that are shutting down or stopping, or were terminated within
    LET_GO_S (by the time in their StateTransitionReason, "User initiated (2026-12-06 01:23:45 GMT)", or where it
    names none, as for a machine EC2 ended as it started, their launch)."""
    pages = clients.ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["shutting-down", "stopping", "terminated"]}])
    now = dt.datetime.now(dt.timezone.utc)
    return [i["InstanceId"] for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]
            if quota_for(i["InstanceType"], i.get("InstanceLifecycle") == "spot") == quota
            and (i["State"]["Name"] != "terminated" or now - _transition_time(i) < dt.timedelta(seconds=LET_GO_S))]


def _transition_time(instance: dict) -> dt.datetime:
    found = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) GMT\)", instance.get("StateTransitionReason", ""))
    return dt.datetime.fromisoformat(found[1]).replace(tzinfo=dt.timezone.utc) if found else instance["LaunchTime"]


def check_vcpus(clients: Clients, quota: Quota, needing: str, need: int, otherwise: str = "") -> None:
    """Refuse machines that need more vCPUs than the account's `quota` leaves beside what it holds.
    `needing`: who needs them, with the verb ("2 x p4d.24xlarge need"); `otherwise`: what else would do."""
    value = quota_value(clients, quota)
    if value is not None and (refused := refusal(clients.region, quota, value, in_use(clients, quota), needing, need,
                                                 otherwise)):
        raise refused


def refusal(region: str, quota: Quota, value: float, held: tuple[int, int], needing: str, need: int,
            otherwise: str = "") -> InputError | None:
    """The error for `need` vCPUs of a quota of `value` of which `held` (machines or requests, vCPUs) are taken;
    None when they fit."""
    holders, used = held
    if need + used <= value:
        return None
    requests = " or open spot request(s)" if quota in SPOT_QUOTAS else ""
    taken = f", {used} of them held by {holders} running machine(s){requests}" if holders else ""
    return InputError(
        f"{needing} {need} vCPUs of the quota \"{quota.name}\" ({quota.code}) in {region}, which is {value:g} for "
        f"this account{taken} (a new account's is {quota.new_account:g}): ask AWS for more in the Service Quotas "
        f"console, or with `aws service-quotas request-service-quota-increase --region {region} --service-code ec2 "
        f"--quota-code {quota.code} --desired-value {need + used}`" + (f", or {otherwise}" if otherwise else ""))


def in_use(clients: Clients, quota: Quota) -> tuple[int, int]:
    """What `quota` counts in the region: the account's pending and running machines of its bucket, and for a spot
    quota its open spot requests too (using-spot-limits.html); how many, and their vCPUs (each type's default, as
    EC2 counts them whatever their CPU options)."""
    ec2 = clients.ec2
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    types = [i["InstanceType"] for page in pages for reservation in page["Reservations"]
             for i in reservation["Instances"] if quota_for(i["InstanceType"], i.get("InstanceLifecycle") == "spot")
             == quota]
    if quota in SPOT_QUOTAS:
        requests = ec2.get_paginator("describe_spot_instance_requests").paginate(
            Filters=[{"Name": "state", "Values": ["open"]}])
        requested = [r.get("LaunchSpecification", {}).get("InstanceType") for page in requests
                     for r in page["SpotInstanceRequests"]]
        types += [t for t in requested if t and quota_for(t, True) == quota]
    vcpus = default_vcpus(clients, set(types))
    return len(types), sum(vcpus[t] for t in types)


def default_vcpus(clients: Clients, instance_types: set[str]) -> dict[str, int]:
    """Each type's default vCPUs: the catalogue's, else EC2's."""
    known = {t: catalog.INSTANCE_TYPES[t].vcpus for t in instance_types if t in catalog.INSTANCE_TYPES}
    others = sorted(instance_types - set(known))
    for start in range(0, len(others), 100):  # DescribeInstanceTypes takes at most 100 names
        pages = clients.ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=others[start:start + 100])
        known.update((t["InstanceType"], t["VCpuInfo"]["DefaultVCpus"]) for page in pages
                     for t in page["InstanceTypes"])
    return known


def quota_value(clients: Clients, quota: Quota) -> float | None:
    """The applied value, else AWS's default (Service Quotas has no applied value for a quota never changed);
    None when these credentials may not read quotas: EC2 still refuses a launch over the quota."""
    service_quotas = clients.client("service-quotas")
    try:
        try:
            return service_quotas.get_service_quota(ServiceCode=quota.service, QuotaCode=quota.code)["Quota"]["Value"]
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) != "NoSuchResourceException":
                raise
            return service_quotas.get_aws_default_service_quota(ServiceCode=quota.service,
                                                                QuotaCode=quota.code)["Quota"]["Value"]
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "AccessDeniedException":
            raise
        log.warning("these credentials may not read the quota \"%s\" (%s): AWS alone checks it, when the run makes "
                    "what it counts", quota.name, quota.code)
        return None
