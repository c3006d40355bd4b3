"""EC2's refusals of tags that moto takes: CreateTags and DeleteTags naming a volume, snapshot or machine that does
not exist (deleted since it was listed, say), which AWS answers with the resource's NotFound, as in "An error
occurred (InvalidVolume.NotFound) when calling the CreateTags operation: The volume 'vol-077e93b8fd5da3534' does
not exist." (quoted in github.com/cloud-custodian/cloud-custodian/issues/6242); and a tag, given to CreateTags or
to a creation's TagSpecifications, whose key is over 128 characters or value over 256
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions), which AWS answers "Tag
value exceeds the maximum length of 256 characters" (github.com/iriusrisk/GoCD-EC2-Elastic-Agent-Plugin/issues/24).
"""

import re
from typing import Any

from . import backends
from .calls import AwsCall
from .consistency import NOT_FOUND


TAG_PARAMETER = re.compile(r"^(?:TagSpecification\.\d+\.)?Tag\.\d+\.(Key|Value)$")
MAXIMUM_LENGTH = {"Key": 128, "Value": 256}


def tag_length_error(call: AwsCall) -> tuple[str, str] | None:
    for name, value in call.params.items():
        if (part := TAG_PARAMETER.match(name)) and len(value) > MAXIMUM_LENGTH[part[1]]:
            return ("InvalidParameterValue",
                    f"Tag {part[1].lower()} exceeds the maximum length of {MAXIMUM_LENGTH[part[1]]} characters")
    return None


def tagging_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    known = {"vol": ec2_backend.volumes.keys(), "snap": ec2_backend.snapshots.keys(),
             "i": {i.id for i in backends.instances(ec2_backend)}}
    for resource_id in call.list_param("ResourceId"):
        prefix = resource_id.split("-", 1)[0]
        if prefix in known and resource_id not in known[prefix]:
            code, message = NOT_FOUND[prefix]
            return code, message.format(resource_id)
    return None
