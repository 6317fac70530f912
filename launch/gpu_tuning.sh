# Opt-in XLA settings for H100 nodes: `OMNIMAE_GPU_TUNING=1 launch/local_gpu.sh ...` (or sbatch
# with OMNIMAE_GPU_TUNING=1 exported). Sourced by the GPU launchers; a no-op unless asked.
# Each flag is checked to parse in the pinned jaxlib (tests/test_launch.py): XLA aborts at start
# on an XLA_FLAGS entry it does not know.
if [ "${OMNIMAE_GPU_TUNING:-0}" = 1 ]; then
  # Overlap the fsdp all-gathers / reduce-scatters with compute, and send them as fewer, larger
  # NCCL calls (ViT-B's per-layer tensors are a few MB each).
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728 \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728"
  # XLA's share of GPU memory (default 0.75): more room for activations; cuDNN, NCCL and the
  # CUDA context live in the rest.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
fi
