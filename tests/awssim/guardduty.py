"""GuardDuty Runtime Monitoring with its agent managed for EC2, which moto lacks: once a machine runs in a VPC,
GuardDuty gives that VPC an interface endpoint for its agent (com.amazonaws.<region>.guardduty-data) and a security
group for the endpoint (GuardDutyManagedSecurityGroup-<vpc id>), both tagged GuardDutyManaged=true, and deletes them
only when Runtime Monitoring is turned off
(https://docs.aws.amazon.com/guardduty/latest/ug/using-iac-with-gdu-automated-agents-runtime-monitoring.html).
The endpoint's interface, which has the group, holds the subnet (network.delete_subnet_error) and the group
(network.delete_security_group_error) until a while after the endpoint's deletion; the group holds the VPC
(network.delete_vpc_error). When GuardDuty gets to a new VPC is not documented: `lagging` has it get there only as
the machines are terminated, after a teardown listed the run's resources. Off unless a test turns it on."""

import threading
import uuid
from typing import Any

from . import backends
from .calls import AwsCall
from .errors import Response, xml_response
from .initialization import EC2_NS

MANAGED_TAG = {"GuardDutyManaged": "true"}
ENDPOINT_DELETING_S = 2.0  # how long a deleted endpoint is "deleting", its interfaces still there


class RuntimeMonitoring:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: dict[str, bool] = {}  # where the account has it on: whether GuardDuty lags there

    def turn_on(self, region: str, lagging: bool = False) -> None:
        with self._lock:
            self._regions[region] = lagging

    def reset(self) -> None:
        with self._lock:
            self._regions.clear()

    def record_launch(self, region: str, ec2_backend: Any) -> None:
        """After a launch: each VPC with a machine in it and no endpoint of GuardDuty's gets one."""
        if self._regions.get(region) is False:
            self._serve(region, ec2_backend, [i for i in backends.instances(ec2_backend)
                                              if i.state not in ("shutting-down", "terminated")])

    def record_termination(self, region: str, ec2_backend: Any, instance_ids: list[str]) -> None:
        """Before a termination, where GuardDuty lags: the machines' VPCs get their endpoints now."""
        if self._regions.get(region):
            self._serve(region, ec2_backend, [i for i in backends.instances(ec2_backend) if i.id in instance_ids])

    def _serve(self, region: str, ec2_backend: Any, instances: list[Any]) -> None:
        with self._lock:
            service = f"com.amazonaws.{region}.guardduty-data"
            served = {e.vpc_id for e in list(ec2_backend.vpc_end_points.values())
                      if e.service_name == service and e.state != "deleted"}
            for instance in instances:
                subnet = getattr(instance.nics.get(0), "subnet", None)
                if subnet is None or subnet.vpc_id in served:
                    continue
                name = f"GuardDutyManagedSecurityGroup-{subnet.vpc_id}"  # one left by a deleted endpoint is reused
                group = ec2_backend.get_security_group_from_name(name, subnet.vpc_id) or \
                    ec2_backend.create_security_group(name, "Associated with VPC endpoint for GuardDuty",
                                                      vpc_id=subnet.vpc_id, tags=MANAGED_TAG)
                endpoint = ec2_backend.create_vpc_endpoint(
                    subnet.vpc_id, service, "Interface", None, [], subnet_ids=[subnet.id],
                    security_group_ids=[group.id], tags=MANAGED_TAG, private_dns_enabled=True)
                for interface_id in endpoint.network_interface_ids:
                    ec2_backend.enis[interface_id]._group_set = [group]
                served.add(subnet.vpc_id)


def delete_vpc_endpoints_answer(call: AwsCall, ec2_backend: Any) -> Response:
    """DeleteVpcEndpoints as EC2 answers it: each endpoint deleting a while, its interfaces still there, then
    deleted; one that does not exist in the answer's Unsuccessful list. moto deletes at once and passes over an
    unknown id."""
    ids = [value for key, value in sorted(call.params.items()) if key.startswith("VpcEndpointId.")]
    unknown = [i for i in ids if i not in ec2_backend.vpc_end_points]
    for endpoint_id in (i for i in ids if i not in unknown):
        endpoint = ec2_backend.vpc_end_points[endpoint_id]
        if endpoint.state not in ("deleting", "deleted"):
            endpoint.state = "deleting"
            threading.Timer(ENDPOINT_DELETING_S, ec2_backend.delete_vpc_endpoints, [[endpoint_id]]).start()
    items = "".join(f"<item><error><code>InvalidVpcEndpoint.NotFound</code><message>The VpcEndpoint Id '{i}' does "
                    f"not exist</message></error><resourceId>{i}</resourceId></item>" for i in unknown)
    return xml_response(f'<DeleteVpcEndpointsResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>'
                        f"<unsuccessful>{items}</unsuccessful></DeleteVpcEndpointsResponse>")
