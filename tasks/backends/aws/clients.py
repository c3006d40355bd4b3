"""boto3 clients for one region, with bounded retries, and the checks that need no resource: credentials,
region, zone. Endpoints come from boto3's own configuration (AWS_ENDPOINT_URL points tests at the simulator)."""

from __future__ import annotations

import functools
import logging

import boto3
import botocore.exceptions
from botocore.config import Config

from tasks.backends.base import InputError

log = logging.getLogger(__name__)

# Throttling and transient errors: botocore's standard mode retries them with backoff, at most this often.
RETRIES = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60)
# Capacity errors have a better answer than waiting (another zone or type), so the caller sees them at once.
NO_RETRIES = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=10, read_timeout=60)


class Clients:
    def __init__(self, region: str):
        self.region = region
        self.session = boto3.session.Session(region_name=region)

    @functools.cache
    def client(self, service: str, retries: bool = True):
        return self.session.client(service, config=RETRIES if retries else NO_RETRIES)

    @property
    def ec2(self):
        return self.client("ec2")

    def check_region(self) -> None:
        known = self.session.get_available_regions("ec2")
        if self.region not in known:
            raise InputError(f"unknown AWS region {self.region!r} (e.g. us-east-1, us-west-2, eu-west-1)")

    def check_credentials(self) -> str:
        """The account id; a clear error when no credentials are configured or they are refused."""
        if self.session.get_credentials() is None:
            raise InputError("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "or run on a machine with an instance role")
        try:
            return self.client("sts").get_caller_identity()["Account"]
        except botocore.exceptions.ClientError as exc:
            raise InputError(f"AWS refused the credentials: {exc}") from None

    @functools.cached_property
    def zones(self) -> list[str]:
        found = self.ec2.describe_availability_zones(Filters=[{"Name": "state", "Values": ["available"]}])
        return sorted(zone["ZoneName"] for zone in found["AvailabilityZones"])

    def check_zone(self, zone: str) -> None:
        if zone not in self.zones:
            raise InputError(f"unknown availability zone {zone!r} in {self.region}: choose one of "
                             f"{', '.join(self.zones)}")

    def zones_offering(self, instance_type: str) -> list[str]:
        offers = self.ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        return sorted(o["Location"] for o in offers["InstanceTypeOfferings"] if o["Location"] in self.zones)


def error_code(exc: BaseException) -> str:
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, botocore.exceptions.ClientError) else ""
