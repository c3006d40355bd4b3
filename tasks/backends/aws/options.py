"""What a user can say about an AWS run beyond the generic parameters: where, on what network, with which
disks and results bucket. A pydantic model so the flow validates it with the rest of its parameters."""

from __future__ import annotations

import ipaddress
import os
import re

import botocore.exceptions
import botocore.session
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.backends.base import InputError


def _default_region() -> str:
    """AWS_REGION, else the region boto3 itself would use (AWS_DEFAULT_REGION, else the profile's in the AWS
    config file, where `aws configure` writes it), else us-east-1."""
    try:
        configured = botocore.session.Session().get_config_variable("region")
    except botocore.exceptions.ProfileNotFound as exc:
        raise InputError(f"{exc}: AWS_PROFILE names a profile the AWS config and credentials files lack") from None
    return os.environ.get("AWS_REGION") or configured or "us-east-1"


class AwsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = Field(default_factory=_default_region, description="default: AWS_REGION, else boto3's "
                        "(AWS_DEFAULT_REGION, the AWS config file's), else us-east-1")
    availability_zone: str | None = Field(None, description="default: the first zone offering the type")
    other_instance_types: tuple[str, ...] = Field(
        (), description="on InsufficientInstanceCapacity, run every machine as the next of these instead")
    other_availability_zones: tuple[str, ...] = Field(
        (), description="on InsufficientInstanceCapacity in the run's zone for every allowed type, move the run "
                        "to the next of these zones")
    subnet_id: str | None = Field(None, description="use this subnet (and its VPC) instead of making a network")
    ami: str | None = Field(None, description="default: the latest Deep Learning Base AMI (Ubuntu 22.04)")
    volume_type: str = Field("io2", pattern="^(io1|io2|gp3)$")
    iops: int = Field(11_500, ge=3000, le=256_000, description="the seed's 11,500")
    throughput_mbps: int = Field(1000, ge=125, le=1000, description="gp3 only: at most 0.25 MiB/s per IOPS")
    initialization_mibps: int = Field(300, ge=100, le=300,
                                      description="the rate EBS initializes each replica at before training starts")
    bucket: str | None = Field(None, description="results bucket; default imagenet18-<account>-<region>")
    ssh_cidr: str | None = Field(None, description="allow ssh from this CIDR (default: no ssh, connect via SSM)")
    snapshot_owner: str = Field("self", description="account that owns the dataset snapshot")
    dataset_folder: str = Field("imagenet", description="the dataset's folder on the snapshot's volume")
    parallel_calls: int = Field(16, ge=1, le=64,
                                description="AWS calls made at once: volumes, machines, lookups (1: one at a time)")

    @field_validator("ssh_cidr")
    @classmethod
    def _ipv4_range(cls, cidr: str | None) -> str | None:
        """What EC2 takes as a security group rule's IPv4 range: otherwise it is refused only once the run's network
        is made, beside its replicas (AWS takes host bits, 203.0.113.7/24, as their network)."""
        if cidr is None:
            return cidr
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IPv4 range in CIDR form, such as 203.0.113.7/32") from None
        if network.version != 4:
            raise ValueError(f"{cidr!r} is IPv6: the run's network is IPv4 only; give an IPv4 range, such as "
                             "203.0.113.7/32")
        if "/" not in cidr:
            raise ValueError(f"{cidr!r} is an address: give it as a range, {cidr}/32 for that address alone")
        if not cidr.partition("/")[2].isdigit():  # ipaddress takes a netmask there (/255.255.255.0); EC2 does not
            raise ValueError(f"{cidr!r} is not an IPv4 range in CIDR form, such as 203.0.113.7/32")
        return cidr

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, name: str | None) -> str | None:
        """A name S3 takes in any call: a URL, or a name S3 refuses whatever the bucket, is refused before anything
        is made (whether a new bucket may be so named, the pre-flight says: storage.new_name_problem)."""
        if name is None:
            return name
        if name.startswith("s3://"):
            raise ValueError(f"{name!r} is a URL: give the bucket's name alone, {name[5:].split('/')[0]!r}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{3,255}", name):  # botocore's own check, the legacy names' rule
            raise ValueError(f"{name!r} is not an S3 bucket name: 3 to 63 lowercase letters, digits, dots and "
                             "hyphens, beginning and ending with a letter or digit")
        return name
