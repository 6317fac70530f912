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

# Many tests compile the same tiny steps; a persistent compilation cache shared by the session
# (and by the main.py subprocesses the tests start) compiles each of them once.
_CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"omnimae_jax_test_xla_cache_{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE_DIR)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
