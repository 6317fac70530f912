"""Which kernel computes softmax(q kᵀ / sqrt(d)) v: the setting config.model.attention.

- 'explicit': written out here, queries scaled by head_dim^-0.5 *before* q·kᵀ (on XLA:CPU that
  multiplies [B, L, H, D] instead of the [B, H, L, L] logits: a decoder block of 1568 tokens went
  from 1.42 s to 0.82 s), softmax in float32 and normalised after the weighted sum. Sequences of
  EXPLICIT_BLOCKED_MIN_TOKENS or more go in blocks of queries that keep their logits in the CPU's
  caches, with flash attention's recomputing gradient (blocked_attention): those never hold the
  [B, H, L, L] weights; shorter ones in one block, differentiated by autodiff or, for narrow
  heads, by weights_saved_attention, and on CPU in independent groups of sequences that XLA runs
  on threads of their own. Each device attends on its own shard.
- 'xla':      jax.nn.dot_product_attention(implementation='xla').
- 'cudnn':    jax.nn.dot_product_attention(implementation='cudnn'), cuDNN's fused flash attention.
- 'splash':   jax's Pallas TPU flash-attention kernel (jax.experimental.pallas.ops.tpu.
  splash_attention), TPU only, bfloat16 or float32 (Mosaic rejects float16). It never holds the
  [B, H, L, L] logits: on v5e the gradient of one ViT-B decoder layer (64 clips of 1568 tokens,
  16 heads of 24) plans 2.1 GiB of temporaries against XLA's 14.9 GiB. The kernel tiles both
  sequences by 128, so they are padded to a multiple of it and the padded keys get a segment id of
  their own, i.e. exactly zero weight; q, k and v go in sequence-minor ([H, D, L]) so that head
  dims of 24 to 80 are not padded to 128 lanes (half the memory of head-dim-minor). Each device
  runs it on its own shard (shard_map over the batch and heads the logical rules split).
- 'auto':     chosen for the platform the program is *lowered* for (lax.platform_dependent), so a
  step lowered for CUDA or TPU on a CPU host takes that platform's choice: on CUDA cudnn where it
  can run these inputs, else xla; on TPU splash for sequences of SPLASH_MIN_LENGTH tokens or more
  where it can run them, else xla (a short sequence's logits are smaller than its padding: the
  demo's 7 visible tokens become 128); explicit on CPU; xla elsewhere. It never raises where XLA
  can run the model.
"""
import functools
import math
from typing import Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

import omnimae_jax

