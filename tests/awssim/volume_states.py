"""A new EBS volume's `creating` state, which moto skips: CreateVolume answers `creating` and the volume stays so
for a moment ("The volume state must be available before you can attach it": the EBS user guide, "Create an
Amazon EBS volume"), `volume_creating_s` here; one EBS cannot encrypt stays so until it goes (encryption.py).
While it is creating, EC2 refuses to delete it or to attach it: DeleteVolume needs it available
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteVolume.html), as does AttachVolume (attach.py)."""

import time
from collections.abc import Callable
from typing import Any

from moto.ec2.models.elastic_block_store import EBSBackend, Volume

from .calls import AwsCall


def fix_volumes_take_time(creating_s: Callable[[], float]) -> None:
    """Each new volume is `creating` for `creating_s()` after it is made, or while marked `creating`."""
    status = Volume.status
    Volume.status = property(lambda self: "creating" if creating(self) else status.fget(self))
    create = EBSBackend.create_volume

    def create_in_time(self: Any, *args: Any, **kwargs: Any) -> Any:
        volume = create(self, *args, **kwargs)
        volume.created_by = time.time() + creating_s()
        return volume

    EBSBackend.create_volume = create_in_time


def creating(volume: Any) -> bool:
    """A machine's own disks, made with it, are attached (in-use) from the start."""
    return volume.attachment is None and (getattr(volume, "creating", False)
                                          or time.time() < getattr(volume, "created_by", 0.0))


def delete_volume_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    volume = ec2_backend.volumes.get(call.params.get("VolumeId", ""))
    if volume is None or not creating(volume):
        return None  # moto's own answers: NotFound, VolumeInUse
    return "IncorrectState", f"The volume '{volume.id}' is 'creating'"
