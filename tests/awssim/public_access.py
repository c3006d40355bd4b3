"""VPC Block Public Access, which moto lacks: an account's (or its organization's) setting per region that blocks
traffic through internet gateways, in every VPC but those, or those subnets, an exclusion exempts
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_VpcBlockPublicAccessOptions.html). block-bidirectional
blocks it all, block-ingress all but what NAT gateways start; an allow-egress exclusion exempts outbound traffic,
and only from block-bidirectional. Off unless a test turns it on."""

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from .calls import AwsCall
from .errors import Response, xml_response
from .initialization import EC2_NS


@dataclass
class Setting:
    mode: str  # block-bidirectional or block-ingress
    exclusions_allowed: bool
    exclusions: dict[str, str] = field(default_factory=dict)  # VPC or subnet id -> allow-egress or allow-bidirectional


class PublicAccessBlocks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: dict[str, Setting] = {}  # the account's, by region where it is on

    def turn_on(self, region: str, mode: str, exclusions: dict[str, str], exclusions_allowed: bool) -> None:
        with self._lock:
            self._settings[region] = Setting(mode, exclusions_allowed, dict(exclusions))

    def reset(self) -> None:
        with self._lock:
            self._settings.clear()

    def options_answer(self, call: AwsCall) -> Response:
        setting = self._settings.get(call.region)
        mode, allowed = (setting.mode, setting.exclusions_allowed) if setting else ("off", True)
        return xml_response(
            f'<DescribeVpcBlockPublicAccessOptionsResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>'
            f"<vpcBlockPublicAccessOptions><awsAccountId>{call.account}</awsAccountId><awsRegion>{call.region}"
            f"</awsRegion><state>{'update-complete' if setting else 'default-state'}</state>"
            f"<internetGatewayBlockMode>{mode}</internetGatewayBlockMode><managedBy>account</managedBy>"
            f"<exclusionsAllowed>{'allowed' if allowed else 'not-allowed'}</exclusionsAllowed>"
            "</vpcBlockPublicAccessOptions></DescribeVpcBlockPublicAccessOptionsResponse>")

    def exclusions_answer(self, call: AwsCall) -> Response:
        setting = self._settings.get(call.region)
        items = "".join(
            f"<item><exclusionId>exclusion-{uuid.uuid5(uuid.NAMESPACE_URL, resource).hex[:17]}</exclusionId>"
            f"<internetGatewayExclusionMode>{mode}</internetGatewayExclusionMode><resourceArn>arn:aws:ec2:"
            f"{call.region}:{call.account}:{'vpc' if resource.startswith('vpc-') else 'subnet'}/{resource}"
            "</resourceArn><state>create-complete</state></item>"
            for resource, mode in (setting.exclusions.items() if setting else ()))
        return xml_response(
            f'<DescribeVpcBlockPublicAccessExclusionsResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}'
            f"</requestId><vpcBlockPublicAccessExclusionSet>{items}</vpcBlockPublicAccessExclusionSet>"
            "</DescribeVpcBlockPublicAccessExclusionsResponse>")

    def blocks(self, ec2_backend: Any, subnet: Any, outbound_only: bool) -> bool:
        """Whether traffic of `subnet` through an internet gateway is blocked: `outbound_only` where a NAT gateway
        in it started it."""
        setting = self._settings.get(ec2_backend.region_name)
        if setting is None or (outbound_only and setting.mode == "block-ingress"):
            return False
        exempt = {setting.exclusions.get(subnet.id), setting.exclusions.get(subnet.vpc_id)}
        return not ("allow-bidirectional" in exempt or ("allow-egress" in exempt and setting.mode ==
                                                        "block-bidirectional"))
