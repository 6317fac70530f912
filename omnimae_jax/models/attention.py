"""Which kernel computes softmax(q kᵀ / sqrt(d)) v: the setting config.model.attention.

- 'explicit': written out here, queries scaled by head_dim^-0.5 *before* q·kᵀ (on XLA:CPU that
  multiplies [B, L, H, D] instead of the [B, H, L, L] logits: a decoder block of 1568 tokens went
  from 1.42 s to 0.82 s), softmax in float32.
- 'xla':      jax.nn.dot_product_attention(implementation='xla').
- 'cudnn':    jax.nn.dot_product_attention(implementation='cudnn'), cuDNN's fused flash attention.
- 'auto':     chosen for the platform the program is *lowered* for (lax.platform_dependent), so a
  step lowered for CUDA on a CPU host takes the CUDA choice: cudnn where it can run these inputs,
  else xla; explicit on CPU; xla elsewhere. It never raises where XLA can run the model.
"""
import functools
from typing import Dict, List

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION_SETTINGS = ("auto", "xla", "explicit", "cudnn")
CUDNN_DTYPES = ("bfloat16", "float16")
# cuDNN takes head dims up to 256 on Hopper, 128 before it; 128 holds on every GPU.
CUDNN_MAX_HEAD_DIM = 128
CUDNN_PLATFORMS = ("cuda", "gpu")  # 'gpu' is what a device (and jax.default_backend) reports


def explicit_attention(query, key, value):
  """query, key, value [B, L, H, D] -> [B, L, H, D]."""
  scale = jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query * scale, key,
                      preferred_element_type=jnp.float32)  # [B, H, L, L]
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


def xla_attention(query, key, value):
  return jax.nn.dot_product_attention(query, key, value, implementation="xla")


def cudnn_attention(query, key, value):
  return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")


IMPLEMENTATIONS = {"explicit": explicit_attention, "xla": xla_attention, "cudnn": cudnn_attention}


def cudnn_problems(dtype, head_dims: Dict[str, int]) -> List[str]:
  """Why cuDNN's fused attention cannot take this dtype and these head dims (empty: it can)."""
  problems = []
  if jnp.dtype(dtype).name not in CUDNN_DTYPES:
    problems.append(f"compute dtype {jnp.dtype(dtype).name} (cuDNN needs one of {CUDNN_DTYPES})")
  for name, head_dim in head_dims.items():
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
      problems.append(f"{name} dim {head_dim} (cuDNN needs a multiple of 8, at most "
                      f"{CUDNN_MAX_HEAD_DIM})")
  return problems


def head_dims(model_cfg) -> Dict[str, int]:
  return {"encoder head": model_cfg.width // model_cfg.num_heads,
          "decoder head": model_cfg.decoder_width // model_cfg.decoder_heads}


def check_attention(model_cfg, platform: str) -> None:
  """Raises ValueError, before anything is compiled, when model.attention='cudnn' cannot run on
  `platform` ('cpu', 'gpu', 'cuda', 'tpu', ...) with this compute dtype and these head dims.

  Pure Python: the config checker calls it with jax.default_backend().
  """
  if model_cfg.attention not in ATTENTION_SETTINGS:
    raise ValueError(f"model.attention={model_cfg.attention!r}; allowed: {ATTENTION_SETTINGS}")
  if model_cfg.attention != "cudnn":
    return
  problems = [] if platform in CUDNN_PLATFORMS else [f"platform {platform!r} (cuDNN needs CUDA)"]
  problems += cudnn_problems(model_cfg.compute_dtype, head_dims(model_cfg))
  if problems:
    raise ValueError(f"model.attention='cudnn' cannot run here: {'; '.join(problems)}. Allowed: "
                     f"'auto' (cuDNN wherever it can run, XLA otherwise), 'xla', 'explicit', or "
                     f"'cudnn' with compute_dtype in {CUDNN_DTYPES} and head dims that are "
                     f"multiples of 8 up to {CUDNN_MAX_HEAD_DIM} on a CUDA GPU")


@functools.cache
def cudnn_available() -> bool:
  """Whether this process can trace cuDNN attention (a CUDA jaxlib with cuDNN loaded).

  jax checks for cuDNN while tracing, so 'auto' may only stage out a cuDNN branch when this holds;
  asking jax itself is the one public way to find out.
  """
  probe = jax.ShapeDtypeStruct((1, 8, 1, 8), jnp.bfloat16)
  try:  # a new function each time: eval_shape must not answer from its trace cache
    jax.eval_shape(lambda *qkv: cudnn_attention(*qkv), probe, probe, probe)
  except Exception:  # noqa: BLE001 - any refusal (no cuDNN, old cuDNN, no CUDA jaxlib) means no
    return False
  return True


def sequence_or_head_dim_sharded() -> bool:
  """Whether the active logical-axis rules split 'length' or 'kv' over a mesh axis (cuDNN's
  partitioning accepts batch and head splits only)."""
  return any(axis is not None for axis in nn.logical_to_mesh_axes(("length", "kv")))


def cudnn_fits(query) -> bool:
  """Whether 'auto' may take cuDNN on CUDA for these queries [B, L, H, D]."""
  return (not cudnn_problems(query.dtype, {"head": query.shape[-1]})
          and not sequence_or_head_dim_sharded() and cudnn_available())


def attend(query, key, value, setting: str = "auto"):
  """query, key, value [B, L, H, D] -> [B, L, H, D] with the kernel `setting` names."""
  if setting not in ATTENTION_SETTINGS:
    raise ValueError(f"model.attention={setting!r}; allowed: {ATTENTION_SETTINGS}")
  if setting == "cudnn":
    problems = cudnn_problems(query.dtype, {"head": query.shape[-1]})
    if problems:
      raise ValueError(f"model.attention='cudnn' cannot take {'; '.join(problems)}; use 'auto', "
                       f"'xla' or 'explicit'")
  if setting != "auto":
    return IMPLEMENTATIONS[setting](query, key, value)
  on_cuda = cudnn_attention if cudnn_fits(query) else xla_attention
  return jax.lax.platform_dependent(query, key, value, cpu=explicit_attention, cuda=on_cuda,
                                    default=xla_attention)
