#!/bin/bash
# Pretraining on a Cloud TPU VM pod slice: the same command on every worker.
# jax.distributed.initialize() finds the other workers by itself on Cloud TPU (main.py calls it
# when TPU_WORKER_HOSTNAMES lists several hosts).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/vitb_omni.py /mnt/shared/omnimae/vitb [--config.x=y]
#
# Preemptible / spot slices: a preemption sends SIGTERM, main.py saves a checkpoint and exits;
# rerun this script on the new slice with the same workdir to resume at that step. The workdir
# must be shared by the workers (e.g. a Filestore NFS or GCS FUSE mount).
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
REPO=${OMNIMAE_REPO_DIR:-omnimae_jax}  # where the repo is checked out on every worker

# One-time set-up on every worker: the pinned stack plus the TPU build of the same JAX.
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "
  cd $REPO && make setup && .venv/bin/pip install --quiet 'jax[tpu]==0.10.2'"

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "
  cd $REPO && .venv/bin/python main.py --config=$CONFIG --workdir=$WORKDIR $*"
