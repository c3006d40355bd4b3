"""Delete everything a run's tag shows, in dependency order, waiting for each step, then verify nothing is
left. Every step tolerates "already gone", so teardown is safe to repeat and to run from several places."""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.backends.aws import addresses, consistency, efs, iam, inventory, machines, secrets, volumes
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.network import key_path
from tasks.backends.aws.waiting import until
from tasks.backends.base import BackendError, Resource

log = logging.getLogger(__name__)
PASSES = 3
GONE = ("InvalidInstanceID.NotFound", "InvalidVolume.NotFound", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
        "InvalidPlacementGroup.Unknown", "InvalidRouteTableID.NotFound", "InvalidSubnetID.NotFound",
        "InvalidInternetGatewayID.NotFound", "InvalidVpcID.NotFound", "FileSystemNotFound",
        "InvalidSpotInstanceRequestID.NotFound", "ParameterNotFound", "InvalidSnapshot.NotFound")
# Deletions AWS refuses for a while after what they depend on went (ENIs of EFS mount targets, say).
STILL_IN_USE = ("DependencyViolation", "InvalidPlacementGroup.InUse", "VolumeInUse", "FileSystemInUse",
                "InvalidIPAddress.InUse")


def teardown(clients: Clients, run_id: str, key_folder: Path) -> list[Resource]:
    """A kind that fails to go does not keep the others: what does not need it gone is still deleted (the replicas
    when an address is refused, say), then its error is raised."""
    removed: list[Resource] = []
    left = inventory.find(clients, run_id)
    # More passes only when something new appeared meanwhile (a provisioning step still running elsewhere).
    for _ in range(PASSES):
        if not left:
            break
        failed: dict[str, Exception] = {}
        for kind in inventory.TEARDOWN_ORDER:
            if kind == inventory.GUARDDUTY_KINDS[0] and "machine" not in failed:  # nothing brings more now
                left = inventory.with_guardduty_now(clients, left)
            batch = [r for r in left if r.kind == kind]
            if not batch:
                continue
            if blocking := inventory.NEEDS_GONE.get(kind, set()) & set(failed):
                log.warning("run %s: %s not deleted, as the %s could not be", run_id, kind, " and ".join(blocking))
                failed[kind] = failed[min(blocking)]
                continue
            try:
                _delete(clients, kind, batch)
            except Exception as exc:  # noqa: BLE001 - raised once the rest is deleted
                log.warning("run %s: could not delete its %s (%s); deleting the rest", run_id, kind, exc)
                failed[kind] = exc
            else:
                removed += batch
        if failed:
            refusal = next(iter(failed.values()))
            raise BackendError(f"teardown of run {run_id} could not delete its {', '.join(failed)} ({refusal}); run "
                               "`imagenet18 cleanup` again once that is mended") from refusal
        left = inventory.find(clients, run_id)
    key_path(key_folder, run_id).unlink(missing_ok=True)
    if left:
        raise BackendError(f"teardown of run {run_id} left {', '.join(f'{r.kind} {r.id}' for r in left)}; "
                           "run `imagenet18 cleanup` again")
    if clients.journals is not None:
        consistency.settled(clients.journals, run_id)
    log.info("run %s: removed %d resource(s) in %s", run_id, len(removed), clients.region)
    return removed


def _delete(clients: Clients, kind: str, batch: list[Resource]) -> None:
    ec2 = clients.ec2
    ids = [r.id for r in batch]
    if kind == "machine":
        _tolerate(lambda: ec2.terminate_instances(InstanceIds=ids))
        machines.wait_terminated(clients, ids)
    elif kind == "spot-request":
        _tolerate(lambda: ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=ids))
    elif kind in ("replica", "volume"):
        for volume in batch:
            if "pool_index" in volume.details:  # claimed from a pool: given back, not deleted
                _tolerate(lambda v=volume: volumes.give_back(clients, v))
            else:
                until(f"volume {volume.id} deleted",
                      lambda v=volume.id: _tolerate(lambda: volumes.delete(clients, [v])))
    elif kind == "snapshot":  # one a snapshot build made, and did not hand on
        for snapshot_id in ids:
            _tolerate(lambda s=snapshot_id: ec2.delete_snapshot(SnapshotId=s))
    elif kind == "file-system":
        for fs_id in ids:
            _tolerate(lambda f=fs_id: efs.delete_file_system(clients, f))
    elif kind == "instance-profile":
        for resource in batch:
            iam.delete_instance_profile(clients, resource.run_id)
    elif kind == "parameter":
        secrets.delete(clients, ids)
    elif kind == "vpc-endpoint":  # GuardDuty's, in the run's VPC (inventory.GUARDDUTY_TAG)
        _delete_endpoints(ec2, ids)
    elif kind == "address":  # free once its machine's interface has gone with the machine
        for address_id in ids:
            until(f"address {address_id} released", lambda a=address_id: _tolerate(
                lambda: addresses.release(clients, a)))
    else:
        for resource in batch:
            until(f"{kind} {resource.id} deleted", lambda r=resource: _tolerate(lambda: _delete_network(ec2, r)))


def _delete_endpoints(ec2, ids: list[str]) -> None:
    """DeleteVpcEndpoints answers what it could not delete in its Unsuccessful list, not with an error. Their
    interfaces go a while later: the subnet's and the security group's deletions wait for that."""
    unsuccessful = ec2.delete_vpc_endpoints(VpcEndpointIds=ids).get("Unsuccessful", [])
    refused = [f"{item['ResourceId']}: {item['Error']['Code']} ({item['Error']['Message']})" for item in unsuccessful
               if not item["Error"]["Code"].endswith(".NotFound")]
    if refused:
        raise BackendError(f"EC2 did not delete GuardDuty's VPC endpoint: {'; '.join(refused)}")


def _delete_network(ec2, resource: Resource) -> None:
    raw = resource.details.get("raw", {})
    if resource.kind == "placement-group":
        ec2.delete_placement_group(GroupName=resource.id)
    elif resource.kind in ("security-group", "guardduty-group"):
        ec2.delete_security_group(GroupId=resource.id)
    elif resource.kind == "key-pair":
        ec2.delete_key_pair(KeyName=resource.id)
    elif resource.kind == "route-table":
        for association in raw.get("Associations", []):
            if not association.get("Main"):
                _tolerate(lambda a=association: ec2.disassociate_route_table(
                    AssociationId=a["RouteTableAssociationId"]))
        ec2.delete_route_table(RouteTableId=resource.id)
    elif resource.kind == "subnet":
        ec2.delete_subnet(SubnetId=resource.id)
    elif resource.kind == "internet-gateway":
        for attachment in raw.get("Attachments", []):
            _tolerate(lambda a=attachment: ec2.detach_internet_gateway(InternetGatewayId=resource.id,
                                                                        VpcId=a["VpcId"]))
        ec2.delete_internet_gateway(InternetGatewayId=resource.id)
    elif resource.kind == "vpc":
        ec2.delete_vpc(VpcId=resource.id)
    else:
        raise ValueError(f"no deletion for {resource.kind}")


def _tolerate(call) -> bool:
    """True when the call succeeded or its target is already gone; False when AWS says "still in use" (the
    caller waits and tries again); any other error is raised."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001
        code = error_code(exc)
        if code in GONE or code.endswith(".NotFound"):
            return True
        if code in STILL_IN_USE:
            return False
        raise
    return True
