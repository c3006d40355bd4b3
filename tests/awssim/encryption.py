"""The KMS key that encrypts EBS volumes, which moto never uses. EBS uses it after answering ("Amazon Web Services
authenticates the KMS key asynchronously. Therefore, if you specify an identifier that is not valid, the action can
appear to complete, but eventually fails": CreateVolume's KmsKeyId, API reference; EBS's createVolume event then
says `failed`, with the key's state as its cause). With the key made unusable (`AwsSim.set_ebs_key_usable(False)`:
disabled, pending deletion, or one these credentials may not use), an encrypted volume's CreateVolume is answered,
the volume is described `creating`, and VANISH_S later EC2 knows it no more; it was never available."""

import threading
import time

from moto.ec2.models.elastic_block_store import Volume

from . import backends
from .calls import AwsCall
from .initialization import created_volume

VANISH_S = 1.0


def fix_volumes_creating() -> None:
    """A volume marked `creating` is described so (moto's are available at once)."""
    status = Volume.status

    Volume.status = property(lambda self: "creating" if getattr(self, "creating", False) else status.fget(self))


class Encryption:
    def __init__(self) -> None:
        self.usable = True
        self._lock = threading.Lock()
        self._doomed: dict[str, tuple[str, str, float]] = {}  # volume id -> (account, region, when it goes)

    def reset(self) -> None:
        with self._lock:
            self.usable = True
            self._doomed.clear()

    def record_create(self, call: AwsCall, response_body: bytes) -> None:
        volume_id = created_volume(response_body)
        volume = backends.ec2(call.account, call.region).volumes[volume_id]
        if self.usable or not volume.encrypted:
            return
        volume.creating = True
        with self._lock:
            self._doomed[volume_id] = (call.account, call.region, time.time() + VANISH_S)

    def vanish(self) -> None:
        """EBS deletes the doomed volumes whose time has come."""
        now = time.time()
        with self._lock:
            gone = [(volume_id, where) for volume_id, where in self._doomed.items() if where[2] <= now]
            for volume_id, _ in gone:
                del self._doomed[volume_id]
        for volume_id, (account, region, _) in gone:
            ec2 = backends.ec2(account, region)
            ec2.volumes.pop(volume_id, None)
            ec2.tags.pop(volume_id, None)
