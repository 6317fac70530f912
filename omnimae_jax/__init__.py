"""omnimae_jax: OmniMAE (masked autoencoding on images and videos) in JAX/Flax."""
import os

# TF is only the input pipeline: keep it quiet and deterministic before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity), as many as XLA:CPU's threads."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1