ATTENTION_SETTINGS = ("auto", "xla", "explicit", "cudnn", "splash")
CUDNN_DTYPES = ("bfloat16", "float16")
# cuDNN takes head dims up to 256 on Hopper, 128 before it; 128 holds on every GPU.
CUDNN_MAX_HEAD_DIM = 128
CUDNN_PLATFORMS = ("cuda", "gpu")  # 'gpu' is what a device (and jax.default_backend) reports
SPLASH_DTYPES = ("bfloat16", "float32")
SPLASH_BLOCK = 128  # the kernel's tile along both sequences (its default; a multiple of 128 lanes)
# Every head dim tried from 4 to 256 compiles for v5e in either layout; sequence-minor stores ours
# unpadded.
SPLASH_LAYOUT = splash.QKVLayout.SEQ_MINOR
# 'auto' on TPU: splash from this many tokens. ViT-B on v5e:4x4 (steps' peak per chip): the video
# step at 64 clips (decoder 1568 tokens) 8.7 GiB with splash, 29 GiB of temporaries with XLA; the
# image step at 128 (encoder 20, decoder 196 tokens) 8.5 GiB with splash, 5.6 GiB with XLA.
SPLASH_MIN_LENGTH = 1024
# 'explicit' attends in blocks of at most this many (query, key) pairs: whole sequences while they
# fit, else one sequence's queries in equal chunks. A block's float32 logits (4 MiB) stay in the
# CPU's caches from q·kᵀ through the softmax to the weighted sum, forward and backward. Fwd+bwd of
# one attention on 2 CPU threads, all pairs at once -> blocks (medians, one process): ViT-B video
# decoder (2 clips x 16 heads x 1568 tokens x 24) 636 -> 313 ms, video fine-tuning (2 x 12 x 1568
# x 64) 660 -> 450 ms, image decoder (8 x 16 x 196 x 24) 41 -> 33 ms, image fine-tuning (8 x 12 x
# 197 x 64) 49 -> 42 ms. Blocks of half or twice this size were slower or no faster (image
# decoder 36.5 and 30.2 ms against 29.7; image fine-tuning 44.0 and 58.4 ms against 42.3).
EXPLICIT_BLOCK_PAIRS = 2 ** 20
# Shorter sequences attend in one block, differentiated by autodiff (which keeps the weights): the
# recomputation costs more than the caches save there. Fwd+bwd, one block -> blocks: 8 x 16 heads x
# 256 x 80 (ViT-H images) 102 -> 156 ms, the demo's fine-tuning (32 x 3 x 256 x 64) 69 -> 100 ms;
# 4 x 12 x 392 x 64 75 -> 77 ms; 2 x 16 x 512 x 24 97 -> 51 ms, 2 x 12 x 784 x 64 198 -> 118 ms.
EXPLICIT_BLOCKED_MIN_TOKENS = 384
# Of those, heads this narrow (the MAE decoders' 24) take weights_saved_attention: autodiff's
# gradient of the one block runs two of its four matmuls in transposed forms, slow on XLA:CPU
# when the head dim is small. Fwd+bwd, autodiff -> weights_saved_attention (medians, 2 CPU
# threads): ViT-B image decoder (8 x 16 heads x 196 x 24) 52.4 -> 41.5 ms; tiny's 8 x 4 x 196 x 32
# 11.7 -> 12.1 ms and image fine-tuning's 8 x 12 x 197 x 64 36.5 -> 47.2 ms stay with autodiff.
EXPLICIT_WEIGHTS_SAVED_MAX_HEAD_DIM = 24


def explicit_attention(query, key, value):
  """query, key, value [B, L, H, D] -> [B, L, H, D], written out: from EXPLICIT_BLOCKED_MIN_TOKENS
  tokens block by block (blocked_attention), shorter sequences at once. Under a mesh each device
  attends on its own shard."""
  return on_each_device(_explicit_on_device, query, key, value)


def _explicit_on_device(query, key, value):
  batch, length, heads, head_dim = query.shape
  query = query * jnp.asarray(head_dim ** -0.5, query.dtype)

  def sequences(x):  # [B, L, H, D] -> [B * H, L, D]
    return x.transpose(0, 2, 1, 3).reshape(batch * heads, length, head_dim)

  query, key, value = map(sequences, (query, key, value))
  if length >= EXPLICIT_BLOCKED_MIN_TOKENS:
    out = blocked_attention(query, key, value)
  else:
    out = jax.lax.platform_dependent(query, key, value, default=_one_block,
                                     cpu=functools.partial(_in_cpu_groups, _one_block))
  return out.reshape(batch, heads, length, head_dim).transpose(0, 2, 1, 3)


def _one_block(query, key, value):
  """Scaled [G, L, D] sequences attended in one block: for narrow heads through
  weights_saved_attention, else differentiated by autodiff."""
  if query.shape[-1] <= EXPLICIT_WEIGHTS_SAVED_MAX_HEAD_DIM:
    return weights_saved_attention(query, key, value)
  return _block_forward(query, transposed(key), value)[0]


def cpu_attention_groups(num_sequences: int) -> int:
  """Into how many independent calls _in_cpu_groups splits num_sequences: two per XLA:CPU thread,
  none with one thread (there the split only adds work: 64 -> 74 ms for the ViT-B image decoder's
  attention, fwd+bwd, on one core)."""
  threads = omnimae_jax.usable_cores()
  return 1 if threads == 1 else min(num_sequences, 2 * threads)


