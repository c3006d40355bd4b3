"""What AWS refuses of a launch's network that moto lets through."""

from typing import Any

from moto.ec2.models.instance_types import INSTANCE_TYPES

from . import backends
from .calls import AwsCall
from .public_access import PublicAccessBlocks

EFA_TYPES = ("efa", "efa-only")


def run_instances_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """A launch that names no subnet goes to the default VPC; without one AWS refuses it, dry run or not (moto
    checks it only when it launches). Its network interfaces must fit its type, as AWS checks them."""
    interfaces = interfaces_of(call)
    refusal = _interfaces_error(interfaces, call.params.get("InstanceType", ""))
    if refusal is not None or call.params.get("SubnetId") or call.params.get("NetworkInterface.1.SubnetId"):
        return refusal
    if ec2_backend.get_default_vpc() is None:
        return "VPCIdNotSpecified", "No default VPC for this user"
    return None


def interfaces_of(call: AwsCall) -> list[dict[str, str]]:
    """The launch's NetworkInterface.N.* parameters, one dict each."""
    found = []
    while f"NetworkInterface.{len(found) + 1}.DeviceIndex" in call.params:
        prefix = f"NetworkInterface.{len(found) + 1}."
        found.append({k.removeprefix(prefix): v for k, v in call.params.items() if k.startswith(prefix)})
    return found


def _interfaces_error(interfaces: list[dict[str, str]], instance_type: str) -> tuple[str, str] | None:
    """EC2's rules for a launch's interfaces: a public address only with one interface; EFA only on a type that
    has it, at most one per network card and no more than the type takes; an EFA-only interface never primary."""
    if not interfaces:
        return None
    if len(interfaces) > 1 and any(i.get("AssociatePublicIpAddress") == "true" for i in interfaces):
        return "InvalidParameterCombination", ("The associatePublicIPAddress parameter cannot be specified when "
                                               "launching with multiple network interfaces.")
    places = [(int(i.get("NetworkCardIndex", "0")), int(i["DeviceIndex"])) for i in interfaces]
    if len(set(places)) < len(places):
        return "InvalidParameterValue", "Each network interface needs its own network card and device index."
    efa = [i for i in interfaces if i.get("InterfaceType") in EFA_TYPES]
    info = INSTANCE_TYPES.get(instance_type, {}).get("NetworkInfo", {})
    most = info.get("EfaInfo", {}).get("MaximumEfaInterfaces", 0) if info.get("EfaSupported") else 0
    if len(efa) > most:
        return "InvalidParameterCombination", (f"The instance type {instance_type} supports at most {most} EFA "
                                               f"interfaces; the request asks for {len(efa)}.")
    primary = [i for i in interfaces if (int(i.get("NetworkCardIndex", "0")), int(i["DeviceIndex"])) == (0, 0)]
    if primary and primary[0].get("InterfaceType") == "efa-only":
        return "InvalidParameterCombination", "An EFA-only network interface cannot be the primary network interface."
    return None


def reaches_out(instance: Any, ec2_backend: Any, blocks: PublicAccessBlocks) -> bool:
    """Whether the machine has a way to the internet, which its SSM agent needs to register (SSM's endpoint) and
    its boot to install the project (PyPI): a 0.0.0.0/0 route in its subnet's route table (the VPC's main
    table for a subnet without one), active (its target there), through a transit gateway, through a NAT gateway or
    an interface (a NAT instance's) whose own subnet's internet gateway traffic Block Public Access lets out, or
    through an internet gateway it lets through, with a public address on the machine's primary interface."""
    primary = instance.nics.get(0)
    if primary is None:
        return False
    subnet = primary.subnet
    tables = list(ec2_backend.route_tables.values())
    own = [t for t in tables if any(a.get("SubnetId") == subnet.id for a in t.associations)]
    main = [t for t in tables if t.vpc_id == subnet.vpc_id and t.main_association_id]
    routes = [r for t in own or main for r in t.routes
              if r.destination_cidr_block == "0.0.0.0/0" and r.state == "active"]
    if any(r.transit_gateway for r in routes):
        return True
    if any(r.interface and not blocks.blocks(ec2_backend, r.interface.subnet, False) for r in routes):
        return True
    if any(r.nat_gateway and not blocks.blocks(ec2_backend, ec2_backend.get_subnet(r.nat_gateway.subnet_id), True)
           for r in routes):
        return True
    return (bool(primary.public_ip) and any(r.gateway is not None and r.gateway.id.startswith("igw-") for r in routes)
            and not blocks.blocks(ec2_backend, subnet, False))


