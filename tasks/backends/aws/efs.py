"""The run's shared file system (the seed's EFS): encrypted, one mount target in the run's subnet, reachable
only from the run's security group. Found by the run's tag before it is created."""

from __future__ import annotations

import botocore.exceptions

from tasks.backends.aws import tags
from tasks.backends.aws.clients import Clients, error_code
from tasks.backends.aws.waiting import until
from tasks.backends.base import ClusterSpec


def ensure_file_system(clients: Clients, spec: ClusterSpec) -> str:
    """The run's file system, available; it needs no network, so it is made while the network is."""
    efs = clients.client("efs")
    found = _find(efs, spec.run_id)
    fs_id = found[0]["FileSystemId"] if found else _create(efs, spec)
    until(f"EFS {fs_id}", lambda: _state(efs, fs_id) == "available")
    return fs_id


def _create(efs, spec: ClusterSpec) -> str:
    """A call whose answer was lost (a 5xx, a dropped connection) is retried by botocore with the same creation
    token; EFS answers the retry with FileSystemAlreadyExists and the id of the file system the first one made."""
    try:
        return efs.create_file_system(
            CreationToken=spec.run_id, PerformanceMode="generalPurpose", ThroughputMode="elastic", Encrypted=True,
            Tags=tags.tag_list(spec.run_id, spec.expires_at, f"imagenet18-{spec.run_id}"))["FileSystemId"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) != "FileSystemAlreadyExists":
            raise
        return exc.response["FileSystemId"]


def ensure_mount_target(clients: Clients, fs_id: str, subnet_id: str, security_group_id: str) -> None:
    """A mount target in the subnet, and every target of the file system available."""
    efs = clients.client("efs")
    targets = efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
    if not any(t["SubnetId"] == subnet_id for t in targets):
        efs.create_mount_target(FileSystemId=fs_id, SubnetId=subnet_id, SecurityGroups=[security_group_id])
    until(f"EFS {fs_id} mount target", lambda: all(
        t["LifeCycleState"] == "available" for t in efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]))


def file_systems(clients: Clients, run_id: str | None) -> list[dict]:
    return _find(clients.client("efs"), run_id)


def _find(efs, run_id: str | None) -> list[dict]:
    found = []
    for page in efs.get_paginator("describe_file_systems").paginate():
        for system in page["FileSystems"]:
            system_tags = tags.as_dict(system.get("Tags"))
            if tags.RUN in system_tags and run_id in (None, system_tags[tags.RUN]):
                found.append(system)
    return found


def _state(efs, fs_id: str) -> str:
    return efs.describe_file_systems(FileSystemId=fs_id)["FileSystems"][0]["LifeCycleState"]


def delete_file_system(clients: Clients, fs_id: str) -> None:
    """Mount targets first (EFS refuses otherwise), then the file system; waits until both are gone. A target
    another teardown deleted since the listing (the cleanup flow's, say) is passed over."""
    efs = clients.client("efs")
    for target in efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]:
        if target["LifeCycleState"] in ("deleting", "deleted"):
            continue
        try:
            efs.delete_mount_target(MountTargetId=target["MountTargetId"])
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "MountTargetNotFound":
                raise
    until(f"EFS {fs_id} mount targets deleted",
          lambda: not efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"])
    efs.delete_file_system(FileSystemId=fs_id)
    until(f"EFS {fs_id} deleted", lambda: fs_id not in {s["FileSystemId"] for s in _find(efs, None)})
