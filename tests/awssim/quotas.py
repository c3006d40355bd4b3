"""EC2's GPU and Standard vCPU quotas, its Elastic IP quota, the VPC and internet gateway quotas and EBS's IOPS
and storage quotas, which moto lacks: Service Quotas answers them (moto knows only VPC quotas, and enforces none),
and EC2 refuses a launch, an address, a network or a volume past them, as AWS does (a dry run checks permissions
only, not quotas: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html; EBS counts the
IOPS and size of every volume of a type in the region:
https://docs.aws.amazon.com/ebs/latest/userguide/ebs-resource-quotas.html). Each test may set the account's
values; a reset gives the values of an account whose owner has asked for GPU quotas, addresses and io2 IOPS. A new
account's, which GetAWSDefaultServiceQuota answers, are 0 GPU vCPUs, 5 Standard vCPUs, 5 Elastic IPs, 5 VPCs and
5 internet gateways, 100,000 io2 IOPS, 300,000 io1 IOPS, 20 TiB of io2, 50 TiB each of io1 and gp3."""

from typing import Any

from moto.ec2.models.instance_types import INSTANCE_TYPES

from . import backends
from .calls import AwsCall
from .errors import Response, error_response, json_response
from .player import ALIVE

COUNTED = (*ALIVE, "stopping", "shutting-down")  # the machines a vCPU quota counts

NAMES = {
    "L-417A185B": "Running On-Demand P instances",
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-7212CCBC": "All P4, P3 and P2 Spot Instance Requests",
    "L-C4BD4855": "All P5 Spot Instance Requests",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-0263D0A3": "EC2-VPC Elastic IPs",
    "L-1216C47A": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
}
EBS_NAMES = {
    "L-8D977E7E": "IOPS for Provisioned IOPS SSD (io2) volumes",
    "L-B3A130E6": "IOPS for Provisioned IOPS SSD (io1) volumes",
    "L-09BD8365": "Storage for Provisioned IOPS SSD (io2) volumes, in TiB",
    "L-FD252861": "Storage for Provisioned IOPS SSD (io1) volumes, in TiB",
    "L-7A658B76": "Storage for General Purpose SSD (gp3) volumes, in TiB",
}
VPCS, GATEWAYS = "L-F678F1CE", "L-A4707A72"
VPC_NAMES = {VPCS: "VPCs per Region", GATEWAYS: "Internet gateways per Region"}
SERVICES = {"ec2": ("Amazon Elastic Compute Cloud (Amazon EC2)", NAMES),
            "ebs": ("Amazon Elastic Block Store (Amazon EBS)", EBS_NAMES),
            "vpc": ("Amazon Virtual Private Cloud (Amazon VPC)", VPC_NAMES)}
IOPS_CODES = {"io2": "L-8D977E7E", "io1": "L-B3A130E6"}
STORAGE_CODES = {"io2": "L-09BD8365", "io1": "L-FD252861", "gp3": "L-7A658B76"}
EBS_DEFAULTS = {"L-8D977E7E": 100_000.0, "L-B3A130E6": 300_000.0, "L-09BD8365": 20.0, "L-FD252861": 50.0,
                "L-7A658B76": 50.0}
CONFIGURED_IO2_IOPS = 500_000.0  # two runs of the seed's 16 replicas at 11,500 IOPS, with room
CONFIGURED_VCPUS = 2048.0  # room for the tests' largest run: 16 x p4d.24xlarge (96 vCPUs each)
ELASTIC_IPS = "L-0263D0A3"
CONFIGURED_ELASTIC_IPS = 64.0  # two test workers' runs of 16 multi-card machines each, twice over
STANDARD = "L-1216C47A"
CONFIGURED_NETWORKS = 16.0  # room for the tests' runs, builders and users' networks in one region
AWS_DEFAULTS = {ELASTIC_IPS: 5.0, STANDARD: 5.0, VPCS: 5.0, GATEWAYS: 5.0, **EBS_DEFAULTS}  # GPU vCPUs': 0
# (family prefix, spot) -> quota code. Spot P5 machines count against a quota of their own.
CODES = {("p", False): "L-417A185B", ("g", False): "L-DB2E81BA", ("vt", False): "L-DB2E81BA",
         ("p", True): "L-7212CCBC", ("p5", True): "L-C4BD4855", ("g", True): "L-3819A6DF", ("vt", True): "L-3819A6DF",
         **{(family, False): STANDARD for family in "acdhimrtz"}}


