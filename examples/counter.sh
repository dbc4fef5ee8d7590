#!/bin/sh
# Directory mode, for a program in any language: the TaskRun's checkpoint.mountPath (/ckpt here)
# holds the newest checkpoint when this starts, and is synced back every few seconds and on
# SIGTERM by Spotrun's sidecar. The program just reads and writes files there.
set -eu
# Stop when told (a reclaim, a drain): as a container's PID 1 the shell would otherwise ignore
# SIGTERM and run on until the grace period ends. The sidecar syncs the directory on SIGTERM too.
trap 'echo "stopped at $n"; exit 143' TERM
dir="${CHECKPOINT_DIR:-/ckpt}"
target="${COUNT_TO:-60}"
n=$(cat "$dir/count" 2>/dev/null || echo 0)
echo "$n" >> "$dir/starts"
echo "counting from $n to $target"
while [ "$n" -lt "$target" ]; do
  n=$((n + 1))
  echo "$n" > "$dir/count"
  sleep "${STEP_SECONDS:-0.5}"
done
echo "reached $target; started at: $(tr '\n' ' ' < "$dir/starts")"
