"""Position tables at other input sizes match PyTorch's bicubic F.interpolate (SPEC §1.2)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnimae_jax import models
from omnimae_jax.models import layers


def keys_kernel(x, a=-0.75):
  """Keys' cubic convolution kernel W(x), as PyTorch's bicubic uses it (a = -0.75)."""
  x = np.abs(x)
  inner = (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
  outer = a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
  return np.where(x <= 1, inner, np.where(x < 2, outer, 0.0))


def reference_taps(in_size, out_size, scale_factor):
  """For each output index: the 4 source indices (clamped to the border) and their weights, with
  the half-pixel source coordinate (i + 0.5) / scale_factor - 0.5 (align_corners=False)."""
  source = (np.arange(out_size) + 0.5) / scale_factor - 0.5
  base = np.floor(source).astype(int)
  taps = base[:, None] + np.arange(-1, 3)[None]  # [out, 4]
  weights = keys_kernel(source[:, None] - taps)
  return np.clip(taps, 0, in_size - 1), weights


def reference_interpolate(image, out_h, out_w, factor_h, factor_w):
  """F.interpolate(mode='bicubic', scale_factor=...) of an [H, W, D] array, gathered directly."""
  rows, row_weights = reference_taps(image.shape[0], out_h, factor_h)
  cols, col_weights = reference_taps(image.shape[1], out_w, factor_w)
  out = np.zeros((out_h, out_w, image.shape[2]))
  for i in range(4):
    for j in range(4):
      out += (row_weights[:, i, None, None] * col_weights[None, :, j, None]
              * image[rows[:, i]][:, cols[:, j]])
  return out


def table_slices(table_grid, dim):
  t, h, w = table_grid
  return layers.sincos_table(t * h * w, dim).astype(np.float64).reshape(t, h, w, dim)


# (patch side, table side at 224 px, width, input px): ViT-B/L 16x16 and ViT-H 14x14 patches.
CASES = ([(16, 14, 768, px) for px in (160, 192, 256, 384)]
         + [(14, 16, 1280, px) for px in (168, 280, 336, 448, 518)])


@pytest.mark.parametrize("patch,side,dim,px", CASES)
def test_image_table_matches_pytorch_bicubic(patch, side, dim, px):
  grid = px // patch
  ours = np.asarray(layers.position_table((1, grid, grid), (8, side, side), dim))
  # The official call: t=0 slice, scale_factor = sqrt(new tokens / table tokens).
  factor = math.sqrt(grid * grid / (side * side))
  expected = reference_interpolate(table_slices((8, side, side), dim)[0], grid, grid, factor,
                                   factor)
  assert ours.shape == (grid * grid, dim)
  assert np.abs(ours - expected.reshape(-1, dim)).max() < 1e-5


def test_video_slices_are_each_resized_the_same_way():
  ours = np.asarray(layers.position_table((4, 12, 12), (8, 14, 14), 64)).reshape(4, 12, 12, 64)
  slices = table_slices((8, 14, 14), 64)
  for t in range(4):
    expected = reference_interpolate(slices[t], 12, 12, 12 / 14, 12 / 14)
    assert np.abs(ours[t] - expected).max() < 1e-5


def test_non_square_grid_uses_a_factor_per_axis():
  # The official code supports square grids only; we resize each axis by its own ratio.
  ours = np.asarray(layers.position_table((1, 10, 16), (8, 14, 14), 32)).reshape(10, 16, 32)
  expected = reference_interpolate(table_slices((8, 14, 14), 32)[0], 10, 16, 10 / 14, 16 / 14)
  assert np.abs(ours - expected).max() < 1e-5


def test_given_scale_factor_sets_the_taps_not_the_size_ratio():
  # PyTorch uses 1 / scale_factor in the source coordinate when one is passed, even when
  # floor(in * scale_factor) is another size: 14 -> 10 with factor 0.7 differs from 10 / 14.
  signal = np.random.default_rng(0).normal(size=(14, 1, 1))
  for factor in (0.7, None):
    matrix = layers.torch_bicubic_matrix(14, 10, factor)
    expected = reference_interpolate(signal, 10, 1, factor or 10 / 14, 1.0)[:, 0, 0]
    # (PyTorch, and so the matrix, forms the source coordinate in float32.)
    np.testing.assert_allclose(matrix @ signal[:, 0, 0], expected, atol=1e-5)
  assert not np.allclose(layers.torch_bicubic_matrix(14, 10, 0.7),
                         layers.torch_bicubic_matrix(14, 10, None))


def test_interpolation_matrix_rows_sum_to_one_and_native_size_is_identity():
  for size, out in ((14, 10), (14, 24), (16, 37)):
    np.testing.assert_allclose(layers.torch_bicubic_matrix(size, out, out / size).sum(1), 1.0,
                               atol=1e-6)
  np.testing.assert_array_equal(layers.torch_bicubic_matrix(14, 14, 1.0), np.eye(14))


def test_native_size_table_is_untouched():
  table = layers.sincos_table(1568, 768)
  np.testing.assert_array_equal(layers.position_table((8, 14, 14), (8, 14, 14), 768), table)
  np.testing.assert_array_equal(layers.position_table((1, 14, 14), (8, 14, 14), 768), table[:196])


def test_temporal_interpolation_is_refused():
  with pytest.raises(ValueError, match="cannot be interpolated in time"):
    layers.position_table((16, 12, 12), (8, 14, 14), 64)


def test_models_run_at_other_image_and_video_sizes():
  # The table grid is (2, 4, 4) (64 px, 4 frames); inputs of 96 px and 48x80 px go through.
  # One block (the position tables do not depend on depth); jitted: one compile per shape.
  config = dict(img_size=64, num_frames=4, num_classes=5, depth=1)
  classifier = models.build("tiny", "classifier", **config)
  variables = jax.jit(classifier.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  apply = jax.jit(classifier.apply)
  for shape in ((2, 96, 96, 3), (2, 4, 96, 96, 3), (2, 48, 80, 3), (1, 2, 32, 32, 3)):
    logits = apply(variables, jnp.ones(shape))
    assert logits.shape == (shape[0], 5) and bool(jnp.isfinite(logits).all()), shape
  pretrain = models.build("tiny", decoder_depth=1, **config)
  mask = jnp.arange(36)[None] >= 9  # a 96 px image: 6 x 6 tokens, 9 visible
  keep_idx = jnp.arange(9)[None]
  variables = jax.jit(pretrain.init)(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3)), mask,
                                     keep_idx)
  pred = jax.jit(pretrain.apply)(variables, jnp.ones((1, 96, 96, 3)), mask, keep_idx)
  assert pred.shape == (1, 36, 3 * 2 * 16 * 16)
