"""Reconstruction pictures: un-normalisation with the target patch statistics, pasted-back visible
patches, grey masked patches, panel and file layouts."""
import numpy as np
import pytest
from PIL import Image

from omnimae_jax import pixels as pixel_stats
from omnimae_jax import visualize
from omnimae_jax.models import mae

PATCH = (2, 8, 8)


def sample(shape, seed=0):
  """Normalised model inputs from random uint8 pixels, and a mask with 3 of 4 tokens masked."""
  rng = np.random.default_rng(seed)
  pixels = pixel_stats.normalize(rng.integers(0, 256, shape, dtype=np.uint8))
  batch = shape[0]
  frames = shape[1] // PATCH[0] if len(shape) == 5 else 1
  num_tokens = frames * (shape[-3] // PATCH[1]) * (shape[-2] // PATCH[2])
  mask = np.zeros((batch, num_tokens), bool)
  for row in mask:
    row[rng.permutation(num_tokens)[: 3 * num_tokens // 4]] = True
  return pixels, mask


def unit_clip(pixels):
  clip = pixel_stats.denormalize(pixels)
  return np.repeat(clip[:, None], PATCH[0], axis=1) if clip.ndim == 4 else clip


def pixel_mask(mask, clip_shape):
  _, frames, height, width, _ = clip_shape
  tokens = mask.reshape(-1, frames // PATCH[0], height // PATCH[1], width // PATCH[2])
  return tokens.repeat(PATCH[0], 1).repeat(PATCH[1], 2).repeat(PATCH[2], 3)


@pytest.mark.parametrize("shape", [(2, 16, 24, 3), (2, 4, 16, 24, 3)], ids=["image", "video"])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_the_exact_target_reconstructs_the_input(shape, norm_pix):
  """Predicting the loss target exactly must give back the input everywhere (masked patches via
  the un-normalisation), so the un-normalisation is the loss normalisation's inverse."""
  pixels, mask = sample(shape)
  target = np.asarray(mae.reconstruction_target(pixels, PATCH, norm_pix=norm_pix))
  recon = visualize.reconstruct_pixels(target, pixels, mask, PATCH, norm_pix=norm_pix)
  clip = unit_clip(pixels)
  assert recon.dtype == np.float32 and recon.shape == clip.shape
  np.testing.assert_allclose(recon, np.clip(clip, 0, 1), atol=2e-5)


def test_visible_patches_are_the_input_and_masked_ones_the_prediction():
  pixels, mask = sample((2, 4, 16, 24, 3), seed=1)
  pred = np.random.default_rng(2).standard_normal((2, 12, 2 * 8 * 8 * 3)).astype(np.float32)
  recon = visualize.reconstruct_pixels(pred, pixels, mask, PATCH, norm_pix=False)
  clip = np.clip(unit_clip(pixels), 0, 1)
  where_masked = pixel_mask(mask, clip.shape)
  np.testing.assert_array_equal(recon[~where_masked], clip[~where_masked])
  # norm_pix=False: the prediction is pixels in [0, 1] units, laid out channel fastest
  pred_pixels = pred.reshape(2, 2, 2, 3, 2, 8, 8, 3)  # b, t, h, w, pt, ph, pw, c
  pred_pixels = pred_pixels.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(clip.shape)
  np.testing.assert_allclose(recon[where_masked], np.clip(pred_pixels, 0, 1)[where_masked])


def test_norm_pix_uses_the_target_patch_statistics():
  pixels, mask = sample((1, 16, 16, 3), seed=3)
  pred = np.zeros((1, 4, 2 * 8 * 8 * 3), np.float32)  # zero = the patch's per-channel mean
  recon = visualize.reconstruct_pixels(pred, pixels, mask, PATCH)
  clip = unit_clip(pixels)
  for token in np.flatnonzero(mask[0]):
    h, w = divmod(token, 2)
    patch = clip[0, :, 8 * h:8 * h + 8, 8 * w:8 * w + 8]  # [2, 8, 8, 3]
    np.testing.assert_allclose(recon[0, :, 8 * h:8 * h + 8, 8 * w:8 * w + 8],
                               np.broadcast_to(patch.mean(axis=(0, 1, 2)), patch.shape),
                               atol=1e-6)
  pred = np.ones_like(pred)  # one std above the mean, with the unbiased variance
  recon = visualize.reconstruct_pixels(pred, pixels, mask, PATCH)
  token = np.flatnonzero(mask[0])[0]
  h, w = divmod(token, 2)
  patch = clip[0, :, 8 * h:8 * h + 8, 8 * w:8 * w + 8].reshape(-1, 3)
  expected = patch.mean(0) + np.sqrt(patch.var(0, ddof=1) + 1e-6)
  np.testing.assert_allclose(recon[0, 0, 8 * h, 8 * w], np.clip(expected, 0, 1), atol=1e-6)


def test_masked_pixels_are_grey_where_masked():
  pixels, mask = sample((2, 16, 24, 3), seed=4)
  shown = visualize.masked_pixels(pixels, mask, PATCH)
  clip = np.clip(unit_clip(pixels), 0, 1)
  where_masked = pixel_mask(mask, clip.shape)
  assert shown.shape == (2, 2, 16, 24, 3)
  assert np.all(shown[where_masked] == 0.5)
  np.testing.assert_array_equal(shown[~where_masked], clip[~where_masked])


def test_comparison_frames_layout():
  video, video_mask = sample((3, 4, 16, 24, 3), seed=5)
  pred = np.zeros((3, 12, 384), np.float32)
  frames = visualize.comparison_frames(video, video_mask, pred, PATCH, index=2)
  gap = visualize.GAP
  assert frames.dtype == np.uint8 and frames.shape == (4, 16, 3 * 24 + 2 * gap, 3)
  original = np.round(np.clip(unit_clip(video)[2], 0, 1) * 255)
  np.testing.assert_array_equal(frames[:, :, :24], original)
  assert np.all(frames[:, :, 24:24 + gap] == 255)
  image, image_mask = sample((1, 16, 24, 3), seed=6)
  frames = visualize.comparison_frames(image, image_mask, np.zeros((1, 6, 384)), PATCH)
  assert frames.shape == (1, 16, 3 * 24 + 2 * gap, 3)
  with pytest.raises(ValueError, match="index=1 is outside the batch of 1"):
    visualize.comparison_frames(image, image_mask, np.zeros((1, 6, 384)), PATCH, index=1)
  with pytest.raises(ValueError, match="mask: expected shape"):
    visualize.comparison_frames(image, image_mask[:, :5], np.zeros((1, 6, 384)), PATCH)


def test_write_reconstruction_files(tmp_path):
  gap = visualize.GAP
  image, image_mask = sample((2, 16, 24, 3), seed=7)
  paths = visualize.write_reconstruction(str(tmp_path / "img" / "sample"), image, image_mask,
                                         np.zeros((2, 6, 384)), PATCH, index=1)
  assert paths == [str(tmp_path / "img" / "sample.png")]
  assert np.asarray(Image.open(paths[0])).shape == (16, 3 * 24 + 2 * gap, 3)

  video, video_mask = sample((1, 4, 16, 24, 3), seed=8)
  gif, strip = visualize.write_reconstruction(str(tmp_path / "clip"), video, video_mask,
                                              np.zeros((1, 12, 384)), PATCH)
  assert (gif, strip) == (str(tmp_path / "clip.gif"), str(tmp_path / "clip_strip.png"))
  animation = Image.open(gif)
  assert animation.n_frames == 4 and animation.size == (3 * 24 + 2 * gap, 16)
  strip_pixels = np.asarray(Image.open(strip))
  assert strip_pixels.shape == (3 * 16 + 2 * gap, 4 * 24 + 3 * gap, 3)
  frames = visualize.comparison_frames(video, video_mask, np.zeros((1, 12, 384)), PATCH)
  for t in range(4):  # row r, column t of the strip is panel r of frame t
    column = slice(t * (24 + gap), t * (24 + gap) + 24)
    for row in range(3):
      np.testing.assert_array_equal(strip_pixels[row * (16 + gap):row * (16 + gap) + 16, column],
                                    frames[t, :, row * (24 + gap):row * (24 + gap) + 24])
