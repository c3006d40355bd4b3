"""`imagenet18 doctor --backend aws`: what a first run on this account needs, checked one at a time before
anything is made: the region, the credentials, the instance type against the machines' torch build, where it
is offered and its spot prices, the account's GPU vCPU quotas, its EBS IOPS quota for io1 or io2 replicas, its
default EBS encryption key, the AMI, the network and EC2's dry run of the launch. Every call reads or dry-runs;
nothing is created, so nothing needs a teardown."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from tasks.backends.aws import (
    addresses,
    catalog,
    encryption,
    iam,
    machines,
    network,
    permissions,
    prices,
    quotas,
    storage,
    volume_quotas,
)
from tasks.backends.aws.backend import AwsBackend
from tasks.backends.aws.clients import error_code
from tasks.backends.aws.options import AwsOptions
from tasks.backends.base import ClusterSpec, InputError

OK, WARN, FAIL, NOT_CHECKED = "ok", "warn", "fail", "-"
DOCTOR_RUN = "doctor"  # the run id the dry run's tags carry; nothing is made with it
ELASTIC_IPS = "Elastic IPs"
REPLICA_IOPS = "replicas' IOPS"
EBS_KEY = "EBS encryption key"
BUCKET_KEY = "results bucket"


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    status: str
    advice: str = ""  # what to do, when the status is not ok


@dataclass(frozen=True)
class _Found:
    """One check's answer, and what it found for the checks after it."""
    result: str
    status: str = OK
    advice: str = ""
    value: object = None


def diagnose(options: AwsOptions, instance_type: str, machines_wanted: int, spot: bool) -> list[Check]:
    """One Check per row of the doctor's table; a check that needs what an earlier one failed to find is listed
    as not checked."""
    return _Doctor(AwsBackend(options), instance_type, machines_wanted, spot).run()


