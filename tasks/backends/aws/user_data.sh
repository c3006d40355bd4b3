#!/bin/bash
# imagenet18 machines of run ${run_id}: runs once at first boot (cloud-init), the same script on each machine
# of one launch request.
set -euxo pipefail

# The run's max hours: the machine powers off, and with InstanceInitiatedShutdownBehavior=terminate that
# terminates it, even if the orchestrator that started it is gone.
shutdown -h +${shutdown_minutes} "imagenet18: the run's max_hours is over"

# This machine's place in its launch request (IMDSv2), which picks its dataset volume from the request's list.
token=$$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
launch_index=$$(curl -sf -H "X-aws-ec2-metadata-token: $$token" http://169.254.169.254/latest/meta-data/ami-launch-index)
set -- ${volume_serials}
shift "$$launch_index"
# The dataset volume, found by its id (NVMe names do not follow the attach order).
device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$$1
for _ in $$(seq 1 180); do [ -e "$$device" ] && break; sleep 5; done
${format_volume}
mkdir -p /mnt/data /mnt/efs
mount ${mount_options} "$$device" /mnt/data
${mount_efs}

# The project, from the run's s3:// prefix, in a venv that sees the AMI's CUDA libraries.
mkdir -p /opt/imagenet18
aws s3 cp "${code_url}" - | tar -xz -C /opt/imagenet18
python3 -m venv /opt/imagenet18/.venv
/opt/imagenet18/.venv/bin/pip install --quiet /opt/imagenet18
