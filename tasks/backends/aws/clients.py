"""boto3 clients for one region, with bounded retries, and the checks that need no resource: credentials,
regions, zone. Endpoints come from boto3's own configuration (AWS_ENDPOINT_URL points tests at the simulator)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
import botocore.utils
from botocore.credentials import RefreshableCredentials
from botocore.config import Config

from tasks.backends.aws import consistency
from tasks.backends.base import InputError

log = logging.getLogger(__name__)

# Throttling and transient errors: botocore's standard mode retries them with backoff, at most this often.
RETRIES = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60)
# Capacity errors have a better answer than waiting (another zone or type), so the caller sees them at once.
# Error codes that are answers, not trouble: a dry run's success, "not there" while looking something up.
EXPECTED_ANSWERS = {"DryRunOperation", "NoSuchKey", "InvalidRange", "404", "NoSuchEntity", "ParameterNotFound",
                    "InvalidPlacementGroup.Duplicate", "InvalidPermission.Duplicate", "EntityAlreadyExists",
                    "ParameterAlreadyExists", "InvalidResourceId"}
# Refusals a retry minutes later gets again: permissions, credentials, an account not opted in or not verified
# yet, quotas. A stage that meets one fails at once with it, rather than after its retries.
REFUSALS = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure", "InvalidClientTokenId",
            "UnrecognizedClientException", "OptInRequired", "Blocked", "PendingVerification", "VcpuLimitExceeded",
            "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded", "VolumeLimitExceeded", "VpcLimitExceeded",
            "AddressLimitExceeded", "MaxIOPSLimitExceeded", "AuthFailure.ServiceLinkedRoleCreationNotPermitted"}
ALWAYS_ENABLED = "us-east-1"  # a region every AWS account has (the opt-in ones came after it)
EXPIRY_VARIABLE = "AWS_CREDENTIAL_EXPIRATION"  # what botocore reads an environment's credentials' expiry from
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
# botocore reads its service models (megabytes of JSON) once per session; the sessions of a process share them.
_MODELS = botocore.loaders.create_loader()


class Clients:
    def __init__(self, region: str, journals: Path | None = None):
        """`journals`: the folder of the runs' journals of what their EC2 calls made (journal.py)."""
        self.region, self.journals = region, journals
        models_shared = botocore.session.Session()
        models_shared.register_component("data_loader", _MODELS)
        self.session = boto3.session.Session(region_name=region, botocore_session=models_shared)
        self._made: dict[tuple[str, bool], object] = {}
        self._making = threading.Lock()

    def client(self, service: str, retries: bool = True):
        """One client per service and retry mode, shared by all threads. The first takes a fifth of a second of
        CPU (botocore loads its models), so threads that ask at once wait for one rather than each load them."""
        with self._making:
            if (service, retries) not in self._made:
                client = self.session.client(service, config=RETRIES if retries else NO_RETRIES)
                client.meta.events.register("needs-retry.*", _log_error_answer)
                if service == "ec2":
                    consistency.watch(client, self.journals)
                self._made[service, retries] = client
            return self._made[service, retries]

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
            account = self.client("sts").get_caller_identity()["Account"]
        except botocore.exceptions.ClientError as exc:
            # boto3 asks the region's own STS endpoint, which in an opt-in region the account has not enabled
            # refuses every credential (InvalidClientTokenId): that is said instead where it is the cause.
            with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                self._check_enabled()
            raise InputError(f"AWS refused the credentials: {exc}") from None
        except RuntimeError as exc:  # botocore's, for credentials past AWS_CREDENTIAL_EXPIRATION
            raise InputError(f"these AWS credentials have expired ({exc}): renew them") from None
        self._check_enabled()
        return account

    def check_credentials_outlast(self, until: datetime, what: str = "the run", shorter: str | None = "--max-hours"
                                  ) -> None:
        """Temporary credentials that boto3 cannot renew (a session token in the environment or a profile's file:
        `aws configure export-credentials`, aws-vault; a credential_process that gives no expiry) stop every call
        once they expire, the run's teardown's too: refused where they expire before `until`; a warning where when
        they expire is not said."""
        credentials = self.session.get_credentials()
        renewed = isinstance(credentials, RefreshableCredentials) and credentials.method != "env"
        if credentials is None or renewed or not credentials.get_frozen_credentials().token:
            return  # none; renewed as they near their end (a role's, SSO's, an instance's); an IAM user's keys
        said = os.environ.get(EXPIRY_VARIABLE) if credentials.method == "env" else None
        expiry = _expiry(said)
        if expiry is None:
            log.warning("these AWS credentials are temporary (a session token), boto3 cannot renew them and when "
                        "they expire is not known (%s): if it is before the run ends, its teardown cannot delete what "
                        "it made, and `imagenet18 cleanup` with new credentials must", EXPIRY_VARIABLE)
        elif expiry < until:
            raise InputError(f"these AWS credentials expire at {expiry:%Y-%m-%d %H:%M} UTC, before {what} and its "
                             f"teardown would end ({until:%Y-%m-%d %H:%M} UTC), which could then not delete what "
                             "it made: use credentials boto3 renews (AWS_PROFILE naming an SSO or role profile, or "
                             "an instance role)" + (f", new ones that last, or a shorter {shorter}" if shorter
                                                    else ", or new ones that last"))

    @functools.cache  # once per region's clients
    def _check_enabled(self) -> None:
        """An opt-in region the account has not enabled answers every call as if the credentials were unknown
        (AuthFailure): said plainly instead, asked of us-east-1, which every account has enabled."""
        ec2 = self.ec2 if self.region == ALWAYS_ENABLED else self.session.client(
            "ec2", region_name=ALWAYS_ENABLED, config=RETRIES)
        try:
            found = ec2.describe_regions(RegionNames=[self.region])["Regions"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in REFUSALS:
                return  # not allowed to ask: the region's own calls will say
            raise
        if found and found[0].get("OptInStatus") == "not-opted-in":
            raise InputError(f"{self.region} is an opt-in region this account has not enabled: enable it (the AWS "
                             f"console's account page, or `aws account enable-region --region-name {self.region}`) "
                             "or choose another region")

    def enabled_regions(self) -> list[str]:
        """The regions enabled for the account (DescribeRegions lists no other unless asked for all), this one
        first."""
        found = sorted(region["RegionName"] for region in self.ec2.describe_regions()["Regions"])
        return [self.region, *(region for region in found if region != self.region)]

    @functools.cached_property
    def zones(self) -> list[str]:
        """The region's Availability Zones: not a Local or Wavelength Zone the account opted in to, which EC2 lists
        beside them and offers instance types in, without the EFS, io2 volumes and cluster placement groups a run
        needs (its name, us-east-1-bos-1a, sorts before the region's own)."""
        found = self.ec2.describe_availability_zones(Filters=[{"Name": "state", "Values": ["available"]},
                                                              {"Name": "zone-type", "Values": ["availability-zone"]}])
        return sorted(zone["ZoneName"] for zone in found["AvailabilityZones"])

    def check_zone(self, zone: str) -> None:
        if zone not in self.zones:
            raise InputError(f"unknown availability zone {zone!r} in {self.region}: choose one of "
                             f"{', '.join(self.zones)}")

    @functools.cache
    def zones_offering(self, instance_type: str) -> list[str]:
        offers = self.ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        return sorted(o["Location"] for o in offers["InstanceTypeOfferings"] if o["Location"] in self.zones)


def _log_error_answer(response=None, attempts: int = 0, operation=None, caught_exception=None, **_) -> None:
    """Every error answer is logged with its attempt number, so that bounded retries show in the log."""
    code = (response[1].get("Error", {}).get("Code") if response and response[1] else None) or (
        type(caught_exception).__name__ if caught_exception else None)
    if code and code not in EXPECTED_ANSWERS and not code.endswith("NotFound"):
        log.warning("AWS %s answered %s (attempt %d)", operation.name if operation else "?", code, attempts)


def _expiry(value: str | None) -> datetime | None:
    """As botocore reads AWS_CREDENTIAL_EXPIRATION (ISO 8601, RFC 1123, ...); None where it is not a time."""
    try:
        return botocore.utils.parse_timestamp(value).astimezone(timezone.utc) if value else None
    except (ValueError, TypeError, OverflowError):
        return None


def error_code(exc: BaseException) -> str:
    """AWS's error code: of an answer, or of the answer that stopped a waiter."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code", "")
    if isinstance(exc, botocore.exceptions.WaiterError):
        return (exc.last_response or {}).get("Error", {}).get("Code", "")
    return ""
