"""Mask properties for every kind (SPEC §2): exact counts, structure, determinism."""
import numpy as np
import pytest

from omnimae_jax.data import masking
from omnimae_jax.data._tf import tf

VIDEO_GRID = (8, 14, 14)  # ViT-B, 16 frames at 224
IMAGE_GRID = (1, 14, 14)


def _mask(kind, grid, ratio, seed=(1, 2)):
  return masking.sample_mask(kind, grid, ratio, tf.constant(seed, tf.int64)).numpy()


@pytest.mark.parametrize("grid, ratio, expected_masked, expected_visible", [
    (VIDEO_GRID, 0.95, 1489, 79),
    (VIDEO_GRID, 0.90, 1411, 157),
    (IMAGE_GRID, 0.90, 176, 20),
    (IMAGE_GRID, 0.75, 147, 49),
    ((8, 16, 16), 0.95, 1945, 103),  # ViT-H video
    ((1, 16, 16), 0.90, 230, 26),  # ViT-H image
])
def test_random_mask_counts_match_the_spec_table(grid, ratio, expected_masked, expected_visible):
  mask = _mask("random", grid, ratio)
  assert mask.dtype == np.bool_ and mask.shape == (np.prod(grid),)
  assert mask.sum() == expected_masked == masking.num_masked("random", grid, ratio)
  assert masking.num_visible("random", grid, ratio) == expected_visible


def test_tube_mask_is_one_spatial_mask_repeated_over_time():
  mask = _mask("tube", VIDEO_GRID, 0.9).reshape(VIDEO_GRID)
  per_slice = int(int(0.9 * 1568) / 8)  # 176
  assert (mask == mask[:1]).all()
  assert mask[0].sum() == per_slice
  assert mask.sum() == 8 * per_slice == masking.num_masked("tube", VIDEO_GRID, 0.9)


def test_tube_mask_on_an_image_is_a_random_mask_of_the_same_count():
  assert _mask("tube", IMAGE_GRID, 0.9).sum() == _mask("random", IMAGE_GRID, 0.9).sum() == 176


def test_causal_mask_hides_the_last_tokens_in_raster_order():
  mask = _mask("causal", VIDEO_GRID, 0.9)
  num_masked = int(0.9 * 1568)
  np.testing.assert_array_equal(mask, np.arange(1568) >= 1568 - num_masked)
  np.testing.assert_array_equal(mask, _mask("causal", VIDEO_GRID, 0.9, seed=(7, 7)))


@pytest.mark.parametrize("ratio, masked_slices", [(0.9, 7), (0.95, 7), (0.5, 4)])
def test_frame_mask_hides_whole_time_slices(ratio, masked_slices):
  mask = _mask("frame", VIDEO_GRID, ratio).reshape(8, -1)
  slice_all_masked = mask.all(axis=1)
  slice_none_masked = ~mask.any(axis=1)
  assert (slice_all_masked | slice_none_masked).all()
  assert slice_all_masked.sum() == masked_slices
  assert masking.num_visible("frame", VIDEO_GRID, ratio) == (8 - masked_slices) * 196


@pytest.mark.parametrize("kind", masking.KINDS)
def test_same_seed_same_mask_and_other_seed_other_mask(kind):
  first = _mask(kind, VIDEO_GRID, 0.9, seed=(3, 4))
  np.testing.assert_array_equal(first, _mask(kind, VIDEO_GRID, 0.9, seed=(3, 4)))
  if kind != "causal":  # causal masks do not depend on the seed
    assert (first != _mask(kind, VIDEO_GRID, 0.9, seed=(3, 5))).any()


@pytest.mark.parametrize("kind", masking.KINDS)
def test_keep_indices_are_the_ascending_visible_positions(kind):
  mask, keep = masking.sample_mask_and_keep_indices(kind, VIDEO_GRID, 0.9,
                                                    tf.constant([5, 6], tf.int64))
  mask, keep = mask.numpy(), keep.numpy()
  assert keep.dtype == np.int32
  assert keep.shape == (masking.num_visible(kind, VIDEO_GRID, 0.9),)
  np.testing.assert_array_equal(keep, np.flatnonzero(~mask))
  assert (np.diff(keep) > 0).all()


def test_random_masks_cover_every_token_over_many_seeds():
  # Uniformity sanity check: over 200 draws at 75% every image token is masked sometimes and
  # visible sometimes, with a mean rate near the ratio.
  masks = np.stack([_mask("random", IMAGE_GRID, 0.75, seed=(0, s)) for s in range(200)])
  rate = masks.mean(axis=0)
  assert 0.6 < rate.min() and rate.max() < 0.9
  assert abs(rate.mean() - 147 / 196) < 1e-6


def test_bad_arguments_are_rejected_with_the_reason():
  with pytest.raises(ValueError, match="mask kind"):
    masking.num_visible("block", VIDEO_GRID, 0.9)
  with pytest.raises(ValueError, match="ratio"):
    masking.sample_mask("random", VIDEO_GRID, 1.0, tf.constant([0, 0]))
  with pytest.raises(ValueError, match="grid"):
    masking.num_masked("random", (14, 14), 0.9)
