#!/bin/bash
# imagenet18 machines of run ${run_id}: runs once at first boot (cloud-init), the same script on each machine
# of one launch request.
set -euxo pipefail

# The run's max hours: the machine powers off, and with InstanceInitiatedShutdownBehavior=terminate that
# terminates it, even if the orchestrator that started it is gone. A reboot (EC2's maintenance, its automatic
# recovery) runs this script no more and forgets the shutdown (held in /run): at each later boot, cloud-init's
# per-boot script arms it again for what is left of the run's time, or powers off at once; without a deadline it
# can read, for the run's whole time again.
shutdown -h +${shutdown_minutes} "imagenet18: the run's max_hours is over"
mkdir -p /var/lib/imagenet18 /var/lib/cloud/scripts/per-boot
echo $$(( $$(date +%s) + ${shutdown_minutes} * 60 )) >/var/lib/imagenet18/deadline
cat >/var/lib/cloud/scripts/per-boot/imagenet18-deadline <<'DEADLINE'
#!/bin/sh
deadline=$$(cat /var/lib/imagenet18/deadline 2>/dev/null)
case "$$deadline" in
  '' | *[!0-9]*) left=${shutdown_minutes} ;;
  *) left=$$(( (deadline - $$(date +%s) + 59) / 60 )) ;;
esac
if [ "$$left" -gt 0 ]; then
  shutdown -h "+$$left" "imagenet18: the run's max_hours is over"
else
  shutdown -h now "imagenet18: the run's max_hours is over"
fi
DEADLINE
chmod 755 /var/lib/cloud/scripts/per-boot/imagenet18-deadline

# The way out: a machine with an interface on each network card gets its public address (an Elastic IP) once it
# runs, which may be after this script starts.
for _ in $$(seq 1 60); do curl -sfI -o /dev/null --max-time 5 https://pypi.org/ && break; sleep 5; done
# SSM's agent pings SSM as it starts with the machine; when that ping (4 tries, minutes without a way out) fails,
# the agent hibernates and pings again only 5 minutes later, then less and less often (amazon-ssm-agent 3.3's
# hibernation), while the run waits for it. Restarted, it pings at once; a hibernating agent has taken no command,
# so none is cut. Its last try may end after the way out came, so its log is watched a while, beside the boot. A
# line of this boot only: the image may keep its builder's log. On Ubuntu the agent is a snap.
restart_hibernating_agent() {
  set +x
  local log=$${1:-/var/log/amazon/ssm/amazon-ssm-agent.log} booted
  booted=$$(uptime -s)
  for _ in $$(seq 1 36); do
    if [ -f "$$log" ] && awk -v booted="$$booted" \
        '$$1 " " $$2 >= booted && /Entering SSM Agent hibernate/ {found = 1} END {exit !found}' "$$log"; then
      echo "SSM's agent hibernated: restarting it"
      systemctl restart --no-block snap.amazon-ssm-agent.amazon-ssm-agent.service \
        || systemctl restart --no-block amazon-ssm-agent.service || echo "SSM's agent could not be restarted" >&2
      return
    fi
    sleep 5
  done
}
restart_hibernating_agent </dev/null >>/var/log/imagenet18-ssm-agent.log 2>&1 &  # not holding the boot's output

# `retrying TRIES WORDS COMMAND...` asks COMMAND again every 10 s, TRIES times at most, while it fails with
# WORDS (an extended regular expression; "" for any failure) in its output; any other failure stops the boot at
# once. Either way the command's own words are the last lines of the boot's log (which a job's failure quotes).
retrying() {
  local - tries=$$1 words=$$2 output status
  shift 2
  set +x
  for _ in $$(seq 2 "$$tries"); do
    status=0
    output=$$("$$@" 2>&1) || status=$$?
    echo "$$output"
    [ "$$status" -ne 0 ] || return 0
    grep -Eq "$$words" <<<"$$output" || return "$$status"
    sleep 10
  done
  "$$@"
}
# The Python the lock is for (the Deep Learning Base AMI's python3 is 3.10 on Ubuntu 22.04, which the project's
# Requires-Python excludes), its venv module (Ubuntu ships ensurepip apart), its C headers (torch.compile's Triton
# builds its GPU launchers against Python.h) and the NFS client for EFS. Ubuntu 22.04's own python3.11 is
# 3.11.0rc1, a release candidate on which Triton segfaults as it compiles (intel/intel-xpu-backend-for-triton#6607):
# 3.11's final releases come from the deadsnakes PPA, whose signing key is fetched by its fingerprint and kept only
# if it is that key alone (apt then checks the PPA's packages with it). apt-get update only warns where a source
# fails, and apt would then install the release candidate: the PPA's lists are fetched again on their own, told
# to fail where they do not come (--error-on=any), and asked again; not the image's other sources (NVIDIA's, say),
# whose warnings would then stop every boot. At
# first boot the image's own apt jobs may hold apt's locks a while (apt-daily's timer is Persistent). apt-get waits
# for dpkg's (DPkg::Lock::Timeout), but `update` fails at once on the package lists' (/var/lib/apt/lists/lock), as
# other boot scripts' users found. A mirror's hiccup (a file caught mid-sync: "Hash Sum mismatch"; a name not
# resolved for a moment) fails an install's download, which the machines of a run, each installing, meet now and
# then. An apt-get that fails either way is asked again every 10 s, 60 times at most.
export DEBIAN_FRONTEND=noninteractive
deadsnakes_key=F23C5A6CF475977595C89F51BA6932366A755776
mkdir -p /etc/apt/keyrings
retrying 6 "" curl -fsS --max-time 30 -o /etc/apt/keyrings/deadsnakes.asc \
  "https://keyserver.ubuntu.com/pks/lookup?op=get&options=mr&search=0x$$deadsnakes_key"
