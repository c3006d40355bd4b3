"""Service Quotas for EC2's GPU vCPU quotas, which moto lacks (it knows only VPC quotas). Each test may set the
account's values; a reset gives the values of an account whose owner has asked for GPU quotas. A new account's
are 0, which GetAWSDefaultServiceQuota answers."""

import json
from typing import Any

from .calls import AwsCall
from .errors import Response, error_response

NAMES = {
    "L-417A185B": "Running On-Demand P instances",
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-7212CCBC": "All P Spot Instance Requests",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
}
CONFIGURED_VCPUS = 2048.0  # room for the tests' largest run: 16 x p4d.24xlarge (96 vCPUs each)


class Quotas:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        self.values = dict.fromkeys(NAMES, CONFIGURED_VCPUS)

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
        value = self.values[code] if call.action == "GetServiceQuota" else 0.0
        return _json({"Quota": _quota(call, code, value)})


def _quota(call: AwsCall, code: str, value: float) -> dict[str, Any]:
    return {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{call.region}:{call.account}:ec2/{code}", "QuotaCode": code,
            "QuotaName": NAMES[code], "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False}


def _json(body: dict[str, Any]) -> Response:
    return Response(200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(body).encode())
