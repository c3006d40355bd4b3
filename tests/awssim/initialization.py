"""EBS volume initialization, which moto lacks: a volume made from a snapshot fetches each block from S3 on its
first read until it is initialized, at the rate CreateVolume asked for (VolumeInitializationRate, 100 to 300
MiB/s) or else at EBS's default rate, which AWS says fluctuates; here a slow one, so a volume nobody initialized
is still cold when a job starts. DescribeVolumeStatus reports the progress, as on AWS, and as on AWS not at once:
"it can take up to 5 minutes for the volume initialization information to be updated" (VolumeStatusItem,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_VolumeStatusItem.html); here `report_delay_s`, briefly
by default, so that every wait for initialization meets a volume with no progress reported yet."""

import os
import re
import threading
import time
import uuid
from dataclasses import dataclass

from . import backends
from .calls import AwsCall
from .errors import Response, error_response, xml_response

DEFAULT_RATE_MIBPS = 1.0
REPORT_DELAY_S = float(os.environ.get("AWSSIM_INITIALIZATION_REPORT_S", "1.0"))
RATES_MIBPS = range(100, 301)
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def created_volume(create_volume_answer: bytes) -> str:
    """The id of the volume a CreateVolume answer names."""
    return re.search(r"<volumeId>(vol-[0-9a-f]+)</volumeId>", create_volume_answer.decode())[1]


@dataclass
class Initialization:
    started: float
    size_mib: float
    rate_mibps: float | None  # None: EBS's default rate

    def progress(self, now: float) -> int:
        rate = self.rate_mibps or DEFAULT_RATE_MIBPS
        return min(100, int(100 * (now - self.started) * rate / self.size_mib))

    def xml(self, now: float) -> str:
        kind = "provisioned-rate" if self.rate_mibps else "default"
        left = max(0.0, self.size_mib / (self.rate_mibps or DEFAULT_RATE_MIBPS) - (now - self.started))
        eta = f"<estimatedTimeToCompleteInSeconds>{left:.0f}</estimatedTimeToCompleteInSeconds>" \
            if self.rate_mibps else ""
        return (f"<initializationStatusDetails><initializationType>{kind}</initializationType>"
                f"<progress>{self.progress(now)}</progress>{eta}</initializationStatusDetails>")


class Initializations:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._volumes: dict[str, Initialization] = {}
        self.report_delay_s = REPORT_DELAY_S

    def clear(self) -> None:
        with self._lock:
            self._volumes.clear()
            self.report_delay_s = REPORT_DELAY_S

    def warm(self, volume_id: str) -> bool:
        """Whether every block of the volume is on it: one not made from a snapshot needs no initialization."""
        with self._lock:
            found = self._volumes.get(volume_id)
        return found is None or found.progress(time.time()) >= 100

    @staticmethod
    def create_error(call: AwsCall) -> Response | None:
        rate = call.params.get("VolumeInitializationRate")
        if rate is None:
            return None
        if not call.params.get("SnapshotId"):
            return error_response("ec2", "InvalidParameterCombination",
                                  "VolumeInitializationRate is supported only for volumes created from snapshots.")
        if int(rate) not in RATES_MIBPS:
            return error_response("ec2", "InvalidParameterValue",
                                  f"Value ({rate}) for parameter VolumeInitializationRate is invalid: 100 to 300.")
        return None

    def record_create(self, call: AwsCall, response_body: bytes) -> None:
        if not call.params.get("SnapshotId"):
            return
        volume_id = created_volume(response_body)
        snapshot = backends.ec2(call.account, call.region).snapshots[call.params["SnapshotId"]]
        rate = call.params.get("VolumeInitializationRate")
        with self._lock:  # the blocks to fetch: the snapshot's, not the volume's own (larger) size
            self._volumes[volume_id] = Initialization(time.time(), snapshot.volume.size * 1024,
                                                      float(rate) if rate else None)

    def describe_status(self, call: AwsCall) -> Response:
        """DescribeVolumeStatus by VolumeIds (all the region's volumes without)."""
        volumes = backends.ec2(call.account, call.region).volumes
        wanted = call.list_param("VolumeId") or list(volumes)
        missing = [v for v in wanted if v not in volumes]
        if missing:
            return error_response("ec2", "InvalidVolume.NotFound", f"The volume '{missing[0]}' does not exist.")
        now, items = time.time(), []
        with self._lock:
            for volume_id in wanted:
                found = self._volumes.get(volume_id)
                items.append(f"<item><volumeId>{volume_id}</volumeId><availabilityZone>{volumes[volume_id].availability_zone}"
                             "</availabilityZone><volumeStatus><status>ok</status><details><item><name>io-enabled"
                             "</name><status>passed</status></item></details></volumeStatus>"
                             f"{found.xml(now) if found and now - found.started >= self.report_delay_s else ''}"
                             "<eventsSet/><actionsSet/></item>")
        return xml_response(f'<DescribeVolumeStatusResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>'
                            f'<volumeStatusSet>{"".join(items)}</volumeStatusSet></DescribeVolumeStatusResponse>')
