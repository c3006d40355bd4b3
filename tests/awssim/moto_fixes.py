"""Where moto 5.2.5 answers differently from AWS in a way our backend depends on, corrected in place."""

import copy
import json
import time
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

from moto.ec2.models import EC2Backend
from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.models.instances import Instance, InstanceState, StateReason
from moto.ec2.models.route_tables import Route
from moto.ec2.models.subnets import SubnetBackend
from moto.ec2.responses.instances import InstanceResponse
from moto.efs.exceptions import FileSystemAlreadyExists
from moto.efs.models import EFSBackend
from moto.iam.exceptions import EntityAlreadyExists, InvalidInput
from moto.iam.models import SERVICE_NAME_CONVERSION, IAMBackend
from moto.ssm.models import Command

from .access import SERVICE_LINKED_ROLES


def fix_send_command_targets() -> None:
    """moto adds every instance of the region to a command sent with InstanceIds and no Targets (its empty
    tag filter matches all instances); AWS runs the command on the instances named, and only those."""
    targets_to_instances = Command._get_instance_ids_from_targets

    def named_targets_only(self: Command) -> list[str]:
        return targets_to_instances(self) if self.targets else []

    Command._get_instance_ids_from_targets = named_targets_only


def fix_default_vpc_way_out() -> None:
    """moto's default VPC has no internet gateway; AWS's has one, and a 0.0.0.0/0 route to it in its main route
    table, so a machine with a public address in a default subnet reaches out
    (https://docs.aws.amazon.com/vpc/latest/userguide/default-vpc-components.html)."""
    make_default_vpc = EC2Backend.create_default_vpc

    def with_gateway(self: EC2Backend) -> Any:
        vpc = make_default_vpc(self)
        gateway = self.create_internet_gateway()
        self.attach_internet_gateway(gateway.id, vpc.id)
        [main] = [t for t in self.route_tables.values() if t.vpc_id == vpc.id and t.main_association_id]
        self.create_route(main.id, "0.0.0.0/0", gateway_id=gateway.id)
        return vpc

    EC2Backend.create_default_vpc = with_gateway


def fix_profile_on_every_machine() -> None:
    """moto gives a launch's instance profile to its first machine only; EC2 gives it to every machine the
    request launches (each gets the role's credentials from its instance metadata)."""
    launch = InstanceResponse.run_instances

    def every_machine(self: InstanceResponse) -> Any:
        answer = launch(self)
        [first, *others] = answer.result.instances
        association = self.ec2_backend.iam_instance_profile_associations.get(first.id)
        if association is not None:
            for instance in others:
                self.ec2_backend.associate_iam_instance_profile(
                    instance_id=instance.id, iam_instance_profile_arn=association.iam_instance_profile.arn)
        return answer

    InstanceResponse.run_instances = every_machine


def fix_default_subnets_only_in_the_default_vpc() -> None:
    """moto makes the first subnet of each zone, in any VPC, the zone's default one (DefaultForAz) and maps public
    addresses on launch there. On EC2 only the default subnets of the default VPC are so, and a subnet one makes
    maps none until told to (https://docs.aws.amazon.com/vpc/latest/userguide/default-subnet.html): in an account
    without a default VPC, one made by a run is found by no lookup of the default subnet."""
    create_subnet, create_default_subnet = SubnetBackend.create_subnet, SubnetBackend.create_default_subnet

    def never_default(self: SubnetBackend, *args: Any, **kwargs: Any) -> Any:
        subnet = create_subnet(self, *args, **kwargs)
        subnet.default_for_az = subnet.map_public_ip_on_launch = False
        return subnet

    def default(self: SubnetBackend, availability_zone: str) -> Any:
        subnet = create_default_subnet(self, availability_zone)
        subnet.default_for_az = subnet.map_public_ip_on_launch = True
        return subnet

    SubnetBackend.create_subnet = never_default
    SubnetBackend.create_default_subnet = default


