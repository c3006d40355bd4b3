"""EC2's GPU vCPU quotas and its Elastic IP quota, which moto lacks: Service Quotas answers them (moto knows only
VPC quotas), and EC2 refuses a launch or an address past them, as AWS does (a dry run checks permissions only,
not quotas: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html). Each test may set the
account's values; a reset gives the values of an account whose owner has asked for GPU quotas and addresses. A
new account's, which GetAWSDefaultServiceQuota answers, are 0 vCPUs and 5 Elastic IPs."""

import json
from typing import Any

from moto.ec2.models.instance_types import INSTANCE_TYPES

from . import backends
from .calls import AwsCall
from .errors import Response, error_response
from .player import ALIVE

NAMES = {
    "L-417A185B": "Running On-Demand P instances",
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-7212CCBC": "All P4, P3 and P2 Spot Instance Requests",
    "L-C4BD4855": "All P5 Spot Instance Requests",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-0263D0A3": "EC2-VPC Elastic IPs",
}
CONFIGURED_VCPUS = 2048.0  # room for the tests' largest run: 16 x p4d.24xlarge (96 vCPUs each)
ELASTIC_IPS = "L-0263D0A3"
CONFIGURED_ELASTIC_IPS = 64.0  # two test workers' runs of 16 multi-card machines each, twice over
AWS_DEFAULTS = {ELASTIC_IPS: 5.0}  # the vCPU quotas' are 0
# (family prefix, spot) -> quota code. Spot P5 machines count against a quota of their own.
CODES = {("p", False): "L-417A185B", ("g", False): "L-DB2E81BA", ("vt", False): "L-DB2E81BA",
         ("p", True): "L-7212CCBC", ("p5", True): "L-C4BD4855", ("g", True): "L-3819A6DF", ("vt", True): "L-3819A6DF"}


class Quotas:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        self.values = {**dict.fromkeys(NAMES, CONFIGURED_VCPUS), ELASTIC_IPS: CONFIGURED_ELASTIC_IPS}

    def set(self, values: dict[str, float]) -> None:
        unknown = set(values) - set(NAMES)
        if unknown:
            raise KeyError(f"no simulated EC2 quota {', '.join(sorted(unknown))}")
        self.values.update(values)

    def handle(self, call: AwsCall) -> Response | None:
        """The answer to an EC2 quota's GetServiceQuota or GetAWSDefaultServiceQuota; None for other calls."""
        if call.action not in ("GetServiceQuota", "GetAWSDefaultServiceQuota"):
            return None
        if call.params.get("ServiceCode") != "ec2":
            return None
        code = call.params.get("QuotaCode", "")
        if code not in NAMES:
            return error_response("service-quotas", "NoSuchResourceException", f"The request failed because the "
                                  f"specified quota {code} does not exist.")
        value = self.values[code] if call.action == "GetServiceQuota" else AWS_DEFAULTS.get(code, 0.0)
        return _json({"Quota": _quota(call, code, value)})

    def launch_error(self, call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
        """(code, message) EC2 answers a launch whose vCPUs, with those of the account's running machines
        counted by the same quota, are more than the quota."""
        instance_type, spot = call.params.get("InstanceType", ""), "InstanceMarketOptions.MarketType" in call.params
        code = _code(instance_type, spot)
        if code is None or call.params.get("DryRun") == "true":
            return None
        running = sum(_vcpus(i.instance_type) for i in backends.instances(ec2_backend)
                      if i.state in ALIVE and _code(i.instance_type, i.lifecycle == "spot") == code)
        limit = self.values[code]
        if running + int(call.params.get("MinCount", "1")) * _vcpus(instance_type) <= limit:
            return None
        if spot:
            return "MaxSpotInstanceCountExceeded", "Max spot instance count exceeded"
        return "VcpuLimitExceeded", (
            f"You have requested more vCPU capacity than your current vCPU limit of {limit:g} allows for the "
            "instance bucket that the specified instance type belongs to. Please visit "
            "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.")


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


def _quota(call: AwsCall, code: str, value: float) -> dict[str, Any]:
    return {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{call.region}:{call.account}:ec2/{code}", "QuotaCode": code,
            "QuotaName": NAMES[code], "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False}


def _json(body: dict[str, Any]) -> Response:
    return Response(200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(body).encode())
