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


class _DropTfdsChatter(logging.Filter):
  """Deprecation warnings about TFDS 4.9.10's own code (its decoders use TensorInfo.dtype and
  FeatureConnector.dtype and tf.map_fn's dtype=, its reader tf.data's CounterV2), printed on every start or epoch, and
  its note that a dataset folder being generated has no dataset_info.json yet: nothing a user of
  this project can act on (a dataset that is not prepared is a clear error of its own).
  Deprecations raised from anywhere else still show."""

  def filter(self, record):
    message = record.getMessage()
    return not ("`TensorInfo.dtype` is deprecated" in message
                or "has no dataset_info.json" in message  # a dataset about to be generated
                or "`FeatureConnector.dtype` is deprecated" in message
                # TFDS's sequence decoder calls tf.map_fn with dtype= (ours passes
                # fn_output_signature): the warning names TF's own file, not the caller.
                or "calling map_fn_v2 (from tensorflow.python.ops.map_fn) with dtype" in message
                or ("is deprecated" in message and "/tensorflow_datasets/" in message))


_hide_accelerators_from_tf()
for _logger in ("absl", "tensorflow"):
  logging.getLogger(_logger).addFilter(_DropTfdsChatter())

__all__ = ["tf"]
