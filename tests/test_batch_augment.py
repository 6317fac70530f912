"""On-device batch augmentation (omnimae_jax/train/batch_augment.py): timm's mixup/cutmix/label
smoothing and random erasing, and shard-local mixing on the 8 fake devices.

Calls go through jax.jit: eager JAX compiles every op on its own, which costs more here."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnimae_jax import pixels as pixel_utils
from omnimae_jax.train import batch_augment, sharding

NUM_CLASSES = 5
SMOOTHING = 0.1


def _batch(batch=6, shape=(8, 10, 3), seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.normal(size=(batch,) + shape).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  return pixels, labels, np.ones(batch, bool)


def _timm_targets(labels, lam):
  """timm mixup_target by hand: smoothed one-hot of the batch and of its reverse, mixed."""
  off = SMOOTHING / NUM_CLASSES
  one_hot = np.full((len(labels), NUM_CLASSES), off)
  one_hot[np.arange(len(labels)), labels] = 1.0 - SMOOTHING + off
  return lam * one_hot + (1 - lam) * one_hot[::-1]


_apply_mix = jax.jit(functools.partial(batch_augment.apply_mix, num_classes=NUM_CLASSES,
                                       label_smoothing=SMOOTHING))


@functools.lru_cache
def _jitted(fn, **kwargs):
  return jax.jit(functools.partial(fn, **kwargs))


def _erasing(key, pixels, **kwargs):
  return _jitted(batch_augment.random_erasing, **kwargs)(key, pixels)


def _apply(pixels, labels, valid, lam, use_cutmix, box=(0, 0, 0, 0)):
  params = batch_augment.MixParams(jnp.float32(lam), jnp.asarray(use_cutmix),
                                   jnp.asarray(box, jnp.int32))
  return _apply_mix(pixels, labels, valid, params)


def test_mixup_matches_timm_by_hand():
  pixels, labels, valid = _batch()
  out, targets = _apply(pixels, labels, valid, 0.3, False)
  np.testing.assert_allclose(out, 0.3 * pixels + 0.7 * pixels[::-1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(targets, _timm_targets(labels, 0.3), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.sum(targets, 1), 1.0, rtol=1e-6)


def test_cutmix_matches_timm_by_hand_on_images_and_videos():
  pixels, labels, valid = _batch()
  box = (2, 6, 3, 8)  # rows 2..5, columns 3..7
  lam = 1 - 4 * 5 / (8 * 10)
  out, targets = _apply(pixels, labels, valid, lam, True, box)
  expected = pixels.copy()
  expected[:, 2:6, 3:8] = pixels[::-1, 2:6, 3:8]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_allclose(targets, _timm_targets(labels, lam), rtol=1e-6, atol=1e-7)

  video, labels, valid = _batch(shape=(3, 8, 10, 3))
  out, _ = _apply(video, labels, valid, lam, True, box)
  expected = video.copy()
  expected[:, :, 2:6, 3:8] = video[::-1, :, 2:6, 3:8]  # the same box on every frame
  np.testing.assert_array_equal(out, expected)


def _keys(count):
  return jax.random.split(jax.random.PRNGKey(0), count)


def test_cutmix_box_and_corrected_lambda():
  height, width = 12, 20
  sample = lambda key: batch_augment.sample_mix_params(  # noqa: E731
      key, height, width, mixup_alpha=0.0, cutmix_alpha=1.0)
  params = jax.vmap(sample)(_keys(100))
  top, bottom, left, right = np.asarray(params.box).T
  assert np.all(params.use_cutmix)
  assert np.all((0 <= top) & (top <= bottom) & (bottom <= height))
  assert np.all((0 <= left) & (left <= right) & (right <= width))
  np.testing.assert_allclose(params.lam, 1 - (bottom - top) * (right - left) / (height * width),
                             rtol=1e-6)
  # timm rand_bbox: int(H * sqrt(1 - lam)) rows (cy -+ cut // 2, so even) about a uniform
  # centre, clipped to the image.
  lam = 0.36
  cut_h, cut_w = int(height * 0.8), int(width * 0.8)
  boxes = jax.vmap(lambda key: batch_augment.cutmix_box(key, lam, height, width))(_keys(100))
  top, bottom, left, right = np.asarray(boxes).T
  assert np.all(bottom - top <= 2 * (cut_h // 2)) and np.all(right - left <= 2 * (cut_w // 2))
  inside = (0 < top) & (bottom < height)
  assert inside.any() and np.all((bottom - top)[inside] == 2 * (cut_h // 2))
  inside = (0 < left) & (right < width)
  assert inside.any() and np.all((right - left)[inside] == 2 * (cut_w // 2))


def test_mix_params_follow_the_switch_and_prob():
  params = jax.vmap(lambda key: batch_augment.sample_mix_params(key, 16, 16))(_keys(400))
  cutmix, lams = np.asarray(params.use_cutmix), np.asarray(params.lam)
  assert 0.4 < cutmix.mean() < 0.6  # switch_prob 0.5
  assert np.all((lams >= 0) & (lams <= 1))
  assert len(np.unique(lams[~cutmix])) == np.sum(~cutmix)  # mixup: a continuous Beta(0.8, 0.8)
  never = jax.vmap(lambda key: batch_augment.sample_mix_params(key, 16, 16, prob=0.0))(_keys(8))
  assert np.all(never.lam == 1.0) and not np.any(never.use_cutmix)


@pytest.mark.parametrize("video", [False, True])
def test_prob_zero_is_identity_with_smoothed_targets(video):
  pixels, labels, valid = _batch(shape=(2, 8, 10, 3) if video else (8, 10, 3))
  mix = _jitted(batch_augment.mixup_cutmix, num_classes=NUM_CLASSES, prob=0.0,
                label_smoothing=SMOOTHING)
  for seed in range(3):
    out, targets = mix(jax.random.PRNGKey(seed), pixels, labels, valid)
    np.testing.assert_array_equal(out, pixels)
    np.testing.assert_allclose(targets, _timm_targets(labels, 1.0), rtol=1e-6, atol=1e-7)


def test_odd_batch_and_invalid_samples():
  pixels, labels, valid = _batch(batch=5)
  labels[1], valid[1] = -1, False
  out, targets = _apply(pixels, labels, valid, 0.3, False)
  # omnivision's CutMixUp mixes the first B-1 of an odd batch and leaves the last as it is.
  np.testing.assert_array_equal(out[4], pixels[4])
  np.testing.assert_allclose(out[0], 0.3 * pixels[0] + 0.7 * pixels[3], rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(targets))
  np.testing.assert_allclose(np.sum(targets, 1), 1.0, rtol=1e-6)
  # An invalid sample's share is uniform (its label is a placeholder); samples 1 and 2 are
  # partners in a batch of 5.
  smoothed = _timm_targets(labels.clip(0), 1.0)
  np.testing.assert_allclose(targets[1], 0.3 / NUM_CLASSES + 0.7 * smoothed[2], rtol=1e-6)
  np.testing.assert_allclose(targets[2], 0.3 * smoothed[2] + 0.7 / NUM_CLASSES, rtol=1e-6)


@pytest.mark.parametrize("mesh_axes", [(("data", 8), ("model", 1)), (("data", 4), ("model", 2))])
def test_shard_local_mixing_stays_within_each_shard(mesh_axes):
  mesh = sharding.make_mesh(mesh_axes)
  shards = mesh.shape["data"]
  batch, per_shard = 16, 16 // mesh.shape["data"]
  # Sample b of shard s holds the constant 100 s + b: a mixed sample shows where it came from.
  sample_shard = np.arange(batch) // per_shard
  values = 100.0 * sample_shard + np.arange(batch)
  pixels = np.broadcast_to(values[:, None, None, None], (batch, 8, 8, 3)).astype(np.float32)
  labels = np.arange(batch, dtype=np.int32)

  def mix(key, pixels, labels, valid):
    return batch_augment.mixup_cutmix(key, pixels, labels, valid, num_classes=batch,
                                      label_smoothing=0.0, mixup_alpha=0.8, cutmix_alpha=0.0)

  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))  # noqa: E731
  mixed = jax.jit(batch_augment.shard_local(mix, mesh))
  out, targets = mixed(jax.random.PRNGKey(0), put(pixels), put(labels), put(np.ones(batch, bool)))
  out, targets = np.asarray(out), np.asarray(targets)
  for b in range(batch):
    own = values[sample_shard == sample_shard[b]]
    assert own.min() - 1e-3 <= out[b].min() and out[b].max() <= own.max() + 1e-3
    assert np.all(targets[b][sample_shard != sample_shard[b]] == 0)
  # Each shard drew its own lambda: a sample's share of its own label.
  lams = targets[np.arange(0, batch, per_shard), np.arange(0, batch, per_shard)]
  assert len(np.unique(np.round(lams, 6))) == shards


def _erased(pixels, out):
  return np.asarray(out) != np.asarray(pixels)


def test_random_erasing_prob_zero_and_same_key():
  pixels = _batch(batch=4, shape=(16, 16, 3))[0] + 10.0  # no erased value is near 10
  out = _erasing(jax.random.PRNGKey(0), pixels, prob=0.0)
  np.testing.assert_array_equal(out, pixels)
  first = _erasing(jax.random.PRNGKey(3), pixels, prob=0.5)
  np.testing.assert_array_equal(first, _erasing(jax.random.PRNGKey(3), pixels, prob=0.5))
  other = _erasing(jax.random.PRNGKey(4), pixels, prob=0.5)
  assert not np.array_equal(first, other)


def test_random_erasing_erases_one_box_in_range():
  height, width, batch = 32, 40, 64
  pixels = np.full((batch, height, width, 3), 10.0, np.float32)
  out = _erasing(jax.random.PRNGKey(0), pixels, prob=1.0, mode="const")
  for erased in _erased(pixels, out):
    assert np.all(erased == erased[..., :1])  # all channels
    rows, cols = np.nonzero(erased[..., 0])
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box_h, box_w = bottom - top, right - left
    assert erased[top:bottom, left:right].all() and erased.sum() == box_h * box_w * 3
    assert box_h < height and box_w < width
    # area uniform in [0.02, 1/3] of the image before rounding each side to whole pixels
    area = box_h * box_w / (height * width)
    slack = (box_h + box_w) / (height * width)
    assert 0.02 - slack <= area <= 1 / 3 + slack
    assert 0.3 * 0.8 <= box_w / box_h <= 1 / 0.3 / 0.8


def test_random_erasing_modes():
  pixels = np.full((8, 16, 16, 3), 10.0, np.float32)
  key = jax.random.PRNGKey(1)
  black = np.asarray(_erasing(key, pixels, prob=1.0, mode="black"))
  expected_black = pixel_utils.normalize(np.zeros(3, np.uint8))
  np.testing.assert_allclose(black[black[..., 0] != 10.0], np.broadcast_to(
      expected_black, black[black[..., 0] != 10.0].shape), rtol=1e-6)
  rand = np.asarray(_erasing(key, pixels, prob=1.0, mode="rand"))
  pixel = np.asarray(_erasing(key, pixels, prob=1.0, mode="pixel"))
  for sample in range(8):
    colours = rand[sample][rand[sample, ..., 0] != 10.0]
    assert len(colours) and np.all(colours == colours[:1])  # one colour per box
    noise = pixel[sample][pixel[sample, ..., 0] != 10.0]
    assert len(np.unique(noise)) == noise.size  # fresh values per pixel
  with pytest.raises(ValueError, match="mode='zeros'"):
    batch_augment.random_erasing(key, pixels, mode="zeros")
  with pytest.raises(ValueError, match="video=True"):
    batch_augment.random_erasing(key, pixels, video=True)


def test_random_erasing_cube_is_the_same_box_on_every_frame():
  video = np.full((6, 4, 16, 16, 3), 10.0, np.float32)
  out = np.asarray(_erasing(jax.random.PRNGKey(2), video, prob=1.0, mode="pixel", video=True))
  erased = out != 10.0
  for sample in range(6):
    assert erased[sample].any()
    assert all(np.array_equal(erased[sample, 0], erased[sample, t]) for t in range(4))
    # pixel mode draws fresh noise on each frame (omnivision calls _get_pixels per frame)
    assert not np.array_equal(out[sample, 0], out[sample, 1])
