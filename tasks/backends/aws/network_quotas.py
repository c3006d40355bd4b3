"""The region's VPC and internet gateway quotas, which a run's own network (and the snapshot builder's) counts
against: 5 of each unless raised, the default VPC and its gateway among them, and every other network of the
account (another run's, a leftover). Checked before anything is made: EC2 refuses the VPC or gateway past them
(VpcLimitExceeded, InternetGatewayLimitExceeded) while the run's replicas are being made.
https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html"""

from __future__ import annotations

from tasks.backends.aws.clients import Clients
from tasks.backends.aws.quotas import Quota, quota_value
from tasks.backends.base import InputError

VPCS = Quota("L-F678F1CE", "VPCs per Region", service="vpc", new_account=5)
GATEWAYS = Quota("L-A4707A72", "Internet gateways per Region", service="vpc", new_account=5)


def check(clients: Clients, who: str) -> None:
    """Refuse `who` ("the run", "the snapshot builder") its own VPC and internet gateway where the region's quotas
    leave no room for one more of each."""
    ec2 = clients.ec2
    held = {VPCS: sum(len(page["Vpcs"]) for page in ec2.get_paginator("describe_vpcs").paginate()),
            GATEWAYS: sum(len(page["InternetGateways"])
                          for page in ec2.get_paginator("describe_internet_gateways").paginate())}
    for quota, count in held.items():
        value = quota_value(clients, quota)
        if value is not None and count + 1 > value:
            raise InputError(
                f"{who} makes its own VPC and internet gateway; the quota \"{quota.name}\" ({quota.code}) in "
                f"{clients.region} is {value:g} (a new account's is {quota.new_account:g}), with {count} held: "
                "delete one this account no longer needs (`imagenet18 cleanup` removes runs' leftovers), ask AWS "
                f"for more (`aws service-quotas request-service-quota-increase --region {clients.region} "
                f"--service-code vpc --quota-code {quota.code} --desired-value {count + 1}`), or give aws.subnet_id "
                "(a subnet of yours)")
