"""The account's vCPU quotas for GPU machines and for the snapshot builder's, read from Service Quotas before
anything is made. EC2 counts a launch's vCPUs against them (a new account has 0 for P and G, and its Standard
quota may be under the builder's 16), and its dry run of a launch checks permissions, not quotas, so without this
a run learns of the quota only after its network, file system and replicas exist.
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-on-demand-instances.html (On-Demand quotas) and
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html (Spot quotas)."""

from __future__ import annotations

import logging
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


# (catalog family, spot) -> the quota EC2 counts the machines against. On-demand, every P machine counts against one
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
# On-demand machines of the general-purpose, compute, memory and storage families: the snapshot builder's.
STANDARD = Quota("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", new_account=5)


def check(clients: Clients, instance_type: str, machines: int, spot: bool) -> None:
    """Refuse a run whose machines need more vCPUs than the account's quota for their type allows."""
    kind = catalog.instance_type(instance_type)
    quota = QUOTAS.get((kind.family, spot))
    if quota is None:
        log.info("no vCPU quota of %s %s machines is checked before the launch", "spot" if spot else "on-demand",
                 instance_type)
        return
    check_vcpus(clients, quota, f"{machines} x {instance_type} need", machines * kind.vcpus, "run fewer machines")


def check_vcpus(clients: Clients, quota: Quota, needing: str, need: int, otherwise: str = "") -> None:
    """Refuse machines that need more vCPUs than the account's `quota` allows. `needing`: who needs them, with
    the verb ("2 x p4d.24xlarge need"); `otherwise`: what else would do."""
    value = quota_value(clients, quota)
    if value is not None and need > value:
        raise InputError(
            f"{needing} {need} vCPUs of the quota \"{quota.name}\" ({quota.code}) in {clients.region}, which "
            f"is {value:g} for this account (a new account's is {quota.new_account:g}): ask AWS for more in the "
            f"Service Quotas console, or with `aws service-quotas request-service-quota-increase --region "
            f"{clients.region} --service-code ec2 --quota-code {quota.code} --desired-value {need}`"
            + (f", or {otherwise}" if otherwise else ""))


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
