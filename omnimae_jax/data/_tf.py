"""TensorFlow for the input pipeline only: quiet, and never holding an accelerator."""
import logging
import os

# Set before TF is imported anywhere (omnimae_jax/__init__ does the same; this module may be
# imported without it, e.g. from a test helper).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # noqa: E402


def _hide_accelerators_from_tf():
  # JAX owns the GPUs/TPUs; TF allocating GPU memory for tf.data would starve it.
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      # RuntimeError: TF already initialised its devices (an op ran before this import);
      # ValueError: this TF build has no such device type. Nothing more to do either way.
      pass


class _DropTfdsInternalDeprecation(logging.Filter):
  """TFDS 4.9.10's own decoders use TensorInfo.dtype and warn about it on every epoch; nothing a
  user of this project can act on."""

  def filter(self, record):
    return "`TensorInfo.dtype` is deprecated" not in record.getMessage()


_hide_accelerators_from_tf()
logging.getLogger("absl").addFilter(_DropTfdsInternalDeprecation())

__all__ = ["tf"]
