"""EC2's refusal of CreateTags and DeleteTags naming a volume, snapshot or machine that does not exist (deleted
since it was listed, say), which moto tags all the same: AWS answers the resource's NotFound, as in "An error
occurred (InvalidVolume.NotFound) when calling the CreateTags operation: The volume 'vol-077e93b8fd5da3534' does
not exist." (quoted in github.com/cloud-custodian/cloud-custodian/issues/6242)."""

from typing import Any

from . import backends
from .calls import AwsCall
from .consistency import NOT_FOUND


def tagging_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    known = {"vol": ec2_backend.volumes.keys(), "snap": ec2_backend.snapshots.keys(),
             "i": {i.id for i in backends.instances(ec2_backend)}}
    for resource_id in call.list_param("ResourceId"):
        prefix = resource_id.split("-", 1)[0]
        if prefix in known and resource_id not in known[prefix]:
            code, message = NOT_FOUND[prefix]
            return code, message.format(resource_id)
    return None
