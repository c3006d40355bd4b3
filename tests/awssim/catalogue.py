"""Instance types: add the GPU types moto's catalogue lacks, and refuse the ones AWS would refuse, as AWS does."""

import copy
from typing import Any

from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS, INSTANCE_TYPES, InstanceType, InstanceTypeBackend

from .calls import AwsCall

# p3.16xlarge (8x V100 16 GB, EBS only, 25 Gbit) is absent from moto 5.2.5; built on its sibling p3dn.24xlarge.
P3_16XLARGE_CHANGES: dict[str, Any] = {
    "InstanceType": "p3.16xlarge",
    "Hypervisor": "xen",
    "InstanceStorageSupported": False,
    "MemoryInfo": {"SizeInMiB": 499712},
    "VCpuInfo": {"DefaultCores": 32, "DefaultThreadsPerCore": 2, "DefaultVCpus": 64,
                 "ValidCores": list(range(4, 33, 2)), "ValidThreadsPerCore": [1, 2]},
    "ProcessorInfo": {"Manufacturer": "Intel", "SupportedArchitectures": ["x86_64"], "SustainedClockSpeedInGhz": 2.3},
}
EXTRA_TYPES: dict[str, tuple[str, dict[str, Any]]] = {"p3.16xlarge": ("p3dn.24xlarge", P3_16XLARGE_CHANGES)}
EXTRA_OFFERINGS = {"us-east-1": {"p3.16xlarge": ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]}}


def _derive(base: str, changes: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(INSTANCE_TYPES[base])
    spec.pop("InstanceStorageInfo", None)
    spec.update(copy.deepcopy(changes))
    gpu = spec["GpuInfo"]["Gpus"][0]
    gpu["MemoryInfo"]["SizeInMiB"] = 16384
    spec["GpuInfo"]["TotalGpuMemoryInMiB"] = 16384 * gpu["Count"]
    network = spec["NetworkInfo"]
    network.pop("EfaInfo", None)
    network.update(EfaSupported=False, NetworkPerformance="25 Gigabit")
    for card in network["NetworkCards"]:
        card.update(NetworkPerformance="25 Gigabit", BaselineBandwidthInGbps=25.0, PeakBandwidthInGbps=25.0)
    return spec


def extend_catalogue() -> None:
    """Add EXTRA_TYPES to moto's instance types and their offerings (all three location types). Idempotent."""
    for name, (base, changes) in EXTRA_TYPES.items():
        if name not in INSTANCE_TYPES:
            INSTANCE_TYPES[name] = _derive(base, changes)
            InstanceTypeBackend.instance_types.append(InstanceType(name))  # DescribeInstanceTypes' list
    for region, offered in EXTRA_OFFERINGS.items():
        zone_ids = {zone.name: zone.zone_id for zone in RegionsAndZonesBackend.zones[region]}
        for name, zones in offered.items():
            locations = {
                "region": [region],
                "availability-zone": zones,
                "availability-zone-id": [zone_ids[zone] for zone in zones],
            }
            for location_type, values in locations.items():
                offerings = INSTANCE_TYPE_OFFERINGS[location_type][region]
                known = {(o["InstanceType"], o["Location"]) for o in offerings}
                offerings.extend(
                    {"InstanceType": name, "Location": value, "LocationType": location_type}
                    for value in values
                    if (name, value) not in known
                )


def run_instances_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """(code, message) AWS would answer a RunInstances with an unknown type or one not offered in its AZ."""
    instance_type = call.params.get("InstanceType")
    if instance_type is None:
        return None
    if instance_type not in INSTANCE_TYPES:
        return "InvalidParameterValue", f"Invalid value '{instance_type}' for InstanceType."
    zone = call.params.get("Placement.AvailabilityZone") or _subnet_zone(call, ec2_backend)
    if zone is None:
        return None
    offered = sorted(
        o["Location"]
        for o in INSTANCE_TYPE_OFFERINGS["availability-zone"].get(call.region, [])
        if o["InstanceType"] == instance_type
    )
    if zone in offered or zone not in {z.name for z in RegionsAndZonesBackend.zones.get(call.region, [])}:
        return None  # an AZ of another region is moto's to refuse
    return "Unsupported", (
        f"Your requested instance type ({instance_type}) is not supported in your requested Availability Zone "
        f"({zone}). Please retry your request by not specifying an Availability Zone or choosing "
        f"{', '.join(offered)}."
    )


def _subnet_zone(call: AwsCall, ec2_backend: Any) -> str | None:
    subnet_id = call.params.get("SubnetId") or call.params.get("NetworkInterface.1.SubnetId")
    if subnet_id is None:
        return None
    for zone, subnets in list(ec2_backend.subnets.items()):
        if subnet_id in subnets:
            return zone
    return None  # moto answers for unknown subnets