keys=$$(gpg --show-keys --with-colons /etc/apt/keyrings/deadsnakes.asc)
if [ "$$(grep -c '^pub:' <<<"$$keys")" != 1 ] || ! grep -q "^fpr:::::::::$$deadsnakes_key:" <<<"$$keys"; then
  echo "the key keyserver.ubuntu.com gave for the deadsnakes PPA is not $$deadsnakes_key alone" >&2
  exit 1
fi
echo "deb [signed-by=/etc/apt/keyrings/deadsnakes.asc] https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu" \
  "$$(. /etc/os-release && echo "$$VERSION_CODENAME") main" >/etc/apt/sources.list.d/deadsnakes.list
apt_again="Could not get lock|Failed to fetch"
retrying 60 "$$apt_again" apt-get -q -o DPkg::Lock::Timeout=600 update
retrying 60 "$$apt_again" apt-get -q -o DPkg::Lock::Timeout=600 -o Dir::Etc::SourceList=sources.list.d/deadsnakes.list \
  -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0 --error-on=any update
retrying 60 "$$apt_again" apt-get -q -y -o DPkg::Lock::Timeout=600 install python3.11 python3.11-venv python3.11-dev nfs-common

# This machine's place in its launch request (IMDSv2), which picks its dataset volume from the request's list.
token=$$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
launch_index=$$(curl -sf -H "X-aws-ec2-metadata-token: $$token" http://169.254.169.254/latest/meta-data/ami-launch-index)
set -- ${volume_serials}
shift "$$launch_index"
# The dataset volume, found by its id (NVMe names do not follow the attach order).
device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$$1
for _ in $$(seq 1 180); do [ -e "$$device" ] && break; sleep 5; done
${format_volume}
# Mounted through /etc/fstab, so that a reboot mounts them again; nofail: a disk that cannot be mounted then
# leaves the machine bootable (not in emergency mode, out of reach), and its jobs say what is missing.
mkdir -p /mnt/data /mnt/efs
echo "$$device /mnt/data auto ${mount_options},nofail 0 2" >>/etc/fstab
mount /mnt/data
mountpoint -q /mnt/data  # nofail: mount says nothing of a disk it cannot find
${mount_efs}

# The project, from the run's s3:// prefix, with exactly the dependencies its lock names (hashes checked).
mkdir -p /opt/imagenet18
aws s3 cp "${code_url}" - | tar -xz -C /opt/imagenet18
python3.11 -m venv /opt/imagenet18/.venv
/opt/imagenet18/.venv/bin/python -c 'import sys; sys.exit(sys.version_info.releaselevel != "final")' || {
  echo "error: $$(python3.11 -V) is not a final release (torch.compile segfaults on it): the deadsnakes PPA's" \
       "python3.11 was not installed" >&2
  exit 1
}
# Gigabytes of wheels (torch's CUDA libraries): a download cut off midway fails pip's hash check, which pip does
# not retry (pypa/pip#11153), and every machine of the run downloads them. Asked again twice, for what is missing,
# after a hash mismatch or a broken connection (not, say, a full disk).
cut_off="DO NOT MATCH THE HASHES|[Cc]onnection|[Tt]imed out|IncompleteRead"
retrying 3 "$$cut_off" /opt/imagenet18/.venv/bin/pip install --quiet --require-hashes -r /opt/imagenet18/requirements.lock
/opt/imagenet18/.venv/bin/pip install --quiet --no-deps --no-build-isolation /opt/imagenet18
