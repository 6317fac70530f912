"""Transformer building blocks shared by the encoder and the decoder (SPEC §1.3).

Every kernel carries logical axis names ('embed', 'mlp', 'heads', 'kv'); the rules that map them to
mesh axes live only in omnimae_jax/train/sharding.py.
"""
import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnimae_jax.models.attention import attend

Dtype = Any
LAYER_NORM_EPS = 1e-6


def xavier_uniform(fan_in: int, fan_out: int) -> Callable:
  """Xavier-uniform with explicit fans, whatever the kernel's shape.

  PyTorch computes fans on the 2-D [out, in] view of a Linear (and MAE on the [D, C*kt*kh*kw] view
  of the patch conv). Our kernels are reshaped views of those (qkv [D, 3, heads, head_dim], proj
  [heads, head_dim, D], conv [kt, kh, kw, C, D]), so flax's shape-derived fans would be wrong.
  """
  limit = math.sqrt(6.0 / (fan_in + fan_out))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def uniform_bias(fan_in: int) -> Callable:
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kept by the patch conv)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def truncated_normal(std: float) -> Callable:
  """timm's trunc_normal_(std): normal(0, std) cut at +-2 (absolute, so effectively untruncated)."""

  def init(key, shape, dtype=jnp.float32):
    lower, upper = -2.0 / std, 2.0 / std
    return std * jax.random.truncated_normal(key, lower, upper, shape, dtype)

  return init


def partitioned(init: Callable, names: tuple) -> Callable:
  return nn.with_logical_partitioning(init, names)


