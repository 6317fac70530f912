#!/bin/bash
# One host, all of its GPUs, one process (jax.jit shards over every local device).
#
#   launch/local_gpu.sh configs/vitb_omni.py workdir/vitb [--config.x=y ...]
#   OMNIMAE_GPU_TUNING=1 launch/local_gpu.sh ...   # the H100 settings of launch/gpu_tuning.sh
set -euo pipefail
CONFIG=${1:?usage: launch/local_gpu.sh CONFIG WORKDIR [flags]}
WORKDIR=${2:?workdir}
shift 2
make setup
.venv/bin/python -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null \
  || .venv/bin/pip install --quiet "jax[cuda12]==0.10.2"
source "$(dirname "$0")/gpu_tuning.sh"
# XLA may take most of the GPU memory up front; TF (input pipeline only) never sees the GPUs.
# --require_backend: a broken CUDA install stops here instead of training on the CPUs.
exec .venv/bin/python main.py --require_backend=gpu --config="$CONFIG" --workdir="$WORKDIR" "$@"
