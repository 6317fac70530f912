"""Reconstruction pictures: un-normalisation with the target patch statistics, pasted-back visible
patches, grey masked patches; panels that show the prediction itself, labelled and upscaled
layouts, files, and animated GIFs in TensorBoard."""
import io

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


def smooth_sample(size=64, seed=9):
  """A 1-image batch whose patches differ a lot in mean (a gradient) with fine noise inside."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size]
  base = np.stack([x * 200 / size, y * 200 / size, (x + y) * 100 / size], -1)
  picture = np.clip(base + rng.integers(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
  pixels = pixel_stats.normalize(picture[None])
  num_tokens = (size // PATCH[1]) ** 2
  mask = np.zeros((1, num_tokens), bool)
  mask[0, rng.permutation(num_tokens)[: 3 * num_tokens // 4]] = True
  return pixels, mask


def grey_correlation(a, b):
  """Pearson correlation of the channel means of two pixel sets [..., 3] (0 if one is flat)."""
  a, b = np.asarray(a, float).mean(-1).ravel(), np.asarray(b, float).mean(-1).ravel()
  if a.std() == 0 or b.std() == 0:
    return 0.0
  return float(np.corrcoef(a, b)[0, 1])


def test_norm_pix_panels_show_prediction_and_target_in_normalised_space():
  pixels, mask = sample((2, 16, 24, 3), seed=10)
  target = np.asarray(mae.reconstruction_target(pixels, PATCH, norm_pix=True))
  pred = np.random.default_rng(11).standard_normal(target.shape).astype(np.float32)
  panels = visualize.panel_clips(pixels, mask, pred, PATCH, norm_pix=True)
  labels = visualize.panel_labels(True)
  assert len(panels) == len(labels) == 5 and "TRUE" in labels[3]
  masked, shown_pred, shown_target, true_stats, original = panels
  where_masked = np.broadcast_to(pixel_mask(mask, original.shape)[..., None], original.shape)
  clip = np.clip(unit_clip(pixels), 0, 1)
  np.testing.assert_array_equal(original, clip)
  np.testing.assert_array_equal(masked, visualize.masked_pixels(pixels, mask, PATCH))
  np.testing.assert_array_equal(true_stats, visualize.reconstruct_pixels(pred, pixels, mask, PATCH))
  # Visible patches are not scored: black in both normalised panels.
  assert np.all(shown_pred[~where_masked] == 0) and np.all(shown_target[~where_masked] == 0)
  # Masked patches: the values on a fixed scale, -2.5 black, 0 mid grey, +2.5 white.
  as_clip = lambda values: np.asarray(visualize._unpatchify(  # noqa: E731
      values.reshape(2, 6, 128, 3), original.shape, PATCH))
  np.testing.assert_allclose(shown_pred[where_masked],
                             np.clip(0.5 + as_clip(pred) / 5, 0, 1)[where_masked], atol=1e-6)
  np.testing.assert_allclose(shown_target[where_masked],
                             np.clip(0.5 + as_clip(target) / 5, 0, 1)[where_masked], atol=1e-6)
  # The exact target draws the same normalised panel as the target itself.
  exact = visualize.panel_clips(pixels, mask, target, PATCH, norm_pix=True)
  np.testing.assert_allclose(exact[1], exact[2], atol=1e-6)


def test_plain_pixel_panels_show_the_prediction_as_pixels():
  pixels, mask = sample((1, 4, 16, 24, 3), seed=12)
  pred = np.random.default_rng(13).uniform(0, 1, (1, 12, 384)).astype(np.float32)
  panels = visualize.panel_clips(pixels, mask, pred, PATCH, norm_pix=False)
  assert len(panels) == len(visualize.panel_labels(False)) == 4
  _, shown_pred, pasted, original = panels
  where_masked = np.broadcast_to(pixel_mask(mask, original.shape)[..., None], original.shape)
  predicted = np.asarray(visualize._unpatchify(pred.reshape(1, 12, 128, 3), original.shape, PATCH))
  np.testing.assert_allclose(shown_pred[where_masked], predicted[where_masked])
  assert np.all(shown_pred[~where_masked] == 0)
  np.testing.assert_allclose(pasted[where_masked], predicted[where_masked])
  np.testing.assert_array_equal(pasted[~where_masked], original[~where_masked])


def test_a_prediction_that_ignores_the_input_does_not_look_like_it():
  """An untrained model's output is unrelated to the masked pixels. Drawn with the true patch
  statistics (the only view before) it still shows the picture; the prediction panel must not."""
  pixels, mask = smooth_sample()
  pred = np.random.default_rng(14).standard_normal((1, 64, 384)).astype(np.float32) * 0.3
  _, shown_pred, _, true_stats, original = visualize.panel_clips(pixels, mask, pred, PATCH)
  where_masked = pixel_mask(mask, original.shape)
  assert abs(grey_correlation(shown_pred[where_masked], original[where_masked])) < 0.2
  assert grey_correlation(true_stats[where_masked], original[where_masked]) > 0.8


def test_picture_is_labelled_upscaled_and_has_a_row_per_sample():
  pixels, mask = sample((6, 16, 24, 3), seed=15)
  pred = np.zeros((6, 6, 384), np.float32)
  picture = visualize.draw(pixels, mask, pred, PATCH, norm_pix=True)
  factor = 14  # ceil(224 / 16): the short side reaches 224 px
  assert picture.panel_size == (16 * factor, 24 * factor)
  assert picture.frames.shape == (1, *visualize.picture_shape(4, 5, picture.panel_size))
  panels = visualize.panel_clips(pixels[:4], mask[:4], pred[:4], PATCH)
  frame = picture.frames[0]
  for row in range(4):  # at most MAX_SAMPLES rows; each panel is its clip upscaled (nearest)
    for column, panel in enumerate(panels):
      rows, cols = visualize.panel_box(row, column, picture.panel_size)
      expected = np.round(panel[row, 0] * 255).astype(np.uint8)
      np.testing.assert_array_equal(frame[rows, cols][::factor, ::factor], expected)
      np.testing.assert_array_equal(frame[rows, cols], expected.repeat(factor, 0).repeat(factor, 1))
  width = picture.panel_size[1]
  for column, label in enumerate(picture.labels):  # dark text in each panel's label cell
    cell = frame[:visualize.LABEL_HEIGHT, column * (width + visualize.GAP):][:, :width]
    np.testing.assert_array_equal(cell, visualize.label_tile(label, width))
    assert (cell < 128).any() and (cell == 255).mean() > 0.8
  assert visualize.label_tile("", width).min() == 255
  # Short labels do not lose words to the tile: each fits its two lines.
  draw = visualize.ImageDraw.Draw(Image.new("RGB", (1, 1)))
  assert all(len(visualize._wrap(label, 224 - 6, draw)) <= 2
             for label in visualize.NORM_LABELS + visualize.PIXEL_LABELS)


def test_write_reconstruction_files(tmp_path):
  image, image_mask = sample((2, 16, 24, 3), seed=7)
  paths = visualize.write_reconstruction(str(tmp_path / "img" / "sample"), image, image_mask,
                                         np.zeros((2, 6, 384)), PATCH, norm_pix=False)
  assert paths == [str(tmp_path / "img" / "sample.png")]
  panel_size = (224, 336)
  assert np.asarray(Image.open(paths[0])).shape == visualize.picture_shape(2, 4, panel_size)

  video, video_mask = sample((1, 4, 16, 24, 3), seed=8)
  pred = np.zeros((1, 12, 384))
  gif, strip = visualize.write_reconstruction(str(tmp_path / "clip"), video, video_mask, pred,
                                              PATCH)
  assert (gif, strip) == (str(tmp_path / "clip.gif"), str(tmp_path / "clip_strip.png"))
  animation = Image.open(gif)
  height, width, _ = visualize.picture_shape(1, 5, panel_size)
  assert animation.n_frames == 4 and animation.size == (width, height)
  strip_pixels = np.asarray(Image.open(strip))
  picture = visualize.draw(video, video_mask, pred, PATCH)
  for t in range(4):  # row r, column t of the strip is panel r of frame t
    for row in range(5):
      expected = picture.frames[t][visualize.panel_box(0, row, panel_size)]
      np.testing.assert_array_equal(strip_pixels[visualize.strip_box(row, t, panel_size)],
                                    expected)


def test_tensorboard_gets_an_animated_gif(tmp_path):
  """A video's picture reaches TensorBoard as the GIF bytes themselves, which its image plugin
  serves as image/gif (the browser animates it); an image's as a PNG."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.util import img_mime_type_detector
  from omnimae_jax.train import metrics

  video, video_mask = sample((2, 4, 16, 24, 3), seed=16)
  image, image_mask = sample((1, 16, 24, 3), seed=17)
  animation = visualize.draw(video, video_mask, np.zeros((2, 12, 384)), PATCH)
  still = visualize.draw(image, image_mask, np.zeros((1, 6, 384)), PATCH)
  writer = metrics.MetricsWriter(tmp_path, tensorboard=True)
  for step, (tag, picture) in enumerate([("videos", animation), ("images", still)], 1):
    height, width = picture.frames.shape[1:3]
    writer.write_encoded_image(step, f"reconstruction/{tag}", picture.encoded, width, height)
  writer.close()
  tf = metrics._tf_module()
  found = {}
  for path in (tmp_path / "tensorboard").iterdir():
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      for value in event_pb2.Event.FromString(record).summary.value:
        found[value.tag] = value
  for tag, picture, mime in [("videos", animation, "image/gif"), ("images", still, "image/png")]:
    value = found[f"reconstruction/{tag}"]
    assert value.metadata.plugin_data.plugin_name == "images"
    width, height, encoded = value.tensor.string_val
    assert (int(height), int(width)) == picture.frames.shape[1:3]
    assert img_mime_type_detector.from_bytes(encoded) == mime
    decoded = Image.open(io.BytesIO(encoded))
    assert getattr(decoded, "n_frames", 1) == picture.frames.shape[0]