def sincos_table(num_positions: int, dim: int) -> np.ndarray:
  """Fixed 1-D sinusoidal table over the flattened (t, h, w) index (SPEC §1.2).

  angle(n, j) = n / 10000^(2 floor(j/2) / dim); even channels take sin, odd channels cos
  (interleaved). Returns float32 [num_positions, dim].
  """
  positions = np.arange(num_positions, dtype=np.float64)[:, None]
  exponents = 2 * (np.arange(dim) // 2) / dim
  angles = positions / np.power(10000.0, exponents)[None, :]
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
  return table.astype(np.float32)


# PyTorch's bicubic (upsample_bicubic2d) uses Keys' cubic convolution with A = -0.75; jax.image
# uses A = -0.5 and antialiases when shrinking, so it cannot reproduce the official tables.
TORCH_BICUBIC_A = -0.75


def _cubic_weights(t):
  """The four tap weights (at floor - 1 .. floor + 2) for a fractional offset t in [0, 1]."""
  a = TORCH_BICUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return far(t + 1), near(t), near(1 - t), far(2 - t)


def torch_bicubic_matrix(in_size: int, out_size: int,
                         scale_factor: Optional[float] = None) -> np.ndarray:
  """[out_size, in_size] float64: torch.nn.functional.interpolate(mode='bicubic',
  align_corners=False) along one axis, as a matrix.

  The source coordinate is (i + 0.5) * scale - 0.5 with scale = 1 / scale_factor when the caller
  passed a scale factor (PyTorch then ignores the sizes' ratio) and in_size / out_size otherwise;
  PyTorch computes it in float32, and so do we, so the taps and offsets are the same. Taps beyond
  the border are clamped to the edge pixel. No antialiasing, whatever the direction.
  """
  if scale_factor is not None:
    scale = np.float32(1.0 / scale_factor)
  else:
    scale = np.float32(in_size) / np.float32(out_size)
  out = np.arange(out_size)
  source = scale * (out.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
  first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  offset = np.clip(source - first, 0.0, 1.0).astype(np.float64)
  matrix = np.zeros((out_size, in_size))
  for tap, weight in enumerate(_cubic_weights(offset)):
    np.add.at(matrix, (out, np.clip(first - 1 + tap, 0, in_size - 1)), weight)
  return matrix


def position_table(grid, table_grid, dim: int) -> jnp.ndarray:
  """The position embeddings for a token grid (T', H', W') given the model's table grid.

  The table is built for `table_grid` (from the model's num_frames and img_size). Fewer time steps
  take the leading temporal slices (an image takes the t=0 slice, as the official code does). A
  different spatial size resizes each slice exactly as the official interpolate_pos_encoding does
  (F.interpolate bicubic with scale_factor = sqrt(new tokens / table tokens)); the official code
  only does this for images, a video's slices here each get the same resize. More time steps than
  the table has is an error: the official model cannot interpolate in time.
  """
  t, h, w = grid
  table_t, table_h, table_w = table_grid
  if t > table_t:
    raise ValueError(
        f"pixels: the input has {t} temporal patches but the position table has {table_t} "
        f"(num_frames={table_t} x patch time); build the model with num_frames >= the clip length "
        f"(the position table cannot be interpolated in time).")
  table = sincos_table(table_t * table_h * table_w, dim).reshape(table_t, table_h, table_w, dim)
  table = table[:t]
  if (h, w) != (table_h, table_w):
    if h == w and table_h == table_w:  # the official call (it supports square grids only)
      factor_h = factor_w = math.sqrt(h * w / (table_h * table_w))
    else:
      factor_h, factor_w = h / table_h, w / table_w
    rows = torch_bicubic_matrix(table_h, h, factor_h)
    cols = torch_bicubic_matrix(table_w, w, factor_w)
    table = np.einsum("yh,xw,thwd->tyxd", rows, cols, table, optimize=True).astype(np.float32)
  return jnp.asarray(table.reshape(t * h * w, dim))  # [N, D]


def _weight_grad_on_cpu(inputs, grads):
  """inputs [M, K]^T @ grads [M, N] -> [K, N], with the narrower operand transposed into its own
  buffer first.

  XLA:CPU otherwise lays the contraction out by transposing whichever operand it picks, often the
  large one: the head's output gradient (a head step of [1568, 128] x [128, 1536]: 63 ms -> 24 ms,
  fwd+bwd), or an MLP's GELU output, whose GELU it then recomputes in the transposed order
  (fc2 of the ViT-B decoder: 55 ms a layer). The barrier stops the transpose from being folded
  back into the dot.
  """
  barrier = jax.lax.optimization_barrier
  if inputs.shape[1] <= grads.shape[1]:
    return barrier(inputs.T) @ grads
  return (barrier(grads.T) @ inputs).T


@jax.custom_vjp
def linear(x, kernel):
  """x [..., K] @ kernel [K, N] -> [..., N]; the gradient is autodiff's, laid out for XLA:CPU."""
  return x @ kernel


def _linear_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _linear_bwd(saved, grad):
  x, kernel = saved
  inputs = x.reshape(-1, x.shape[-1])  # [M, K]
  grads = grad.reshape(-1, grad.shape[-1])  # [M, N]
  weight_grad = jax.lax.platform_dependent(
      inputs, grads, cpu=_weight_grad_on_cpu, default=lambda a, g: a.T @ g)  # [K, N]
  return grad @ kernel.T, weight_grad.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nn.Module):
  """nn.Dense (same parameters, names and dtype promotion) computed by `linear`."""
  features: int
  kernel_init: Callable
  bias_init: Callable
  dtype: Dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, add_bias: bool = True):
    """add_bias=False: x @ kernel alone (a caller that splits a sum across calls adds it once)."""
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    y = linear(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias and add_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
    return y


def gelu(x):
  """The exact GELU, x * (1 + erf(x / sqrt(2))) / 2, in PyTorch's form (nn.GELU()).

  jax.nn.gelu(approximate=False) writes it with erfc, which XLA:CPU evaluates through exp: a ViT-B
  decoder MLP's [1568, 1536] activations took 2.8 ms forward, 0.9 ms with erf. Both are within
  1.1e-6 of the float64 value for |x| < 8.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * np.asarray(2 ** -0.5, x.dtype)))


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    dense = lambda features, fan_in, names, name: Dense(
        features, dtype=self.dtype, name=name,
        kernel_init=partitioned(xavier_uniform(fan_in, features), names),
        bias_init=partitioned(nn.initializers.zeros, names[1:]))
    x = dense(self.hidden_dim, width, ("embed", "mlp"), "fc1")(x)
    x = gelu(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "mlp"))
    return dense(width, self.hidden_dim, ("mlp", "embed"), "fc2")(x)


class Projection(nn.Module):
  """einsum(x, kernel) + bias, with the kernel created directly in its multi-axis shape; computed
  by `linear` on 2-D views ([B, L, in] @ [in, out]), the same contraction.

  Used for qkv ([D, 3, heads, head_dim]) and the output projection ([heads, head_dim, D]) so that
  each axis carries its own logical name (flax's DenseGeneral boxes the flattened kernel instead).
  """
  equation: str
  kernel_shape: Tuple[int, ...]
  names: Tuple[Optional[str], ...]
  kernel_init: Callable
  bias_axes: int  # how many trailing kernel axes are output axes (the bias's shape)
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", partitioned(self.kernel_init, self.names), self.kernel_shape)
    inputs = self.equation.split("->")[0].split(",")[0]
    contracted = len(inputs) - 2  # input axes after [B, L]: 1 (qkv) or 2 (proj)
    in_dim = int(np.prod(self.kernel_shape[:contracted]))
    out_shape = self.kernel_shape[contracted:]
    y = linear(x.reshape(*x.shape[:2], in_dim).astype(self.dtype),
               kernel.reshape(in_dim, -1).astype(self.dtype))
    y = y.reshape(*x.shape[:2], *out_shape)
    if self.use_bias:
      bias_shape = self.kernel_shape[-self.bias_axes:]
      bias = self.param("bias", partitioned(nn.initializers.zeros, self.names[-self.bias_axes:]),
                        bias_shape)
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection split as (3, heads, head_dim)."""
  num_heads: int
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  implementation: str = "auto"  # a model.attention setting

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide the width {width}")
    head_dim = width // self.num_heads
    qkv = Projection(
        "bld,dthk->blthk", (width, 3, self.num_heads, head_dim), ("embed", None, "heads", "kv"),
        xavier_uniform(width, 3 * width), bias_axes=3, use_bias=self.qkv_bias, dtype=self.dtype,
        name="qkv")(x)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, L, heads, head_dim]
    out = attend(query, key, value, self.implementation)  # scale head_dim^-0.5
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return Projection(
        "blhk,hkd->bld", (self.num_heads, head_dim, width), ("heads", "kv", "embed"),
        xavier_uniform(width, width), bias_axes=1, dtype=self.dtype, name="proj")(out)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample during training."""
  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep_mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(keep_mask, x / keep, jnp.zeros_like(x))


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=LAYER_NORM_EPS, dtype=dtype, name=name,
      scale_init=partitioned(nn.initializers.ones, ("embed",)),
      bias_init=partitioned(nn.initializers.zeros, ("embed",)))


class Block(nn.Module):
  """Pre-LN transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""
  num_heads: int
  mlp_dim: int
  qkv_bias: bool = True
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    attn = Attention(self.num_heads, self.qkv_bias, self.dtype, self.attention, name="attn")
    x = x + DropPath(self.drop_path)(attn(layer_norm("norm1", self.dtype)(x)), train)
    mlp = Mlp(self.mlp_dim, self.dtype, name="mlp")
    x = x + DropPath(self.drop_path)(mlp(layer_norm("norm2", self.dtype)(x)), train)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def block_stack(x, *, prefix, depth, num_heads, mlp_dim, qkv_bias, drop_path, dtype, attention,
                remat, train):
  """Runs `depth` blocks named f'{prefix}_{i}' with drop path rising linearly to `drop_path`.

  remat: 'none' or 'full' (models.remat_for decides 'auto'). Call it from a compact method: the
  blocks become children of that module.
  """
  if remat not in ("none", "full"):
    raise ValueError(f"block_stack: remat={remat!r}; allowed: 'none', 'full'")
  block_cls = nn.remat(Block, static_argnums=(2,)) if remat == "full" else Block
  for i in range(depth):
    rate = drop_path * i / max(depth - 1, 1)
    block = block_cls(num_heads, mlp_dim, qkv_bias, rate, dtype, attention, name=f"{prefix}_{i}")
    x = block(x, train)
  return x
