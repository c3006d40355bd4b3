#!/bin/sh
# Stop imagenet18 job ${job} on machine ${index} of run ${run_id}: torchrun ends its workers on SIGTERM.
# POSIX sh, as launch.sh.
pidfile=${node_storage}/pids/${job}-${index}
[ -f "$$pidfile" ] || exit 0
pid=$$(cat "$$pidfile")
kill -TERM "$$pid" 2>/dev/null || exit 0
for _ in $$(seq 1 30); do kill -0 "$$pid" 2>/dev/null || exit 0; sleep 1; done
kill -KILL "$$pid" 2>/dev/null || true
