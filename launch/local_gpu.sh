#!/bin/bash
# One host, all of its GPUs, one process (jax.jit shards over every local device).
#
#   launch/local_gpu.sh configs/vitb_omni.py workdir/vitb [--config.x=y ...]
set -euo pipefail
CONFIG=${1:?usage: launch/local_gpu.sh CONFIG WORKDIR [flags]}
WORKDIR=${2:?workdir}
shift 2
make setup
.venv/bin/python -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null \
  || .venv/bin/pip install --quiet "jax[cuda12]==0.10.2"
# XLA may take most of the GPU memory up front; TF (input pipeline only) never sees the GPUs.
exec .venv/bin/python main.py --config="$CONFIG" --workdir="$WORKDIR" "$@"
