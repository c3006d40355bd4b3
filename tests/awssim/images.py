"""Machine images beside moto's: the x86_64 Deep Learning Base OSS Nvidia Driver GPU AMIs, Ubuntu 22.04 and
24.04, with the facts a first boot depends on, and the public SSM parameters that name them.

The Python facts are from AWS's release notes of the DLAMIs (python_location: /usr/bin/python3.10 on 22.04, e.g.
https://docs.aws.amazon.com/dlami/latest/devguide/aws-deep-learning-ami-gpubasesinglecuda-ul2204-2026-01-02.html,
/usr/bin/python3.12 on 24.04) and Ubuntu's archive (jammy-updates/universe has python3.11, python3.11-venv and
python3.11-dev, 3.11.0~rc1-1~22.04.1; noble has no python3.11), and the deadsnakes PPA's for each release (3.11's
final releases: 3.11.15 in 2026, as intel/intel-xpu-backend-for-triton#6607 installed on Ubuntu 22.04, which apt
prefers to the archive's release candidate). Packages the notes do not list, such as
nfs-common and the Pythons' C headers (python3.X-dev), are taken to be absent: a script that needs one installs
it. Their EFA software (libfabric under /opt/amazon/efa, AWS's OFI NCCL plugin) is installed, off the library
path."""

from dataclasses import dataclass, field

from moto.core.utils import utcnow
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ssm.models import ParameterDict, Parameter

PARAMETER_PREFIX = "/aws/service/deeplearning/ami/x86_64/"
# The DLAMIs' OFI NCCL plugin (their notes list ofi_nccl_version, not where): /opt/amazon/ofi-nccl/lib in older
# EFA installers, this multiarch folder in newer ones (SageMaker HyperPod's EFA checks list libnccl-net.so there).
OFI_NCCL = "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu"


@dataclass(frozen=True)
class ImageFacts:
    image_id: str
    name: str
    parameter: str  # the public SSM parameter whose value is this image's id
    python3: str  # /usr/bin/python3's version
    installed: frozenset[str]  # Debian packages a script may use as they are
    archive: dict[str, str]  # what `apt-get install` finds: package -> version (a Python's for an interpreter)
    ofi_nccl: str | None = None  # the folder of AWS's OFI NCCL plugin (libnccl-net.so), off the library path
    deadsnakes: dict[str, str] = field(default_factory=dict)  # what the deadsnakes PPA adds for the release


DEADSNAKES_311 = {"python3.11": "3.11.15", "python3.11-venv": "3.11.15", "python3.11-dev": "3.11.15"}


UBUNTU_2204 = ImageFacts(
    "ami-0d1a2204ba5e00001", "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261120",
    PARAMETER_PREFIX + "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id", "3.10.12",
    frozenset({"python3", "python3.10", "awscli", "cloud-init"}),
    {"python3.11": "3.11.0rc1", "python3.11-venv": "3.11.0rc1", "python3.11-dev": "3.11.0rc1",
     "python3.10-venv": "3.10.12", "python3.10-dev": "3.10.12", "python3-venv": "3.10.12",
     "nfs-common": "1:2.6.1-1ubuntu1.2"}, OFI_NCCL, DEADSNAKES_311)
UBUNTU_2404 = ImageFacts(
    "ami-0d1a2404ba5e00001", "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20261120",
    PARAMETER_PREFIX + "base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id", "3.12.3",
    frozenset({"python3", "python3.12", "awscli", "cloud-init"}),
    {"python3.12-venv": "3.12.3", "python3.12-dev": "3.12.3", "python3-venv": "3.12.3",
     "nfs-common": "1:2.6.4-3ubuntu5.1"}, OFI_NCCL, DEADSNAKES_311)
IMAGES = {image.image_id: image for image in (UBUNTU_2204, UBUNTU_2404)}
# SSM's agent on Ubuntu's images (these and Canonical's own) is a snap, so its systemd unit is the snap's
# (https://docs.aws.amazon.com/systems-manager/latest/userguide/agent-install-ubuntu-64-snap.html); the deb's and
# rpm's unit, amazon-ssm-agent.service, is not there.
SSM_AGENT_UNIT = "snap.amazon-ssm-agent.amazon-ssm-agent.service"
# Canonical's plain Ubuntu 22.04 server image: one whose insides nobody describes here (no facts, no EFA software).
UNDESCRIBED = "ami-0c1a2204ca5e00001"
AMAZON, CANONICAL = "898082745236", "099720109477"  # the images' owners' accounts
LISTED = {**{image.image_id: (AMAZON, image.name) for image in IMAGES.values()},  # image id -> (owner, name)
          UNDESCRIBED: (CANONICAL, "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20261120")}


def facts(image_id: str) -> ImageFacts | None:
    """None for an image whose insides nobody describes."""
    return IMAGES.get(image_id)


def add_images() -> None:
    """The images to every region's EC2 as moto makes the region's backend (server.py turns moto's own catalogue
    off: some 1,300 images a region, a second of CPU each time a cleanup looks in 17 regions after a reset, and
    nothing here asks for them) and their parameters to every region's SSM. Idempotent."""
    load_images = AmiBackend._load_amis
    if not getattr(load_images, "adds_images", False):
        def with_images(self: AmiBackend) -> None:
            load_images(self)
            for image_id, (owner, name) in LISTED.items():
                self.amis[image_id] = Ami(
                    self, image_id, name=name, description=name, owner_id=owner,
                    owner_alias="amazon" if owner == AMAZON else None, public=True, virtualization_type="hvm",
                    architecture="x86_64", image_location=f"{owner}/{name}", hypervisor="xen", root_device_type="ebs")

        with_images.adds_images = True  # type: ignore[attr-defined]
        AmiBackend._load_amis = with_images
    load = ParameterDict._check_loading_status
    if getattr(load, "adds_images", False):
        return

    def with_images(self: ParameterDict, key: str) -> None:
        load(self, key)
        for image in IMAGES.values():
            if str(key or "").startswith(PARAMETER_PREFIX) and not dict.get(self, image.parameter):
                dict.__setitem__(self, image.parameter, [Parameter(
                    account_id=self.account_id, name=image.parameter, value=image.image_id, parameter_type="String",
                    description=None, allowed_pattern=None, keyid=None, last_modified_date=utcnow(), version=1,
                    data_type="aws:ec2:image")])

    with_images.adds_images = True  # type: ignore[attr-defined]
    ParameterDict._check_loading_status = with_images
