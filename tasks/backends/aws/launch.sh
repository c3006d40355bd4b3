#!/bin/sh
# imagenet18 job ${job} on machine ${index} of run ${run_id} (sent through SSM RunCommand). POSIX sh: the agent
# writes the commands to a file and runs it with `sh` (dash on Ubuntu), and the kernel honours the line above.
set -u
# SSM's agent gives a command almost no environment: no region for the SDKs, no HOME (wandb's core and caches
# want one).
export AWS_DEFAULT_REGION=${region}
[ -n "$${HOME:-}" ] || export HOME="$$(getent passwd "$$(id -u)" | cut -d: -f6)"
# The machine's first boot (its user data mounts the disks and installs the project) has ended, and well: a
# failed one is said here, where the flow reads it, since nothing else reads the machine's log of it. cloud-init
# answers 1 for an error (2, from 23.4, for a recoverable one, which leaves the machine usable).
/usr/bin/cloud-init status --wait >/dev/null
if [ $$? -eq 1 ]; then
  grep -v -e '^Cloud-init v\. ' -e '\[WARNING\]' /var/log/cloud-init-output.log | tail -n 2 >&2
  echo "error: this machine's first boot (its user data) failed; above, the end of its cloud-init output log" >&2
  exit 3
fi
# The disks this job reads and writes, which the first boot mounted through /etc/fstab so that a later boot mounts
# them again: without one, the job would read an empty folder of the root disk, or write its run there. A boot
# does not wait for a nofail mount, so a job that starts as its machine comes back waits a while for one.
for mount in ${mounts}; do
  tries=60
  while ! grep -qs " $$mount " /proc/mounts && grep -qs " $$mount " /etc/fstab && [ "$$tries" -gt 0 ]; do
    tries=$$((tries - 1))
    sleep 2
  done
  if ! grep -qs " $$mount " /proc/mounts; then
    echo "error: $$mount is not mounted on this machine: a boot after its first (a reboot) did not mount it again" >&2
    exit 3
  fi
done
run=${node_storage}
py=${python}
mkdir -p "$$run/logs" "$$run/exit" "$$run/pids"
rm -f "$$run/exit/${job}-${index}"
cd /opt/imagenet18
log="$$run/logs/${job}-${index}.log"
: >"$$log"
# NCCL reaches the machine's EFA devices only through AWS's OFI plugin, which the Deep Learning AMI keeps off the
# library path (a job SSM runs reads no login profile): where there are EFA devices, the plugin and libfabric go
# on the path, or the log warns that NCCL will use TCP.
if [ -n "$$(ls /sys/class/infiniband 2>/dev/null)" ]; then
  plugin=
  for dir in /opt/amazon/ofi-nccl/lib/x86_64-linux-gnu /opt/amazon/ofi-nccl/lib /opt/amazon/aws-ofi-nccl/lib \
             /opt/aws-ofi-nccl/lib; do
    if [ -e "$$dir/libnccl-net.so" ] || [ -e "$$dir/libnccl-net-ofi.so" ]; then plugin=$$dir; break; fi
  done
  if [ -n "$$plugin" ]; then
    export LD_LIBRARY_PATH="/opt/amazon/efa/lib:$$plugin$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" FI_PROVIDER=efa
    if [ ! -e "$$plugin/libnccl-net.so" ]; then export NCCL_NET_PLUGIN=ofi; fi
    echo "network: $$(ls /sys/class/infiniband | wc -l) EFA device(s), NCCL's plugin from $$plugin" >>"$$log"
  else
    echo "warning: this machine has EFA devices but no AWS OFI NCCL plugin (looked under /opt/amazon and" \
         "/opt/aws-ofi-nccl): NCCL reaches the other machines over TCP, several times slower" >>"$$log"
  fi
fi
${secrets}
${follow}
${command} >>"$$log" 2>&1 &
echo $$! >"$$run/pids/${job}-${index}"  # what `stop` signals
wait $$!
code=$$?
echo $$code >"$$run/exit/${job}-${index}"
wait  # machine 0: the mirror's last copy, made once every machine's exit code is on EFS, has the summary
# Last, this machine's own log and exit code: what the flow waits for, even when machine 0 is gone.
$$py -m trainer mirror "$$run" "${storage}" --only "logs/${job}-${index}.log" "exit/${job}-${index}"
exit $$code
