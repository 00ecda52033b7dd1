#!/usr/bin/env bash
# Runs a command on a busy host: LOOPS busy loops (default 2) in a cpu cgroup of
# weight WEIGHT (default 4096, four times a guest's), how a busy neighbour looks
# to the scheduler. A plain busy loop in the same login session does not
# contend: the kernel's autogroup gives it a group of its own. Removes the loops
# and the cgroup afterwards. Run as root. Example, the real-host tests:
#   scripts/contend.sh cargo test --test real_loop --test real_libvirt --test real_reconnect
set -euo pipefail
loops=${LOOPS:-2}
weight=${WEIGHT:-4096}
if [ -e /sys/fs/cgroup/cpu/cpu.shares ]; then
  cg=/sys/fs/cgroup/cpu/vp-contend-$$; knob=cpu.shares; value=$weight; tasks=tasks
else
  cg=/sys/fs/cgroup/vp-contend-$$; knob=cpu.weight; value=$(( weight * 100 / 1024 )); tasks=cgroup.procs
fi
mkdir "$cg"
echo "$value" > "$cg/$knob"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 "$loops"); do
  sh -c 'while :; do :; done' &
  pids+=($!)
  echo "$!" > "$cg/$tasks"
done
echo "contend: $loops busy loops in $cg ($knob $value)" >&2
"$@"
