#!/bin/sh
# Stop imagenet18 job ${job} on machine ${index} of run ${run_id}: torchrun ends its workers on SIGTERM; machine 0's
# mirror, which would wait for the exit code of a machine that is gone, is ended too. POSIX sh, as launch.sh.
stop() {
  [ -f "$$1" ] || return 0
  pid=$$(cat "$$1")
  # Still ours: a job that ended long ago left its pid, which another process may have by now.
  grep -q trainer "/proc/$$pid/cmdline" 2>/dev/null || return 0
  kill -TERM "$$pid" 2>/dev/null || return 0
  for _ in $$(seq 1 30); do kill -0 "$$pid" 2>/dev/null || return 0; sleep 1; done
  kill -KILL "$$pid" 2>/dev/null || true
}
stop ${node_storage}/pids/${job}-${index}
# Named by machine, as the trainer's: the folder is on EFS, shared by every machine (only machine 0 has a mirror).
stop ${node_storage}/pids/${job}-${index}-mirror