def release_address_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """EC2 refuses to release an Elastic IP still associated in a VPC other than the default one (moto lets it
    go): https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ReleaseAddress.html"""
    wanted = call.params.get("AllocationId")
    for address in ec2_backend.addresses:
        if address.allocation_id == wanted and address.eni is not None:
            vpc = ec2_backend.get_vpc(address.eni.subnet.vpc_id)
            if not vpc.is_default:
                return "InvalidIPAddress.InUse", f"Address {address.public_ip} is in use."
    return None


def delete_subnet_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """EC2 refuses to delete a subnet that still holds a network interface (one a machine left behind, say);
    moto deletes it."""
    subnet_id = call.params.get("SubnetId")
    if any(interface.subnet.id == subnet_id for interface in list(ec2_backend.enis.values())):
        return "DependencyViolation", f"The subnet '{subnet_id}' has dependencies and cannot be deleted."
    return None


def delete_security_group_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """EC2 refuses to delete a security group that a network interface still has (a machine's still shutting down,
    an EFS mount target's) or that another group's rule in its VPC names; moto deletes it
    (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteSecurityGroup.html). A group named by its
    name (the default VPC's) is left to moto."""
    group_id = call.params.get("GroupId")
    vpc_id = next((vpc for vpc, groups in list(ec2_backend.groups.items()) if group_id in groups), None)
    if group_id is None or vpc_id is None:
        return None
    used = any(group_id in {group.id for group in interface.group_set} for interface in list(ec2_backend.enis.values()))
    named = any(rule.source_group.get("GroupId") == group_id
                for group in list(ec2_backend.groups[vpc_id].values()) if group.id != group_id
                for rule in group.ingress_rules + group.egress_rules)
    if used or named:
        return "DependencyViolation", f"resource {group_id} has a dependent object"
    return None


def delete_vpc_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """EC2 refuses to delete a VPC that still has an internet gateway attached or a security group other than
    its default one (moto deletes it with them: only its subnets and route tables stop it)
    (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteVpc.html)."""
    vpc_id = call.params.get("VpcId")
    gateways = [g for g in list(ec2_backend.internet_gateways.values()) if g.vpc is not None and g.vpc.id == vpc_id]
    groups = [g for g in list(ec2_backend.groups.get(vpc_id, {}).values()) if not g.is_default]
    if gateways or groups:
        return "DependencyViolation", f"The vpc '{vpc_id}' has dependencies and cannot be deleted."
    return None


def efa_devices(instance: Any) -> int:
    """The EFA devices the machine's OS sees: one per EFA interface it was launched with."""
    interfaces = [*instance.nics.values(), *getattr(instance, "card_interfaces", [])]
    return sum(interface.interface_type in EFA_TYPES for interface in interfaces)


def associate_address_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """EC2 refuses an Elastic IP on a machine (or its interface) still pending; moto's machines never are. It
    refuses to move one associated elsewhere only when told not to (AllowReassociation false), which moto cannot
    tell from the parameter's absence (moto_fixes.fix_address_reassociation)."""
    instance_id, interface_id = call.params.get("InstanceId"), call.params.get("NetworkInterfaceId")
    if call.params.get("AllowReassociation") == "false":
        address = next((a for a in ec2_backend.addresses if a.allocation_id == call.params.get("AllocationId")), None)
        if address is not None and address.eni is not None:
            on = address.eni.id if interface_id else getattr(address.eni.instance, "id", None)
            if on != (interface_id or instance_id):
                return "Resource.AlreadyAssociated", f"Resource {address.public_ip} is already associated."
    if interface_id:
        interface = ec2_backend.enis.get(interface_id)
        instance = interface.instance if interface else None
        if instance is not None and instance.state == "pending":
            return "IncorrectInstanceState", (f"The pending-instance-creation instance to which '{interface_id}' is "
                                              "attached is not in a valid state for this operation.")
    elif instance_id:
        instance = next((i for i in backends.instances(ec2_backend) if i.id == instance_id), None)
        if instance is not None and instance.state == "pending":
            return "InvalidInstanceID", (f"The pending instance '{instance_id}' is not in a valid state for this "
                                         "operation.")
    return None
