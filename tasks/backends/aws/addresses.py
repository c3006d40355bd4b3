"""Elastic IP addresses for machines with an interface on each of their network cards (one per EFA card) that
reach out through a public address (the run's own network). EC2 gives a public address at launch only to a
machine launched with one network interface (RunInstances' AssociatePublicIpAddress), so each of these gets an
Elastic IP on its primary interface once it runs (EC2 refuses one on a pending machine), tagged with the run:
teardown releases it.
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceNetworkInterfaceSpecification.html"""

from __future__ import annotations

import uuid

from tasks.backends.aws import once, pools, quotas, tags
from tasks.backends.aws.clients import Clients
from tasks.backends.base import ClusterSpec, InputError

QUOTA = quotas.Quota("L-0263D0A3", "EC2-VPC Elastic IPs")  # 5 on an account that never asked for more
HOURLY_USD = 0.005  # AWS's price of a public IPv4 address, an Elastic IP or one given at launch
ALLOCATION = "imagenet18:allocation"  # a token of the AllocateAddress call that made the address


def check_quota(clients: Clients, machines: int) -> float | None:
    """Refuse a run whose machines need more Elastic IPs than the account's quota leaves free; the quota, None
    when these credentials may not read it."""
    value = quotas.quota_value(clients, QUOTA)
    held = len(clients.ec2.describe_addresses()["Addresses"])
    if value is not None and held + machines > value:
        raise InputError(
            f"{machines} machines need {machines} Elastic IPs (one each, with an interface on every EFA card); the "
            f"quota \"{QUOTA.name}\" ({QUOTA.code}) in {clients.region} is {value:g}, with {held:g} held: "
            f"ask AWS for more (`aws service-quotas request-service-quota-increase --region {clients.region} "
            f"--service-code ec2 --quota-code {QUOTA.code} --desired-value {held + machines:g}`), run fewer "
            "machines, or give aws.subnet_id (a private subnet whose route out is a NAT gateway)")
    return value


def attach(clients: Clients, spec: ClusterSpec, instances: list[dict], parallel: int) -> None:
    """An Elastic IP of the run on the primary interface of each of `instances` that has none: first those the
    run holds free (a retry) or on a machine it has let go (a replaced one, which keeps its address while it shuts
    down: minutes), then new ones. Allocating instead would hold one more address per replaced machine, past the
    quota the run was checked against."""
    ec2 = clients.ec2
    held = ec2.describe_addresses(Filters=tags.run_filter(spec.run_id))["Addresses"]
    served = {a.get("NetworkInterfaceId") for a in held if a.get("AssociationId")}
    wanting = [primary_interface(i) for i in instances]
    wanting = [interface for interface in wanting if interface not in served]
    reusable = [a["AllocationId"] for a in held if not a.get("AssociationId")]
    if len(reusable) < len(wanting):
        reusable += _on_machines_let_go(clients, spec.run_id, held)
    allocations = reusable[:len(wanting)] + [_allocate(clients, spec) for _ in wanting[len(reusable):]]

    def one(interface: str, allocation: str) -> None:
        # An address still on a machine let go moves in this one call (EC2 disassociates it there first).
        ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=interface, AllowReassociation=True)

    with pools.pool(parallel, len(wanting)) as pool:
        list(pool.map(one, wanting, allocations))


def _allocate(clients: Clients, spec: ClusterSpec) -> str:
    """A new address of the run: AllocateAddress takes no idempotency token (once.py), so the call tags the address
    with a token of its own, and after a lost answer the address with that token is the one it made."""
    token = uuid.uuid4().hex
    run_tags = tags.tag_list(spec.run_id, spec.expires_at, f"imagenet18-{spec.run_id}", **{ALLOCATION: token})
    ec2 = clients.client("ec2", retries=False)

    def made_unanswered() -> str | None:
        found = clients.ec2.describe_addresses(Filters=[{"Name": f"tag:{ALLOCATION}", "Values": [token]}])
        return next((a["AllocationId"] for a in found["Addresses"]), None)

    return once.make_once("an Elastic IP (EC2's AllocateAddress)", lambda: ec2.allocate_address(
        Domain="vpc", TagSpecifications=tags.tag_specs("elastic-ip", run_tags))["AllocationId"], made_unanswered)


def _on_machines_let_go(clients: Clients, run_id: str, held: list[dict]) -> list[str]:
    """The run's addresses still on an interface of one of its machines that is on its way out or stopped."""
    filters = tags.run_filter(run_id) + [{"Name": "instance-state-name",
                                          "Values": ["shutting-down", "stopping", "stopped"]}]
    pages = clients.ec2.get_paginator("describe_instances").paginate(Filters=filters)
    interfaces = {n["NetworkInterfaceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]
                  for n in i.get("NetworkInterfaces", [])}
    return [a["AllocationId"] for a in held if a.get("AssociationId") and a.get("NetworkInterfaceId") in interfaces]


def primary_interface(instance: dict) -> str:
    """The id of the machine's interface at network card 0, device 0: the one public traffic goes through."""
    for interface in instance["NetworkInterfaces"]:
        attachment = interface["Attachment"]
        if attachment.get("NetworkCardIndex", 0) == 0 and attachment["DeviceIndex"] == 0:
            return interface["NetworkInterfaceId"]
    raise ValueError(f"machine {instance['InstanceId']} has no primary network interface")


def release(clients: Clients, allocation_id: str) -> None:
    """After its machine: EC2 refuses to release an address still associated in a VPC other than the default
    one (InvalidIPAddress.InUse), and disassociates it when the machine's interface goes with the machine."""
    clients.ec2.release_address(AllocationId=allocation_id)
