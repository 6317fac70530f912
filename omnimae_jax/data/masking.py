"""Token masks made in the input pipeline (SPEC §2, DESIGN §3): True = masked (dropped, predicted).

Tokens are indexed in raster order (t, h, w): index = t*H'*W' + h*W' + w. Every kind masks a number
of tokens fixed by (kind, grid, ratio), so every sample of a modality has the same visible count and
the model's shapes are static. All sampling is stateless: the same `seed` (a shape-[2] integer
tensor, as for tf.random.stateless_*) gives the same mask.
"""
import math

from omnimae_jax.data._tf import tf

KINDS = ("random", "tube", "causal", "frame")


def _check(kind, grid, ratio):
  if kind not in KINDS:
    raise ValueError(f"mask kind must be one of {KINDS}, got {kind!r}")
  if len(grid) != 3 or min(grid) < 1:
    raise ValueError(f"grid must be a (T', H', W') token grid of positive sizes, got {grid!r}")
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"mask ratio must be in [0, 1), got {ratio!r}")


def num_masked(kind, grid, ratio):
  """Exact number of masked tokens (a Python int, known before any data is read)."""
  _check(kind, grid, ratio)
  time_slices, height, width = grid
  num_tokens = time_slices * height * width
  masked_total = int(ratio * num_tokens)
  if kind in ("random", "causal"):
    return masked_total
  if kind == "tube":
    # One spatial mask of int(masked_total / T') tokens, repeated over every time slice.
    return int(masked_total / time_slices) * time_slices
  return math.floor(time_slices * ratio) * height * width  # "frame": whole time slices


def num_visible(kind, grid, ratio):
  """Number of visible tokens, i.e. the static length of `keep_idx`."""
  return math.prod(grid) - num_masked(kind, grid, ratio)


def _random_subset(num_items, num_chosen, seed):
  """Bool [num_items] with exactly `num_chosen` True entries, uniformly chosen."""
  scores = tf.random.stateless_uniform([num_items], seed=seed)
  chosen = tf.argsort(scores)[:num_chosen]
  return tf.scatter_nd(chosen[:, None], tf.ones([num_chosen], tf.bool), [num_items])


def sample_mask(kind, grid, ratio, seed):
  """Bool tf.Tensor [T'*H'*W'], True = masked, with exactly `num_masked(kind, grid, ratio)` Trues.

  random: int(ratio*N) tokens anywhere. tube: int(int(ratio*N)/T') tokens of one H'xW' slice,
  the same in every time slice. causal: the last int(ratio*N) tokens in raster order (the seed is
  unused). frame: floor(T'*ratio) whole time slices.
  """
  _check(kind, grid, ratio)
  time_slices, height, width = grid
  num_tokens = time_slices * height * width
  seed = tf.convert_to_tensor(seed)
  if kind == "random":
    return _random_subset(num_tokens, int(ratio * num_tokens), seed)
  if kind == "causal":
    num_visible_tokens = num_tokens - int(ratio * num_tokens)
    return tf.range(num_tokens) >= num_visible_tokens
  if kind == "tube":
    per_slice = int(int(ratio * num_tokens) / time_slices)
    slice_mask = _random_subset(height * width, per_slice, seed)  # [H'*W']
    return tf.tile(slice_mask, [time_slices])
  masked_slices = _random_subset(time_slices, math.floor(time_slices * ratio), seed)  # [T']
  return tf.repeat(masked_slices, height * width)


def keep_indices(mask, num_visible_tokens):
  """Ascending raster indices of the visible tokens: int32 [num_visible_tokens]."""
  visible = tf.cast(tf.where(tf.logical_not(mask))[:, 0], tf.int32)
  return tf.ensure_shape(visible, [num_visible_tokens])


def sample_mask_and_keep_indices(kind, grid, ratio, seed):
  """(mask bool [N], keep_idx int32 [N_vis]) for one sample."""
  mask = sample_mask(kind, grid, ratio, seed)
  return mask, keep_indices(mask, num_visible(kind, grid, ratio))
