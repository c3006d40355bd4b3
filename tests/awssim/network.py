"""What AWS refuses of a launch's network that moto lets through."""

from typing import Any

from moto.ec2.models.instance_types import INSTANCE_TYPES

from .calls import AwsCall

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
