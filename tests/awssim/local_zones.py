"""Local Zones, which moto lacks. An account that opted in to one sees it among its region's zones
(DescribeAvailabilityZones lists "the Availability Zones, Local Zones, and Wavelength Zones that are available to
you"), of zone type local-zone, with the instance types it offers at location type availability-zone. Its name sorts
before the region's own zones' (us-east-1-bos-1a before us-east-1a). A Local Zone has a subset of a region's services:
EFS, io2 volumes and cluster placement groups a run needs are not among them
(https://docs.aws.amazon.com/local-zones/latest/ug/how-local-zones-work.html)."""

from collections.abc import Callable
from typing import Any

from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend, Zone
from moto.ec2.models.instance_types import InstanceTypeOfferingBackend
from moto.ec2.models.subnets import SubnetBackend
from moto.utilities.utils import filter_resources

LOCAL_ZONES = {"us-east-1": Zone("us-east-1-bos-1a", "us-east-1", "use1-bos1-az1", zone_type="local-zone")}
OFFERED = ("g5.xlarge", "g6.xlarge", "c6i.4xlarge")
ZONE_FILTERS = (("zone-id", "zone_id"), ("zone-type", "zone_type"), ("zone-name", "name"),
                ("region-name", "region_name"), ("state", "state"))


def fix_local_zones(opted_in: Callable[[str, str], bool]) -> None:
    """The region's Local Zone listed, and its offerings, for an account `opted_in(account, region)`."""
    describe_zones = RegionsAndZonesBackend.describe_availability_zones

    def with_local_zone(self: Any, filters: Any = None, zone_names: Any = None, zone_ids: Any = None) -> list:
        found = describe_zones(self, filters, zone_names, zone_ids)
        zone = LOCAL_ZONES.get(self.region_name)
        if zone is None or not opted_in(self.account_id, self.region_name):
            return found
        listed = filter_resources([zone], filters, ZONE_FILTERS) if filters else [zone]
        return found + [z for z in listed if (not zone_ids or z.zone_id in zone_ids)
                        and (not zone_names or z.name in zone_names)]

    describe_offerings = InstanceTypeOfferingBackend.describe_instance_type_offerings

    def with_local_offerings(self: Any, location_type: str | None = None, filters: Any = None) -> list:
        found = describe_offerings(self, location_type, filters)
        zone = LOCAL_ZONES.get(self.region_name)
        if location_type != "availability-zone" or zone is None or not opted_in(self.account_id, self.region_name):
            return found
        offered = [{"InstanceType": kind, "LocationType": location_type, "Location": zone.name} for kind in OFFERED]
        return found + [o for o in offered if self.matches_filters(o, filters or {}, location_type)]

    default_subnet = SubnetBackend.create_default_subnet

    def in_availability_zones_only(self: Any, availability_zone: str, *args: Any, **kwargs: Any) -> Any:
        """The default VPC has a default subnet in each Availability Zone, none in a Local Zone."""
        if any(zone.name == availability_zone for zone in LOCAL_ZONES.values()):
            return None
        return default_subnet(self, availability_zone, *args, **kwargs)

    RegionsAndZonesBackend.describe_availability_zones = with_local_zone
    InstanceTypeOfferingBackend.describe_instance_type_offerings = with_local_offerings
    SubnetBackend.create_default_subnet = in_availability_zones_only