class _Doctor:
    def __init__(self, backend: AwsBackend, instance_type: str, machines_wanted: int, spot: bool) -> None:
        self.backend, self.clients = backend, backend.clients
        self.instance_type, self.machines, self.spot = instance_type, machines_wanted, spot
        self.checks: list[Check] = []
        self.account = ""  # once the credentials check has said

    def run(self) -> list[Check]:
        if not self._check("region", self._region) or not (account := self._check("credentials", self._credentials)):
            self._not_checked("permissions", "instance type", "zones", "spot prices", *self._quota_names(),
                              REPLICA_IOPS, EBS_KEY, BUCKET_KEY, "AMI", "network", ELASTIC_IPS, "launch (dry run)",
                              why="needs the region and credentials above")
            return self.checks
        self.account = account
        self._check("permissions", self._permissions)
        self._check("instance type", self._instance_type)
        known = self.instance_type in catalog.INSTANCE_TYPES
        zone = known and self._check("zones", self._zones)
        if known:
            self._check("spot prices", self._spot_prices)
        else:
            self._not_checked("zones", "spot prices", why=f"{self.instance_type} is not in the catalogue")
        for quota, spot in self._quotas():
            self._check(self._quota_name(quota, spot), lambda q=quota, s=spot: self._quota(q, s))
        self._check(REPLICA_IOPS, self._replica_iops)
        self._check(EBS_KEY, lambda: self._ebs_key(account))
        self._check(BUCKET_KEY, self._bucket_key)
        image = self._check("AMI", self._image)
        subnet = zone and self._check("network", lambda: self._network(zone))
        if not zone:
            self._not_checked("network", why="needs a zone offering the type")
        if known:
            self._check(ELASTIC_IPS, self._elastic_ips)
        else:
            self._not_checked(ELASTIC_IPS, why=f"{self.instance_type} is not in the catalogue")
        if image and subnet:
            self._check("launch (dry run)", lambda: self._dry_run(image, subnet))
        else:
            self._not_checked("launch (dry run)", why="needs the zone, AMI and network above")
        return self.checks

    def _check(self, name: str, check: Callable[[], _Found]):
        """Runs one check and records its row; returns what it found, None when it failed."""
        try:
            found = check()
        except InputError as exc:
            found = _Found(_first_clause(str(exc)), FAIL, str(exc))
        except botocore.exceptions.ClientError as exc:
            found = _Found(f"AWS answered {error_code(exc)}", FAIL, str(exc))
        self.checks.append(Check(name, found.result, found.status, found.advice))
        return None if found.status == FAIL else found.value

    def _not_checked(self, *names: str, why: str) -> None:
        self.checks.extend(Check(name, f"not checked: {why}", NOT_CHECKED) for name in names)

    # -- the checks -----------------------------------------------------------------------------------
    def _region(self) -> _Found:
        self.clients.check_region()
        return _Found(self.clients.region, value=self.clients.region)

    def _credentials(self) -> _Found:
        # GetCallerIdentity needs no permission, so it answers for any valid credentials, even ones that may
        # do nothing else (https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html):
        # what they may do is what the dry run asks. Only the account is shown, never a key.
        account = self.clients.check_credentials()
        return _Found(f"account {account}", value=account)

    def _permissions(self) -> _Found:
        optional = {permissions.KEY_CHECKS: "a run cannot check its disks' KMS keys, and says so as it starts",
                    permissions.PRICES: "the cost plan takes the machines' us-east-1 price, and says so"}
        if encryption.default_is_aws_managed(self.clients):
            optional[permissions.CUSTOMER_MANAGED_KEYS] = (
                "EBS encrypts with the account's default key, AWS managed, without them; a dataset snapshot "
                "encrypted with a customer managed key would need them")
        if not self._bucket_under_customer_managed_key():
            optional[permissions.BUCKET_KEYS] = (
                "S3 encrypts the results bucket without them; a dataset bucket under a customer managed KMS key "
                "would need them")
        try:
            # Making a service-linked role is needed only where the account lacks it.
            present = frozenset(sid for sid, service in permissions.SERVICE_LINKED_ROLE_STATEMENTS.items()
                                if iam.service_linked_role_exists(self.clients, service))
            refused = permissions.missing(self.clients, skipping=present)
        except botocore.exceptions.ClientError as exc:
            return _Found(f"not checked: IAM answered {error_code(exc)} to iam:{exc.operation_name}", WARN,
                          "IAM would not say what these credentials may do (they need iam:ListRoles, and "
                          "iam:SimulatePrincipalPolicy on themselves); a run's pre-flight still refuses what EC2 "
                          f"refuses of the launch. AWS said: {exc}")
        actions = sorted({action for refused_actions in refused.values() for action in refused_actions})
        if set(refused) - set(optional):
            raise InputError(f"these credentials may not {', '.join(actions)}: attach "
                             "tasks/backends/aws/user_policy.json to their user or role (docs/aws.md, permissions)")
        if refused:
            return _Found(f"these credentials may not {', '.join(actions)}, which a run can do without", WARN,
                          "; ".join(f"without {', '.join(refused[sid])}, {optional[sid]}" for sid in refused) +
                          ": attach tasks/backends/aws/user_policy.json to their user or role for all of it")
        return _Found("IAM allows every action of tasks/backends/aws/user_policy.json")

    def _bucket_under_customer_managed_key(self) -> bool:
        checked = self._results_bucket
        return isinstance(checked, InputError) or checked.customer_managed  # one refused fails its own row

    @functools.cached_property
    def _results_bucket(self) -> encryption.BucketKey | InputError:
        """storage.check_bucket's answer, asked once for the permissions row and the results bucket row."""
        try:
            return storage.check_bucket(self.clients, self.backend.results_bucket, self.account)
        except InputError as exc:
            return exc

    def _instance_type(self) -> _Found:
        try:
            kind = catalog.runnable_instance_type(self.instance_type)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        major, minor = kind.compute_capability
        return _Found(f"{kind.gpus} x {kind.gpu}, compute capability {major}.{minor}: {catalog.TORCH_BUILD} runs it")

    def _zones(self) -> _Found:
        zone = self.backend.zone(self.instance_type)
        offering = ", ".join(self.clients.zones_offering(self.instance_type))
        return _Found(f"{self.instance_type} in {offering}; the run's zone: {zone}", value=zone)

    def _spot_prices(self) -> _Found:
        spot = self.backend.spot_prices(self.instance_type)
        on_demand = f"on-demand ${prices.on_demand_usd(self.clients, self.instance_type):,.2f}/h"
        if spot:
            return _Found(", ".join(f"{zone} ${price:,.4f}/h" for zone, price in spot.items()) + f" ({on_demand})")
        return _Found(f"none listed ({on_demand})", WARN if self.spot else OK,
                      "no spot price history for the type here: a spot run is priced at the on-demand price")

    @staticmethod
    def _quotas() -> list[tuple[quotas.Quota, bool]]:
        """Each GPU quota once, with its market (catalogue families may share one)."""
        return list(dict.fromkeys((quota, spot) for (_, spot), quota in quotas.QUOTAS.items()))

    def _quota_names(self) -> list[str]:
        return [self._quota_name(quota, spot) for quota, spot in self._quotas()]

    @staticmethod
    def _quota_name(quota: quotas.Quota, spot: bool) -> str:
        return f"quota {quota.code} ({'spot' if spot else 'on-demand'})"

    def _quota(self, quota: quotas.Quota, spot: bool) -> _Found:
        """The run's own quota is checked against its vCPUs; the others are shown, and a 0 warned of."""
        value = quotas.quota_value(self.clients, quota)
        if value is None:
            return _Found(f"{quota.name}: not readable", WARN, "these credentials may not read Service Quotas "
                          "(servicequotas:GetServiceQuota): EC2 alone refuses a launch over the quota")
        kind = catalog.INSTANCE_TYPES.get(self.instance_type)
        if kind is None or quotas.quota_for(self.instance_type, self.spot) != quota or spot != self.spot:
            if value == 0:
                return _Found(f"{quota.name}: 0 vCPUs (not this run's)", WARN,
                              f"a new account's: no machine it counts starts until AWS raises it (Service Quotas "
                              f"console, or `aws service-quotas request-service-quota-increase --region "
                              f"{self.clients.region} --service-code ec2 --quota-code {quota.code} "
                              "--desired-value N`)")
            return _Found(f"{quota.name}: {value:g} vCPUs (not this run's)")
        need, held, needing = self.machines * kind.vcpus, quotas.in_use(self.clients, quota), \
            f"{self.machines} x {self.instance_type} need"
        result = f"{quota.name}: {value:g} vCPUs, {held[1]} in use, {needing} {need}"
        refused = quotas.refusal(self.clients.region, quota, value, held, needing, need, quotas.FEWER_MACHINES)
        return _Found(result, FAIL, str(refused)) if refused else _Found(result)

    def _replica_iops(self) -> _Found:
        """The run's replicas, all made (a pool's would need fewer), against the region's IOPS quota for their
        type; their storage is checked at the run's pre-flight, which knows the dataset's size."""
        o = self.backend.options
        quota = volume_quotas.IOPS.get(o.volume_type)
        if quota is None:
            return _Found(f"{o.volume_type} volumes have no IOPS quota")
        value, used = volume_quotas.check_iops(self.clients, o.volume_type, o.iops, self.machines)
        if value is None:
            return _Found(f"{quota.name}: not readable", WARN, "these credentials may not read Service Quotas: EC2 "
                          "alone refuses a replica over the quota, part-way through the run's replicas")
        return _Found(f"{quota.name}: {value:g}, {used:g} in use, {self.machines} replicas at {o.iops} need "
                      f"{self.machines * o.iops}")

    def _elastic_ips(self) -> _Found:
        if not machines.needs_elastic_ips(self.instance_type, self.backend.public_addresses()):
            return _Found("none needed: each machine gets its address at launch, or reaches out through a NAT")
        value = addresses.check_quota(self.clients, self.machines)
        if value is None:
            return _Found("not readable", WARN, "these credentials may not read Service Quotas: EC2 alone refuses "
                          "an Elastic IP over the quota, after the run's replicas and network are made")
        return _Found(f"{addresses.QUOTA.name}: {value:g}, {self.machines} x {self.instance_type} need one each "
                      "(an interface on each EFA card)")

    def _ebs_key(self, account: str) -> _Found:
        """The account's default key, which every new disk but a replica of an encrypted snapshot takes; a run's
        pre-flight checks its snapshot's key too."""
        checked = encryption.check_keys(self.clients, account)
        if checked.unchecked:
            return _Found(f"{checked.default or 'the default key'}: not checked", WARN, "; ".join(checked.unchecked))
        kind = "AWS managed" if encryption.aws_managed(checked.default) else "Enabled"
        return _Found(f"the account's default for EBS: {checked.default} ({kind})")

    def _bucket_key(self) -> _Found:
        """The results bucket's default encryption, where the bucket is there: a KMS key S3 can use."""
        checked = self._results_bucket
        if isinstance(checked, InputError):
            raise checked
        if checked.unchecked:
            return _Found(checked.described, WARN, "; ".join(checked.unchecked))
        if checked.key is None:
            return _Found(checked.described)
        return _Found(f"{checked.described} ({'Enabled' if checked.customer_managed else 'AWS managed'})")

    def _image(self) -> _Found:
        image = machines.resolve_ami(self.clients, self.backend.options.ami)
        return _Found(f"{image['ImageId']}: {image.get('Name', '(no name)')}", value=image)

    def _network(self, zone: str) -> _Found:
        subnet_id = self.backend.options.subnet_id
        if subnet_id:
            if doubt := self.backend.check_subnet(zone):
                return _Found(f"subnet {subnet_id} in {zone}: a route out, DNS servers of its own", WARN, doubt,
                              value=subnet_id)
            return _Found(f"subnet {subnet_id} in {zone}: a route out, DNS on", value=subnet_id)
        network.check_public_access(self.clients.ec2)  # the run's own network's way out
        try:
            subnet_id = self.backend.default_subnet(zone)
        except InputError as exc:
            return _Found(f"no default subnet in {zone} (no default VPC?)", FAIL, str(exc))
        return _Found(f"default VPC's subnet {subnet_id} in {zone}", value=subnet_id)

    def _dry_run(self, image: dict, subnet_id: str) -> _Found:
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        spec = ClusterSpec(DOCTOR_RUN, DOCTOR_RUN, self.machines, self.instance_type, self.spot, expires)
        self.backend.dry_run_instances(spec, image, subnet_id)
        market = "spot" if self.spot else "on-demand"
        return _Found(f"EC2 would start {self.machines} x {self.instance_type} {market} (permissions only)")


def _first_clause(message: str) -> str:
    """A refusal's short form for the table: up to its first colon or semicolon (the advice has all of it)."""
    for mark in (": ", "; "):
        message = message.split(mark, 1)[0]
    return message


def table(checks: list[Check]) -> str:
    """The checks as one plain-text table, then what to do for each that is not ok."""
    rows = [("check", "result", "ok/fail"), *((c.name, c.result, c.status) for c in checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{name:<{widths[0]}}  {result:<{widths[1]}}  {status}" for name, result, status in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  -------")
    todo = [f"- {c.name}: {c.advice}" for c in checks if c.status in (FAIL, WARN) and c.advice]
    return "\n".join(lines + (["", "what to do:", *todo] if todo else []))


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)
