#!/usr/bin/env bash
# Train on one host: one process driving every local device (NUM_PROCESSES=1, the default),
# or N processes joined through a coordinator on 127.0.0.1 (a rehearsal of a multi-host run:
# same start-up code, CPU devices split between the processes).
#
#   launch/local.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local.sh configs/tiny.py runs/x \
#       --config.data.train_files=train.jsonl --config.data.tokenizer=tok
#
# Logs: WORKDIR/logs/process-I.log (process 0 also prints to the terminal).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [jaxembed train arguments...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
jaxembed=${JAXEMBED:-$(dirname "$0")/../.venv/bin/jaxembed}
num_processes=${NUM_PROCESSES:-1}

if [[ $num_processes -eq 1 ]]; then
  exec "$jaxembed" train --launcher none --config "$config" --workdir "$workdir" "$@"
fi

port=${PORT:-$((20000 + RANDOM % 20000))}
mkdir -p "$workdir/logs"
if [[ -n ${DEVICES_PER_PROCESS:-} ]]; then
  # CPU rehearsal: give each process its own slice of host devices.
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi
pids=()
for ((i = 0; i < num_processes; i++)); do
  "$jaxembed" train --launcher explicit --coordinator "127.0.0.1:$port" \
    --num-processes "$num_processes" --process-id "$i" \
    --config "$config" --workdir "$workdir" "$@" >"$workdir/logs/process-$i.log" 2>&1 &
  pids+=($!)
done
tail -f "$workdir/logs/process-0.log" --pid "${pids[0]}" &
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
if [[ $status -ne 0 ]]; then
  echo "a process failed (exit $status); see $workdir/logs/process-*.log" >&2
fi
exit "$status"