class Quotas:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        self.values = {**dict.fromkeys(NAMES, CONFIGURED_VCPUS), ELASTIC_IPS: CONFIGURED_ELASTIC_IPS, **EBS_DEFAULTS,
                       IOPS_CODES["io2"]: CONFIGURED_IO2_IOPS, **dict.fromkeys(VPC_NAMES, CONFIGURED_NETWORKS)}

    def set(self, values: dict[str, float]) -> None:
        unknown = set(values) - set(self.values)
        if unknown:
            raise KeyError(f"no simulated EC2 or EBS quota {', '.join(sorted(unknown))}")
        self.values.update(values)

    def handle(self, call: AwsCall) -> Response | None:
        """The answer to an EC2 or EBS quota's GetServiceQuota or GetAWSDefaultServiceQuota; None for other calls."""
        if call.action not in ("GetServiceQuota", "GetAWSDefaultServiceQuota"):
            return None
        service = call.params.get("ServiceCode", "")
        if service not in SERVICES:
            return None
        code = call.params.get("QuotaCode", "")
        if code not in SERVICES[service][1]:
            return error_response("service-quotas", "NoSuchResourceException", f"The request failed because the "
                                  f"specified quota {code} does not exist.")
        value = self.values[code] if call.action == "GetServiceQuota" else AWS_DEFAULTS.get(code, 0.0)
        return json_response({"Quota": _quota(call, service, code, value)})

    def launch_error(self, call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
        """(code, message) EC2 answers a launch whose vCPUs, with those of the account's running machines
        counted by the same quota, are more than the quota. A machine let go still counts while it shuts down
        ("terminated instances count toward your instance limit for a while after they are terminated":
        https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html)."""
        instance_type, spot = call.params.get("InstanceType", ""), "InstanceMarketOptions.MarketType" in call.params
        code = _code(instance_type, spot)
        if code is None or call.params.get("DryRun") == "true":
            return None
        running = sum(_vcpus(i.instance_type) for i in backends.instances(ec2_backend)
                      if i.state in COUNTED and _code(i.instance_type, i.lifecycle == "spot") == code)
        limit = self.values[code]
        if running + int(call.params.get("MinCount", "1")) * _vcpus(instance_type) <= limit:
            return None
        if spot:
            return "MaxSpotInstanceCountExceeded", "Max spot instance count exceeded"
        return "VcpuLimitExceeded", (
            f"You have requested more vCPU capacity than your current vCPU limit of {limit:g} allows for the "
            "instance bucket that the specified instance type belongs to. Please visit "
            "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.")


    def create_volume_error(self, call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
        """(code, message) EC2 answers a CreateVolume whose IOPS or size, with those of the region's volumes of
        its type, pass the type's quota (error codes: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/
        errors-overview.html)."""
        kind = call.params.get("VolumeType", "gp2")
        held = [v for v in list(ec2_backend.volumes.values()) if v.volume_type == kind]
        iops_code = IOPS_CODES.get(kind)
        if iops_code and sum(v.iops or 0 for v in held) + int(call.params.get("Iops", "0")) > self.values[iops_code]:
            return "MaxIOPSLimitExceeded", "You've reached the limit on your IOPS usage for that region."
        storage_code = STORAGE_CODES.get(kind)
        snapshot = ec2_backend.snapshots.get(call.params.get("SnapshotId", ""))
        size = int(call.params.get("Size") or (snapshot.volume.size if snapshot else 0))
        size_tib = (sum(v.size for v in held) + size) / 1024
        if storage_code and size_tib > self.values[storage_code]:
            return "VolumeLimitExceeded", f"You've reached the limit on your {kind} volume storage."
        return None

    def network_error(self, call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
        """(code, message) EC2 answers a CreateVpc or CreateInternetGateway past the region's quota
        (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html)."""
        if call.action == "CreateVpc" and len(ec2_backend.vpcs) >= self.values[VPCS]:
            return "VpcLimitExceeded", "The maximum number of VPCs has been reached."
        if call.action == "CreateInternetGateway" and len(ec2_backend.internet_gateways) >= self.values[GATEWAYS]:
            return "InternetGatewayLimitExceeded", "The maximum number of internet gateways has been reached."
        return None

    def allocate_error(self, ec2_backend: Any) -> tuple[str, str] | None:
        """(code, message) EC2 answers an AllocateAddress past the account's Elastic IP quota."""
        if len(ec2_backend.addresses) < self.values[ELASTIC_IPS]:
            return None
        return "AddressLimitExceeded", "The maximum number of addresses has been reached."


def _code(instance_type: str, spot: bool) -> str | None:
    family = "vt" if instance_type.startswith("vt") else "p5" if spot and instance_type.startswith("p5") \
        else instance_type[:1]
    return CODES.get((family, spot))


def _vcpus(instance_type: str) -> int:
    return INSTANCE_TYPES[instance_type]["VCpuInfo"]["DefaultVCpus"] if instance_type in INSTANCE_TYPES else 0


def _quota(call: AwsCall, service: str, code: str, value: float) -> dict[str, Any]:
    service_name, names = SERVICES[service]
    return {"ServiceCode": service, "ServiceName": service_name,
            "QuotaArn": f"arn:aws:servicequotas:{call.region}:{call.account}:{service}/{code}", "QuotaCode": code,
            "QuotaName": names[code], "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False}


