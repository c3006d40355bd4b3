"""GuardDuty Runtime Monitoring with its agent managed for EC2, which moto lacks: once a machine runs in a VPC,
GuardDuty gives that VPC an interface endpoint for its agent (com.amazonaws.<region>.guardduty-data) and a security
group for the endpoint (GuardDutyManagedSecurityGroup-<vpc id>), both tagged GuardDutyManaged=true, and deletes them
only when Runtime Monitoring is turned off
(https://docs.aws.amazon.com/guardduty/latest/ug/using-iac-with-gdu-automated-agents-runtime-monitoring.html).
The endpoint's interface, which has the group, holds the subnet (network.delete_subnet_error) and the group
(network.delete_security_group_error); the group holds the VPC (network.delete_vpc_error). Off unless a test turns
it on."""

import threading
from typing import Any

from . import backends

MANAGED_TAG = {"GuardDutyManaged": "true"}


class RuntimeMonitoring:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: set[str] = set()  # where the account has it on

    def turn_on(self, region: str) -> None:
        with self._lock:
            self._regions.add(region)

    def reset(self) -> None:
        with self._lock:
            self._regions.clear()

    def record_launch(self, region: str, ec2_backend: Any) -> None:
        """After a launch: each VPC with a machine in it and no endpoint of GuardDuty's gets one."""
        with self._lock:
            if region not in self._regions:
                return
            service = f"com.amazonaws.{region}.guardduty-data"
            served = {e.vpc_id for e in list(ec2_backend.vpc_end_points.values())
                      if e.service_name == service and e.state != "deleted"}
            for instance in backends.instances(ec2_backend):
                subnet = getattr(instance.nics.get(0), "subnet", None)
                if subnet is None or subnet.vpc_id in served or instance.state in ("shutting-down", "terminated"):
                    continue
                group = ec2_backend.create_security_group(
                    f"GuardDutyManagedSecurityGroup-{subnet.vpc_id}", "Associated with VPC endpoint for GuardDuty",
                    vpc_id=subnet.vpc_id, tags=MANAGED_TAG)
                endpoint = ec2_backend.create_vpc_endpoint(
                    subnet.vpc_id, service, "Interface", None, [], subnet_ids=[subnet.id],
                    security_group_ids=[group.id], tags=MANAGED_TAG, private_dns_enabled=True)
                for interface_id in endpoint.network_interface_ids:
                    ec2_backend.enis[interface_id]._group_set = [group]
                served.add(subnet.vpc_id)
