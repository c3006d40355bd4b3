"""What AWS refuses of a launch's network that moto lets through."""

from typing import Any

from .calls import AwsCall


def run_instances_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """A launch that names no subnet goes to the default VPC; without one AWS refuses it, dry run or not (moto
    checks it only when it launches)."""
    if call.params.get("SubnetId") or call.params.get("NetworkInterface.1.SubnetId"):
        return None
    if ec2_backend.get_default_vpc() is None:
        return "VPCIdNotSpecified", "No default VPC for this user"
    return None
