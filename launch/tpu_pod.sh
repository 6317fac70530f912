#!/bin/bash
# Pretraining on Cloud TPU through a queued resource (spot by default), one or several slices,
# data and workdir on GCS. The same command runs on every worker with --distributed: JAX finds
# the other workers (and slices) through the TPU VM metadata server.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh omnimae us-east5-a v5litepod-64 configs/vitb_omni.py gs://BUCKET/vitb \
#       --config.data.data_dir=gs://BUCKET/tensorflow_datasets
#
# Environment: OMNIMAE_GIT_URL (required: where the workers clone this repo from), SLICES (1;
# more makes a multi-slice resource: data parallel across slices, see train/sharding.py),
# RUNTIME (TPU software version, default v2-alpha-tpuv5-lite), SPOT (1; 0 for on-demand),
# DRY_RUN (1: print the gcloud commands instead of running them).
#
# Preemption: the workers get SIGTERM, agree on a step, save to the workdir and exit; the spot
# resource is then SUSPENDED or FAILED. Rerun this script with the same arguments: it deletes
# the dead resource, queues a new one and resumes from the workdir's latest checkpoint.
set -euo pipefail
NAME=${1:?usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [flags]}
ZONE=${2:?zone}
ACCELERATOR=${3:?accelerator type, e.g. v5litepod-64}
CONFIG=${4:?config}
WORKDIR=${5:?workdir (a gs:// URL: every worker writes there)}
shift 5
SLICES=${SLICES:-1}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
SPOT=${SPOT:-1}
DRY_RUN=${DRY_RUN:-0}
GIT_URL=${OMNIMAE_GIT_URL:?set OMNIMAE_GIT_URL to a URL the workers can clone this repo from}
case "$WORKDIR" in
  gs://*) ;;
  *) echo "warning: WORKDIR=$WORKDIR is not gs://: every worker must see it (e.g. a Filestore mount)" >&2 ;;
esac

run() {  # prints instead of running under DRY_RUN=1
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

state() {
  gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE" \
    --format='value(state.state)' 2>/dev/null || true
}

create() {
  local shape=(--node-id="$NAME")
  [ "$SLICES" -gt 1 ] && shape=(--node-count="$SLICES" --node-prefix="$NAME")
  local spot=()
  [ "$SPOT" = 1 ] && spot=(--spot)
  run gcloud compute tpus queued-resources create "$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${shape[@]}" "${spot[@]}"
}

wait_until_active() {
  [ "$DRY_RUN" = 1 ] && return
  local current
  while current=$(state); [ "$current" != ACTIVE ]; do
    case "$current" in
      FAILED|SUSPENDED) echo "queued resource $NAME is $current" >&2; exit 1 ;;
    esac
    echo "$(date): $NAME is ${current:-not there yet}; waiting" >&2
    sleep 60
  done
}

on_workers() {  # every worker of every slice
  if [ "$SLICES" -gt 1 ]; then
    run gcloud alpha compute tpus queued-resources ssh "$NAME" --zone="$ZONE" --node=all \
      --worker=all --command="$1"
  else
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$1"
  fi
}

if [ "$DRY_RUN" != 1 ]; then
  case "$(state)" in
    SUSPENDED|FAILED)  # a preempted spot resource never comes back: replace it
      gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet
      create ;;
    "") create ;;
  esac
else
  create
fi
wait_until_active

# The pinned stack plus the TPU build of the same JAX, on every worker (idempotent).
on_workers "[ -d omnimae_jax ] || git clone $GIT_URL omnimae_jax; cd omnimae_jax && git pull --ff-only && make setup && .venv/bin/pip install --quiet 'jax[tpu]==0.10.2'"
# printf %q keeps each flag one word through the remote shell.
FLAGS=$(printf ' %q' --require_backend=tpu --distributed --config="$CONFIG" --workdir="$WORKDIR" "$@")
on_workers "cd omnimae_jax && .venv/bin/python main.py$FLAGS"