def _in_cpu_groups(fn, query, key, value):
  """fn on independent groups of the [G, ...] sequences, concatenated.

  XLA:CPU runs a batched matmul of small matrices on one thread, but independent ops on threads
  of their own. Fwd+bwd of one attention on 2 CPU threads, whole -> 2 -> 4 groups (medians, one
  process): ViT-B image decoder (8 x 16 heads x 196 x 24) 47.4 -> 41.4 -> 36.4 ms, tiny's (8 x 4
  x 196 x 32) 12.3 -> 10.7 -> 10.0 ms, image fine-tuning (8 x 12 x 197 x 64) 62.4 -> 63.1 ->
  55.4 ms. Blocked attention gained nothing from it (2 x 16 x 1568 x 24: 434, 423, 433 ms)."""
  groups = cpu_attention_groups(query.shape[0])
  if groups == 1:
    return fn(query, key, value)
  parts = zip(*(jnp.array_split(x, groups) for x in (query, key, value)))
  return jnp.concatenate([fn(*part) for part in parts])


def block_shape(num_sequences: int, length: int) -> Tuple[int, int]:
  """(sequences, queries) per block of blocked_attention: as many whole sequences as fit
  EXPLICIT_BLOCK_PAIRS and divide num_sequences, else one sequence's queries in equal chunks."""
  pairs = length * length
  if pairs <= EXPLICIT_BLOCK_PAIRS:
    fits = min(EXPLICIT_BLOCK_PAIRS // pairs, num_sequences)
    return max(n for n in range(1, fits + 1) if num_sequences % n == 0), length
  chunks = -(-pairs // EXPLICIT_BLOCK_PAIRS)
  return 1, -(-length // chunks)


def _to_blocks(x, group: int, chunk: int):
  """[N, L, ...] -> [N / group, C, group, chunk, ...], L padded with zeros to C * chunk."""
  num, length = x.shape[:2]
  padded = -(-length // chunk) * chunk
  x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape(num // group, group, padded // chunk, chunk, *x.shape[2:])
  return jnp.swapaxes(x, 1, 2)


def _from_blocks(x, length: int):
  """The inverse of _to_blocks, padding dropped."""
  groups, chunks, group, chunk = x.shape[:4]
  x = jnp.swapaxes(x, 1, 2).reshape(groups * group, chunks * chunk, *x.shape[4:])
  return x[:, :length]


def transposed(x):
  """[..., M, N] -> [..., N, M]."""
  return jnp.swapaxes(x, -1, -2)


def _groups(x, group: int, transpose: bool = False):
  """[N, L, D] -> [N / group, group, L, D], or [..., D, L] transposed."""
  x = x.reshape(x.shape[0] // group, group, *x.shape[1:])
  return transposed(x) if transpose else x


def _block_forward(query, key_t, value):
  """query [G, Q, D], key_t [G, D, L] (transposed: the matmul runs faster on XLA:CPU), value
  [G, L, D] -> out [G, Q, D] and the logits' logsumexp [G, Q].

  The softmax's division is applied to the output instead of the weights (as flash attention
  does): a pass over the weights fewer."""
  logits = jnp.einsum("gqd,gdk->gqk", query, key_t, preferred_element_type=jnp.float32)
  peak = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))  # a shift: no gradient
  weights = jnp.exp(logits - peak)
  total = weights.sum(axis=-1, keepdims=True)
  out = jnp.einsum("gqk,gkd->gqd", weights.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)
  return (out / total).astype(value.dtype), (peak + jnp.log(total))[..., 0]


def _block_backward(key, key_t, value_t, carry, block):
  """One block's query gradient; the key and value gradients are summed over blocks in carry,
  transposed ([G, D, L]), so that every matmul here is a plain [G, M, K] x [G, K, N] one: the
  block's small queries and output gradient are transposed instead of its [G, Q, L] weights
  (fwd+bwd of the ViT-B video decoder's attention, 2 clips x 16 heads x 1568 x 24: 451 -> 349 ms).
  The weights are recomputed from the saved logsumexp instead of being stored."""
  key_grad_t, value_grad_t = carry
  query, out_grad, logsumexp, delta = block
  logits = jnp.einsum("gqd,gdk->gqk", query, key_t)
  weights = jnp.exp(logits - logsumexp[..., None])
  weight_grad = jnp.einsum("gqd,gdk->gqk", out_grad, value_t)
  logit_grad = weights * (weight_grad - delta[..., None])
  value_grad_t = value_grad_t + jnp.einsum("gdq,gqk->gdk", transposed(out_grad), weights)
  key_grad_t = key_grad_t + jnp.einsum("gdq,gqk->gdk", transposed(query), logit_grad)
  return (key_grad_t, value_grad_t), jnp.einsum("gqk,gkd->gqd", logit_grad, key)


@jax.custom_vjp
def blocked_attention(query, key, value):
  """softmax(query keyᵀ) value of already scaled queries, [N, L, D] each, one block of
  block_shape at a time (lax.map): only a block's logits exist at once. The gradient recomputes
  each block's weights (flash attention's scheme); the forward keeps the output and each query's
  logsumexp, not the [N, L, L] weights."""
  return _blocked_forward(query, key, value)[0]


def _blocked_forward(query, key, value):
  num, length, head_dim = query.shape
  group, chunk = block_shape(num, length)

  def one_group(args):
    queries, key_t, group_value = args
    return jax.lax.map(lambda q: _block_forward(q, key_t, group_value), queries)

  out, logsumexp = jax.lax.map(one_group, (_to_blocks(query, group, chunk),
                                           _groups(key, group, transpose=True),
                                           _groups(value, group)))
  out, logsumexp = _from_blocks(out, length), _from_blocks(logsumexp, length)
  return out, (query, key, value, out, logsumexp)


def in_float32(*arrays):
  """The arrays as float32: the gradients below are computed in it, whatever the compute dtype."""
  return tuple(x.astype(jnp.float32) for x in arrays)


def cast_like(grads, inputs):
  """Each gradient in its input's dtype."""
  return tuple(g.astype(x.dtype) for g, x in zip(grads, inputs))


def _blocked_backward(saved, out_grad):
  inputs, (out, logsumexp) = saved[:3], saved[3:]
  query, key, value, out, out_grad = in_float32(*inputs, out, out_grad)
  num, length, head_dim = query.shape
  group, chunk = block_shape(num, length)
  blocks = lambda x: _to_blocks(x, group, chunk)  # noqa: E731
  delta = jnp.sum(out_grad * out, axis=-1)  # [N, L]: d(loss)/d(logits) = w * (dw - delta)

  def one_group(args):
    queries, out_grads, logsumexps, deltas, group_key, key_t, value_t = args
    zeros = jnp.zeros_like(key_t)
    (key_grad_t, value_grad_t), query_grads = jax.lax.scan(
        functools.partial(_block_backward, group_key, key_t, value_t), (zeros, zeros),
        (queries, out_grads, logsumexps, deltas))
    return query_grads, key_grad_t, value_grad_t

  query_grad, key_grad_t, value_grad_t = jax.lax.map(one_group, (
      blocks(query), blocks(out_grad), blocks(logsumexp), blocks(delta), _groups(key, group),
      _groups(key, group, transpose=True), _groups(value, group, transpose=True)))
  untranspose = lambda g: transposed(g).reshape(num, length, head_dim)  # noqa: E731
  grads = (_from_blocks(query_grad, length), untranspose(key_grad_t), untranspose(value_grad_t))
  return cast_like(grads, inputs)


blocked_attention.defvjp(_blocked_forward, _blocked_backward)


@jax.custom_vjp
def weights_saved_attention(query, key, value):
  """softmax(query keyᵀ) value of already scaled queries, [G, L, D] each, in one block. The
  gradient keeps the normalised weights and runs every matmul as a plain [G, M, K] x [G, K, N]
  one: the small queries, values and output gradient are transposed, never the [G, L, L]
  weights."""
  return _weights_saved_forward(query, key, value)[0]


def _weights_saved_forward(query, key, value):
  logits = jnp.einsum("gqd,gdk->gqk", query, transposed(key), preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("gqk,gkd->gqd", weights.astype(value.dtype), value,
                   preferred_element_type=jnp.float32).astype(value.dtype)
  return out, (query, key, value, weights, out)


def _weights_saved_backward(saved, out_grad):
  inputs, (weights, out) = saved[:3], saved[3:]
  query, key, value, out, out_grad = in_float32(*inputs, out, out_grad)
  weight_grad = jnp.einsum("gqd,gdk->gqk", out_grad, transposed(value))
  delta = jnp.sum(out_grad * out, axis=-1, keepdims=True)
  logit_grad = weights * (weight_grad - delta)
  grads = (jnp.einsum("gqk,gkd->gqd", logit_grad, key),
           transposed(jnp.einsum("gdq,gqk->gdk", transposed(query), logit_grad)),
           transposed(jnp.einsum("gdq,gqk->gdk", transposed(out_grad), weights)))
  return cast_like(grads, inputs)


weights_saved_attention.defvjp(_weights_saved_forward, _weights_saved_backward)


def xla_attention(query, key, value):
  return jax.nn.dot_product_attention(query, key, value, implementation="xla")


def cudnn_attention(query, key, value):
  return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")


def splash_block_sizes() -> splash.BlockSizes:
  block, layout = SPLASH_BLOCK, SPLASH_LAYOUT
  return splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                           block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                           block_q_dq=block, block_kv_dq=block,
                           q_layout=layout, k_layout=layout, v_layout=layout)


def to_kernel_layout(x, padded_length: int):
  """[B, L, H, D] -> [B, H, L', D] with zero tokens appended up to L'."""
  padding = ((0, 0), (0, padded_length - x.shape[1]), (0, 0), (0, 0))
  return jnp.pad(x, padding).transpose(0, 2, 1, 3)


def padding_segments(length: int, padded_length: int):
  """Segment ids that give the padded keys zero weight: they alone are segment 1. Padded queries
  stay in segment 0, so their rows are ordinary finite softmaxes (dropped afterwards) rather than
  empty ones whose gradient would be NaN. None when nothing is padded."""
  if length == padded_length:
    return None
  kv = (jnp.arange(padded_length) >= length).astype(jnp.int32)
  return splash.SegmentIds(q=jnp.zeros((padded_length,), jnp.int32), kv=kv)


def splash_on_device(query, key, value, interpret: bool = False):
  """The splash kernel on one device's [B, L, H, D] shards; the kernel itself takes one sample."""
  _, length, heads, head_dim = query.shape
  padded = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK
  mask = splash.MultiHeadMask([splash.FullMask((padded, padded))] * heads)
  kernel = splash.make_splash_mha(mask, block_sizes=splash_block_sizes(), head_shards=1,
                                  q_seq_shards=1, interpret=interpret)
  query = query * jnp.asarray(head_dim ** -0.5, query.dtype)  # the kernel does not scale
  inputs = [to_kernel_layout(x, padded) for x in (query, key, value)]
  out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(*inputs, padding_segments(length, padded))
  return out[:, :, :length].transpose(0, 2, 1, 3)


def token_spec() -> jax.sharding.PartitionSpec:
  """How the active logical-axis rules split [B, L, H, D] activations over the mesh."""
  return nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))


def on_each_device(fn, query, key, value):
  """fn(query, key, value) on each device's shard of [B, L, H, D] activations (shard_map): the
  batch and head splits of the logical rules where they are even, every token and head dim whole
  (a split the rules would make otherwise is gathered first). Without a mesh or on a one-device
  mesh, fn itself: shard_map's gradient would sum over the size-1 axes (the ViT-B step on one CPU
  ran 16 all-reduces that move nothing)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(query, key, value)
  batch_axes, _, heads_axes, _ = token_spec()
  even = lambda axes, size: axes if size % split_count(mesh, axes) == 0 else None  # noqa: E731
  spec = jax.sharding.PartitionSpec(even(batch_axes, query.shape[0]), None,
                                    even(heads_axes, query.shape[2]), None)
  return jax.shard_map(fn, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(
      query, key, value)


def splash_attention(query, key, value, interpret: bool = False):
  """query, key, value [B, L, H, D] -> [B, L, H, D] by the splash kernel. A Pallas call cannot be
  partitioned by XLA (it would gather the whole batch onto every device), so under a mesh each
  device runs it on its own shard. interpret: Pallas' interpreter instead (any platform; tests)."""
  on_device = functools.partial(splash_on_device, interpret=interpret)
  return on_each_device(on_device, query, key, value)


IMPLEMENTATIONS = {"explicit": explicit_attention, "xla": xla_attention, "cudnn": cudnn_attention,
                   "splash": splash_attention}


def dtype_problems(dtype, allowed, kernel: str) -> List[str]:
  name = jnp.dtype(dtype).name
  return [] if name in allowed else [f"compute dtype {name} ({kernel} needs one of {allowed})"]


def cudnn_problems(dtype, head_dims: Dict[str, int], length: Optional[int] = None) -> List[str]:
  """Why cuDNN's fused attention cannot take this dtype, these head dims and this sequence length
  (empty: it can).

  An odd length: jax 0.10.2 hands cuDNN's training kernel an empty bias, which it then treats as
  a bias, and biased training needs even lengths; the ViT-B video encoder's 79 visible tokens
  would raise NotImplementedError while tracing.
  """
  problems = dtype_problems(dtype, CUDNN_DTYPES, "cuDNN")
  for name, head_dim in head_dims.items():
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
      problems.append(f"{name} dim {head_dim} (cuDNN needs a multiple of 8, at most "
                      f"{CUDNN_MAX_HEAD_DIM})")
  if length is not None and length % 2:
    problems.append(f"sequence length {length} (cuDNN's training kernel needs an even length)")
  return problems


def head_dims(model_cfg) -> Dict[str, int]:
  return {"encoder head": model_cfg.width // model_cfg.num_heads,
          "decoder head": model_cfg.decoder_width // model_cfg.decoder_heads}


def check_attention(model_cfg, platform: str) -> None:
  """Raises ValueError, before anything is compiled, when model.attention='cudnn' or 'splash'
  cannot run on `platform` ('cpu', 'gpu', 'cuda', 'tpu', ...) with this compute dtype (and, for
  cuDNN, these head dims). The error names the field and what is allowed.

  Pure Python: the training loop calls it with its mesh's platform.
  """
  setting = model_cfg.attention
  if setting not in ATTENTION_SETTINGS:
    raise ValueError(f"model.attention={setting!r}; allowed: {ATTENTION_SETTINGS}")
  if setting == "cudnn":
    problems = [] if platform in CUDNN_PLATFORMS else [f"platform {platform!r} (cuDNN needs CUDA)"]
    problems += cudnn_problems(model_cfg.compute_dtype, head_dims(model_cfg))
    allowed = (f"'cudnn' with compute_dtype in {CUDNN_DTYPES} and head dims that are multiples of "
               f"8 up to {CUDNN_MAX_HEAD_DIM} on a CUDA GPU")
  elif setting == "splash":
    problems = [] if platform == "tpu" else [f"platform {platform!r} (splash needs a TPU)"]
    problems += dtype_problems(model_cfg.compute_dtype, SPLASH_DTYPES, "splash")
    allowed = f"'splash' with compute_dtype in {SPLASH_DTYPES} on a TPU"
  else:
    return
  if problems:
    raise ValueError(f"model.attention={setting!r} cannot run here: {'; '.join(problems)}. "
                     f"Allowed: 'auto' (cuDNN on CUDA where it can run, splash on TPU for long "
                     f"sequences, XLA otherwise), 'xla', 'explicit', or {allowed}")


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
  return (not cudnn_problems(query.dtype, {"head": query.shape[-1]}, query.shape[1])
          and not sequence_or_head_dim_sharded() and cudnn_available())


def mesh_axes(entry) -> tuple:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple of names)."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def split_count(mesh, entry) -> int:
  """Into how many parts one PartitionSpec entry splits its dimension on `mesh`."""
  return math.prod(mesh.shape[axis] for axis in mesh_axes(entry))


def uneven_splits(shape) -> List[str]:
  """The dims of [B, L, H, D] activations the active mesh would split unevenly (shard_map, which
  splash runs under, needs even splits; XLA's partitioner would pad)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return []
  problems = []
  for name, size, entry in zip(("batch", "length", "heads", "kv"), shape, token_spec()):
    parts = split_count(mesh, entry)
    if size % parts:
      problems.append(f"{name} {size} split in {parts}")
  return problems


def splash_problems(query) -> List[str]:
  """Why the splash kernel cannot take these queries [B, L, H, D] under the active mesh and
  logical rules (empty: it can)."""
  problems = dtype_problems(query.dtype, SPLASH_DTYPES, "splash")
  if sequence_or_head_dim_sharded():  # each device would attend within its part of the sequence
    problems.append("a sequence or head dim split over the mesh (splash takes batch and head "
                    "splits only)")
  return problems + uneven_splits(query.shape)


def fused_kernel_problems(setting: str, query) -> List[str]:
  """Why the fused kernel `setting` names cannot take these queries (empty: it can, or the
  setting names no fused kernel)."""
  if setting == "cudnn":
    return cudnn_problems(query.dtype, {"head": query.shape[-1]}, query.shape[1])
  if setting == "splash":
    return splash_problems(query)
  return []


def may_lower_for(platform: str) -> bool:
  """Whether the program being traced may be lowered for `platform`: the active mesh's devices
  fix its platform; without a mesh any platform may still be asked for (lowering_platforms).
  'auto' traces the splash branch only then: on a CPU mesh it would cost tracing time for a
  branch that is never lowered."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device is None or device.platform == platform


def splash_pays_off(query) -> bool:
  """Whether 'auto' takes splash on TPU for these queries [B, L, H, D]: it can, the program may
  be lowered for TPU, and the sequence is long enough that dropping the [L, L] logits saves more
  than padding to 128-token tiles costs."""
  return (query.shape[1] >= SPLASH_MIN_LENGTH and may_lower_for("tpu")
          and not splash_problems(query))


def attend(query, key, value, setting: str = "auto"):
  """query, key, value [B, L, H, D] -> [B, L, H, D] with the kernel `setting` names."""
  if setting not in ATTENTION_SETTINGS:
    raise ValueError(f"model.attention={setting!r}; allowed: {ATTENTION_SETTINGS}")
  problems = fused_kernel_problems(setting, query)
  if problems:
    raise ValueError(f"model.attention={setting!r} cannot take {'; '.join(problems)}; use "
                     f"'auto', 'xla' or 'explicit'")
  if setting != "auto":
    return IMPLEMENTATIONS[setting](query, key, value)
  on_cuda = cudnn_attention if cudnn_fits(query) else xla_attention
  on_tpu = splash_attention if splash_pays_off(query) else xla_attention
  return jax.lax.platform_dependent(query, key, value, cpu=explicit_attention, cuda=on_cuda,
                                    tpu=on_tpu, default=xla_attention)
