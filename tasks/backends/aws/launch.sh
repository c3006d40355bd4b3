#!/bin/sh
# imagenet18 job ${job} on machine ${index} of run ${run_id} (sent through SSM RunCommand). POSIX sh: the agent
# writes the commands to a file and runs it with `sh` (dash on Ubuntu), and the kernel honours the line above.
set -u
export AWS_DEFAULT_REGION=${region}
if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null; fi  # user-data has finished
run=${node_storage}
py=${python}
mkdir -p "$$run/logs" "$$run/exit" "$$run/pids"
rm -f "$$run/exit/${job}-${index}"
cd /opt/imagenet18
${secrets}
${follow}
${command} >"$$run/logs/${job}-${index}.log" 2>&1 &
echo $$! >"$$run/pids/${job}-${index}"  # what `stop` signals
wait $$!
code=$$?
echo $$code >"$$run/exit/${job}-${index}"
wait  # machine 0: the mirror's last copy, made once every machine's exit code is on EFS, has the summary
# Last, this machine's own log and exit code: what the flow waits for, even when machine 0 is gone.
$$py -m trainer mirror "$$run" "${storage}" --only "logs/${job}-${index}.log" "exit/${job}-${index}"
exit $$code