def fix_route_state() -> None:
    """moto calls every route active; EC2 calls a route blackhole when its target is not there, such as an
    internet gateway not attached to the route table's VPC or a NAT gateway deleted
    (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Route.html)."""

    def state(self: Route) -> str:
        gateway, nat = self.gateway, self.nat_gateway
        detached = gateway is not None and gateway.id.startswith("igw-") and (
            gateway.vpc is None or gateway.vpc.id != self.route_table.vpc_id)
        gone = nat is not None and nat.state in ("deleting", "deleted", "failed")
        return "blackhole" if detached or gone else "active"

    Route.state = property(state)


def fix_launch_interfaces() -> None:
    """A launch's network interfaces as EC2 makes them, where moto differs: moto keeps one interface per device
    index, so of an interface on each network card (all at device index 0) all but one are lost to the machine,
    and forgets each one's type (an EFA's);
    it gives a public address to a machine launched with several interfaces, which EC2 does not
    (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceNetworkInterfaceSpecification.html); and
    it keeps the primary interface a launch made when its machine terminates. On EC2 each interface the launch
    made with DeleteOnTermination goes with its machine (the primary always), and an Elastic IP on it is
    disassociated, free for another; one without stays, still in its subnet."""
    prep_nics, terminate, delete_interface = Instance.prep_nics, Instance.terminate, NetworkInterface.delete

    def one_per_card(self: Instance, nic_spec: list[dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        on_other_cards = [n for n in nic_spec if int(n.get("NetworkCardIndex", 0)) > 0]
        prep_nics(self, [n for n in nic_spec if n not in on_other_cards], *args, **kwargs)
        for spec in nic_spec:
            if spec not in on_other_cards and spec.get("InterfaceType") and int(spec["DeviceIndex"]) in self.nics:
                self.nics[int(spec["DeviceIndex"])].interface_type = spec["InterfaceType"]
        self.card_interfaces = []
        for spec in on_other_cards:
            interface = self.ec2_backend.create_network_interface(
                self.ec2_backend.get_subnet(spec["SubnetId"]), None, group_ids=spec.get("Groups") or [],
                delete_on_termination=spec.get("DeleteOnTermination") is True, device_index=int(spec["DeviceIndex"]))
            interface.instance, interface.status = self, "in-use"
            interface.interface_type = spec.get("InterfaceType", "interface")
            self.card_interfaces.append(interface)
        if len(nic_spec) > 1:
            for interface in self.nics.values():
                interface.public_ip, interface.public_ip_auto_assign = None, False

    def taking_its_interfaces(self: Instance) -> Any:
        primary = self.nics.get(0)
        if primary is not None:
            primary.delete_on_termination = True
        for interface in getattr(self, "card_interfaces", []):
            if interface.delete_on_termination:
                interface.delete()
            else:
                interface.instance, interface.status = None, "available"
        return terminate(self)

    def disassociating(self: NetworkInterface) -> None:
        for address in self.ec2_backend.addresses:
            if address.eni is self:
                address.eni = address.instance = address.association_id = None
        delete_interface(self)

    Instance.prep_nics = one_per_card
    Instance.terminate = taking_its_interfaces
    NetworkInterface.delete = disassociating


def fix_address_reassociation() -> None:
    """EC2 moves an Elastic IP already associated elsewhere to the machine or interface named, unless told not to
    (AllowReassociation false: network.associate_address_error), and the interface it leaves has no public
    address any more (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AssociateAddress.html). moto
    refuses to move it unless AllowReassociation is true, and leaves the address on the old interface too."""
    associate = EC2Backend.associate_address

    def reassociating(self: EC2Backend, instance: Any = None, eni: Any = None, address: str | None = None,
                      allocation_id: str | None = None, reassociate: bool = False) -> Any:
        before = {a.allocation_id: a.eni for a in self.addresses}
        moved = associate(self, instance, eni, address, allocation_id, True)
        left = before.get(moved.allocation_id)
        if left is not None and left is not moved.eni:
            left.public_ip = None
        return moved

    EC2Backend.associate_address = reassociating


def fix_instances_start_pending(pending_s: Callable[[], float]) -> None:
    """moto's machines run the moment they are launched; EC2's are pending first (tens of seconds), and some
    calls refuse a pending machine (an Elastic IP on its interface). Each machine is pending for `pending_s()`
    after its launch: the player starts it (`Player.tick`)."""
    make = Instance.__init__

    def pending_first(self: Instance, *args: Any, **kwargs: Any) -> None:
        make(self, *args, **kwargs)
        if self._state.name == "running":
            self._state = InstanceState("pending", 0)
            self.running_at = time.time() + pending_s()

    Instance.__init__ = pending_first


def fix_termination_takes_time(shutting_down_s: Callable[[], float]) -> None:
    """moto terminates a machine the moment it is told to; EC2's shuts down first (for minutes, on a big machine),
    and its volumes stay attached until it is terminated: another machine cannot have them meanwhile, nor can they
    be detached (attach.detach_volume_error)
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-lifecycle.html). Each machine is shutting-down
    for `shutting_down_s()`; the player then terminates it (`Instance.finish_termination`). Terminating a machine
    that is on its way already changes nothing, as on EC2."""
    terminate = Instance.terminate  # moto's, as fixed above: interfaces and volumes go, the machine is terminated

    def shutting_down_first(self: Instance, reason: StateReason | None = None) -> InstanceState:
        """`reason`: EC2's, where EC2 ended it (a spot interruption), set with the state, as a describe sees them."""
        previous = copy.copy(self._state)
        if self._state.name not in ("shutting-down", "terminated"):
            self.state_reason = reason or StateReason("Client.UserInitiatedShutdown: User initiated shutdown",
                                                      "Client.UserInitiatedShutdown")
            self.terminated_at = time.time() + shutting_down_s()
            self._state = InstanceState("shutting-down", 32)
            # EC2's StateTransitionReason names the time of the call in GMT (moto writes UTC, when it terminates)
            self._reason = f"User initiated ({datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} GMT)"
        return previous

    def finish_termination(self: Instance) -> None:
        # the shutdown's reasons (a spot interruption's), which moto would overwrite
        reason, transition = self.state_reason, self._reason
        try:
            terminate(self)
        finally:  # terminated even if moto failed on the way (its server log says how): never tried again
            self._state, self.state_reason, self._reason = InstanceState("terminated", 48), reason, transition

    Instance.terminate = shutting_down_first
    Instance.finish_termination = finish_termination


def fix_file_system_already_exists() -> None:
    """EFS answers a CreateFileSystem whose creation token made a file system already with FileSystemAlreadyExists
    carrying that file system's id, so that a caller whose first answer was lost learns which it made
    (https://docs.aws.amazon.com/efs/latest/ug/API_CreateFileSystem.html); moto's answer names no id."""
    create = EFSBackend.create_file_system

    def naming_the_one_made(self: EFSBackend, creation_token: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return create(self, creation_token, *args, **kwargs)
        except FileSystemAlreadyExists as exc:
            made = next(fs for fs in self.file_systems_by_id.values() if fs.creation_token == creation_token)
            exc.description = json.dumps({**json.loads(exc.description), "FileSystemId": made.file_system_id})
            raise

    EFSBackend.create_file_system = naming_the_one_made


def fix_managed_policies_in_aws_partition_only() -> None:
    """moto loads AWS's 1,500-odd managed policies into the IAM of each of its six partitions, and makes them
    again at every reset and at the first call after it: a third of the simulator's CPU through the suite (py-spy
    of both simulators through a whole run). Every region the simulator answers for is in the aws partition, so
    only its IAM gets them; GovCloud's and China's are never asked."""
    load = IAMBackend._init_aws_policies

    def in_aws_partition_only(self: IAMBackend) -> list[Any]:
        return load(self) if self.partition == "aws" else []

    IAMBackend._init_aws_policies = in_aws_partition_only


def fix_service_linked_roles() -> None:
    """moto names spot.amazonaws.com's service-linked role AWSServiceRoleForspot (elasticfilesystem's
    AWSServiceRoleForelasticfilesystem), and answers a second CreateServiceLinkedRole with EntityAlreadyExists; AWS
    names them AWSServiceRoleForEC2Spot and AWSServiceRoleForAmazonElasticFileSystem
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html,
    https://docs.aws.amazon.com/efs/latest/ug/using-service-linked-roles.html) and answers InvalidInput, "Service
    role name AWSServiceRoleForEC2Spot has been taken in this account, please try a different suffix."
    (https://docs.aws.amazon.com/batch/latest/userguide/spot-fleet-roles-cli.html)."""
    for service, role in SERVICE_LINKED_ROLES.items():
        SERVICE_NAME_CONVERSION[service.split(".")[0]] = role.removeprefix("AWSServiceRoleFor")
    create = IAMBackend.create_service_linked_role

    def taken_is_invalid_input(self: IAMBackend, service_name: str, description: str, suffix: str) -> Any:
        try:
            return create(self, service_name, description, suffix)
        except EntityAlreadyExists:
            name = next(r.name for r in self.roles.values() if r.path == f"/aws-service-role/{service_name}/")
            raise InvalidInput(f"Service role name {name} has been taken in this account, please try a different "
                               "suffix.") from None

    IAMBackend.create_service_linked_role = taken_is_invalid_input


def fix_snapshots_take_time(pending_s: Callable[[], float]) -> None:
    """moto's snapshots are completed the moment they are made; EBS's are pending until every block is copied to
    S3 ("Snapshot creation is asynchronous; the snapshot remains in the pending state until [it] is complete",
    which takes hours for a big volume: https://docs.aws.amazon.com/ebs/latest/userguide/ebs-creating-snapshot.html).
    Each snapshot is pending for `pending_s()` after it is made."""
    Snapshot.status = property(lambda self: "pending" if time.time() < getattr(self, "completes_at", 0.0)
                               else self._status, lambda self, value: setattr(self, "_status", value))
    create = EBSBackend.create_snapshot

    def create_pending(self: Any, *args: Any, **kwargs: Any) -> Any:
        snapshot = create(self, *args, **kwargs)
        snapshot.completes_at = time.time() + pending_s()
        return snapshot

    EBSBackend.create_snapshot = create_pending


def fix_reboots_reach_the_machine() -> None:
    """moto's reboot sets any machine running, a stopped or terminated one too; EC2 reboots a running machine (its
    OS restarts: processes, /run and the mounts not in /etc/fstab are gone; its disks stay attached) and ignores
    the others ("Requests to reboot terminated instances are ignored": API_RebootInstances). Each reboot is
    counted on the machine, for the player (`Player.tick`)."""

    def rebooting(self: Instance) -> None:
        if self._state.name == "running":
            self.reboots = getattr(self, "reboots", 0) + 1

    Instance.reboot = rebooting


def fix_status_checks_can_fail() -> None:
    """moto's status checks always pass; EC2's fail on a machine whose hardware fails (the system check) or whose
    OS stops answering (the instance check), which stays running all the same: a machine the simulator impairs
    (`Player.impair`) has that check impaired, its reachability failed since the failure began
    (API_InstanceStatusSummary, API_InstanceStatusDetails)."""
    for check, attribute in (("system", "system_status"), ("instance", "instance_status")):
        passing = getattr(Instance, attribute)

        def status(self: Instance, check: str = check, passing: Any = passing) -> dict[str, Any]:
            failed, since = getattr(self, "impaired", (None, None))
            if self.state_code == 16 and failed == check:
                return {"Details": [{"Name": "reachability", "Status": "failed", "ImpairedSince": since}],
                        "Status": "impaired"}
            return passing.fget(self)

        setattr(Instance, attribute, property(status))
