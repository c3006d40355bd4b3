"""EC2's refusals of AttachVolume, which moto attaches whatever it is given: the volume must be available (made,
not attached to a machine), in the instance's zone, and the instance running or stopped
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AttachVolume.html; the answers' wording as AWS gives
it, quoted in github.com/cloudfoundry/bosh-init/issues/20 and gist.github.com/arubis/d7e4fd88155bf7161bd7); and of
DetachVolume from a machine shutting down (quoted in github.com/hashicorp/terraform/issues/18965)."""

from typing import Any

from . import backends, volume_states
from .calls import AwsCall

ATTACHABLE_STATES = ("running", "stopped")


def attach_volume_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    volume = ec2_backend.volumes.get(call.params.get("VolumeId", ""))
    instance_id = call.params.get("InstanceId", "")
    instance = next((i for i in backends.instances(ec2_backend) if i.id == instance_id), None)
    if volume is None or instance is None:
        return None  # moto's own NotFound answers
    if volume.attachment is not None:
        return "VolumeInUse", f"{volume.id} is already attached to an instance"
    if volume_states.creating(volume):
        return "IncorrectState", f"{volume.id} is not 'available'."
    if volume.zone.name != instance.placement.zone:
        return "InvalidVolume.ZoneMismatch", (f"The volume '{volume.id}' is not in the same availability zone as "
                                              f"instance '{instance.id}'")
    if instance.state not in ATTACHABLE_STATES:
        return "IncorrectInstanceState", f"Instance '{instance.id}' is not 'running'."
    return None


def detach_volume_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    volume = ec2_backend.volumes.get(call.params.get("VolumeId", ""))
    if volume is None or volume.attachment is None or volume.attachment.instance.state != "shutting-down":
        return None
    return "IncorrectInstanceState", (f"Unable to detach volume '{volume.id}' from instance "
                                      f"'{volume.attachment.instance.id}'. The instance is not in a state in which "
                                      "volumes can be detached.")
