"""The regions of a new AWS account, as AWS has them and moto does not. Regions launched before March 20, 2019 are
enabled for every account; later ones are opt-in, disabled until the owner enables them
(https://docs.aws.amazon.com/accounts/latest/reference/manage-acct-regions.html). DescribeRegions lists the enabled
ones unless asked for all (AllRegions); a call into a disabled region is refused as if its credentials were unknown
there (EC2: AuthFailure, "AWS was not able to validate the provided access credentials"; STS: InvalidClientTokenId;
JSON services: UnrecognizedClientException). moto lists every partition's regions (GovCloud's and China's, which an
AWS account cannot see), calls three opt-in regions enabled, ignores AllRegions and answers in any region."""

from botocore.session import Session
from moto.core.responses import ActionResult
from moto.ec2.models.availability_zones_and_regions import Region, RegionsAndZonesBackend
from moto.ec2.responses.availability_zones_and_regions import AvailabilityZonesAndRegions

from .calls import AwsCall

ENABLED_BY_DEFAULT = frozenset({
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
    "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "ap-southeast-1", "ap-southeast-2"})
# Signed for us-east-1 or for a bucket's region: never refused here. Not STS: boto3 asks the region's own
# endpoint (sts.<region>.amazonaws.com), which in a disabled region refuses the credentials (InvalidClientTokenId).
GLOBAL_SERVICES = ("iam", "s3")
REFUSAL_BY_PROTOCOL = {
    "query": ("InvalidClientTokenId", "The security token included in the request is invalid.", 403),
    "ec2": ("AuthFailure", "AWS was not able to validate the provided access credentials", 401),
    "json": ("UnrecognizedClientException", "The security token included in the request is invalid", 400),
    "rest-json": ("UnrecognizedClientException", "The security token included in the request is invalid", 403),
}


def account_regions() -> list[Region]:
    return [Region(name, f"ec2.{name}.amazonaws.com",
                   "opt-in-not-required" if name in ENABLED_BY_DEFAULT else "not-opted-in")
            for name in Session().get_available_regions("ec2")]


def fix_describe_regions() -> None:
    """An AWS account's regions, and DescribeRegions as AWS answers it: the enabled ones, all with AllRegions,
    those named (enabled or not) with RegionNames."""
    RegionsAndZonesBackend.regions = account_regions()

    def enabled_unless_all_asked(self: AvailabilityZonesAndRegions) -> ActionResult:
        self.error_on_dryrun()
        named = self._get_param("RegionNames", [])
        found = self.ec2_backend.describe_regions(named)
        if not named and not self._get_bool_param("AllRegions", False):
            found = [region for region in found if region.opt_in_status != "not-opted-in"]
        return ActionResult({"Regions": found})

    AvailabilityZonesAndRegions.describe_regions = enabled_unless_all_asked


def refusal(call: AwsCall) -> tuple[str, str, int] | None:
    """(code, message, status) for a call into a region the account has not enabled."""
    if call.service in GLOBAL_SERVICES or call.region in ENABLED_BY_DEFAULT:
        return None
    return REFUSAL_BY_PROTOCOL.get(call.protocol)
