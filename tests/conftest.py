"""Test harness: 8 fake CPU devices and a quiet TensorFlow, set before JAX or TF is imported."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import jax  # noqa: E402

# fp32 matmuls on CPU so numerical comparisons in tests are tight.
jax.config.update("jax_default_matmul_precision", "float32")
