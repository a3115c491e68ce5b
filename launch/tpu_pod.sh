#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single- or multi-host): create the slice or reuse it, install
# this checkout on every worker, start the same command on every worker, collect the logs.
# Each worker's process finds its peers in the VM metadata (`--launcher tpu`).
#
#   TPU_NAME=embed ZONE=us-east5-a ACCELERATOR_TYPE=v5p-128 RUNTIME_VERSION=v2-alpha-tpuv5 \
#   launch/tpu_pod.sh configs/llama_embed_nemotron_8b.py:stage1 /mnt/shared/runs/s1 \
#       --config.model.hf_path=/mnt/models/Llama-3.1-8B --config.data.train_files=...
#
# Steps (each can be skipped): SKIP_CREATE=1, SKIP_INSTALL=1. Logs land in ./logs/TPU_NAME/.
# Model and data paths must exist on every worker (a mounted disk, or copied by you);
# the workdir must be storage all workers share (e.g. a Filestore or gcsfuse mount; checkpoints
# and metrics use local-filesystem paths, so not a gs:// URL).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [jaxembed train arguments...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
config=$1 workdir=$2
shift 2
accelerator=${ACCELERATOR_TYPE:-v5p-8}
runtime=${RUNTIME_VERSION:-v2-alpha-tpuv5}
project_flag=()
[[ -n ${PROJECT:-} ]] && project_flag=(--project "$PROJECT")
tpu=(gcloud compute tpus tpu-vm)
# shellcheck disable=SC2088  # expanded by the workers' shell, not here
remote_dir='~/jaxembed'

if [[ -z ${SKIP_CREATE:-} ]]; then
  if "${tpu[@]}" describe "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" >/dev/null 2>&1; then
    echo "reusing TPU slice $TPU_NAME"
  else
    echo "creating TPU slice $TPU_NAME ($accelerator, $runtime) in $ZONE"
    "${tpu[@]}" create "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" \
      --accelerator-type "$accelerator" --version "$runtime"
  fi
fi

if [[ -z ${SKIP_INSTALL:-} ]]; then
  archive=$(mktemp --suffix=.tar.gz)
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  "${tpu[@]}" scp "$archive" "$TPU_NAME:/tmp/jaxembed.tar.gz" --worker=all \
    --zone "$ZONE" "${project_flag[@]}"
  rm -f "$archive"
  "${tpu[@]}" ssh "$TPU_NAME" --worker=all --zone "$ZONE" "${project_flag[@]}" --command "
    set -e; rm -rf $remote_dir; mkdir -p $remote_dir; tar -xzf /tmp/jaxembed.tar.gz -C $remote_dir
    cd $remote_dir && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
fi

# The same command on every worker; each tees its output to a log named after its host.
args=$(printf ' %q' --config "$config" --workdir "$workdir" "$@")
"${tpu[@]}" ssh "$TPU_NAME" --worker=all --zone "$ZONE" "${project_flag[@]}" --command "
  mkdir -p ~/jaxembed-logs && cd $remote_dir &&
  .venv/bin/jaxembed train --launcher tpu$args 2>&1 | tee ~/jaxembed-logs/\$(hostname).log;
  exit \${PIPESTATUS[0]}" || status=$?

mkdir -p "logs/$TPU_NAME"
"${tpu[@]}" scp "$TPU_NAME:~/jaxembed-logs/*" "logs/$TPU_NAME/" --worker=all \
  --zone "$ZONE" "${project_flag[@]}" || echo "could not collect every worker's log" >&2
echo "logs in logs/$TPU_NAME/"
exit "${status:-0}"
