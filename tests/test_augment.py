"""RandAugment in tf.data (omnimae_jax/data/augment.py): stateless, shape/dtype preserving, timm's
and pytorchvideo's semantics (PIL as the reference for the pixel ops where it is installed)."""
import numpy as np
import pytest

from omnimae_jax.data import augment
from omnimae_jax.data._tf import tf


def _image(seed=0, shape=(24, 28, 3), low=40, high=256):
  # No black pixels, so that AutoContrast has something to do.
  return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def _seed(a, b=7):
  return tf.constant([a, b], tf.int64)


def test_same_seed_same_pixels_different_seeds_differ():
  image = _image()
  first = augment.rand_augment_image(image, _seed(1)).numpy()
  again = augment.rand_augment_image(image, _seed(1)).numpy()
  np.testing.assert_array_equal(first, again)
  outputs = [augment.rand_augment_image(image, _seed(s)).numpy() for s in range(6)]
  assert len({o.tobytes() for o in outputs}) > 2

  clip = np.stack([_image(i) for i in range(3)])
  first = augment.rand_augment_video(clip, _seed(1)).numpy()
  np.testing.assert_array_equal(first, augment.rand_augment_video(clip, _seed(1)).numpy())
  outputs = [augment.rand_augment_video(clip, _seed(s)).numpy() for s in range(6)]
  assert len({o.tobytes() for o in outputs}) > 2


@pytest.mark.parametrize("name", sorted(augment.TIMM_OPS))
def test_every_image_op_preserves_shape_and_dtype_and_acts(name):
  image = _image()
  out = augment.rand_augment_image(image, _seed(3), ops=(name,), num_ops=1, magnitude=9,
                                   magnitude_std=0.0, prob=1.0)
  assert out.shape == image.shape and out.dtype == tf.uint8
  assert np.any(out.numpy() != image), f"{name} at magnitude 9 changed nothing"


def test_every_video_op_uses_one_draw_for_all_frames():
  clip = np.stack([_image(i) for i in range(3)])
  for name in augment.VIDEO_TRANSFORMS:
    for seed in (_seed(1), _seed(2)):
      kwargs = dict(ops=(name,), num_layers=1, magnitude=9, prob=1.0)
      out = augment.rand_augment_video(clip, seed, **kwargs).numpy()
      assert out.shape == clip.shape and out.dtype == np.uint8, name
      # Same parameters on every frame: each frame alone, with the same seed, gives the same.
      for t in range(clip.shape[0]):
        alone = augment.rand_augment_video(clip[t:t + 1], seed, **kwargs).numpy()[0]
        np.testing.assert_array_equal(out[t], alone, err_msg=name)
  # Identical frames stay identical under the full RandAugment.
  same = np.stack([_image(5)] * 4)
  for s in range(4):
    out = augment.rand_augment_video(same, _seed(s)).numpy()
    assert all(np.array_equal(out[0], frame) for frame in out[1:])


def test_video_ops_are_drawn_without_replacement():
  # 14 ops, 14 layers without replacement: each op exactly once, so Invert runs exactly once
  # and the only 2 ops given, Invert twice, would be the identity; with (Invert,) alone and
  # num_layers=2 the request is refused.
  with pytest.raises(ValueError, match="without replacement"):
    augment.rand_augment_video(np.zeros((1, 8, 8, 3), np.uint8), _seed(0), ops=("Invert",),
                               num_layers=2)
  image = _image()[None]
  ops = ("Invert", "Posterize")
  out = augment.rand_augment_video(image, _seed(4), ops=ops, num_layers=2, prob=1.0,
                                   magnitude=0, sampling_std=0.0)  # Posterize: 4 bits
  expected = augment.posterize(255 - image, 4).numpy()
  expected_other_order = 255 - augment.posterize(image, 4).numpy()
  assert (np.array_equal(out, expected) or np.array_equal(out, expected_other_order))


def test_timm_magnitude_sampling():
  levels = augment._timm_levels(_seed(0), 20000, 9, 0.5, 10).numpy()
  assert levels.min() >= 0 and levels.max() <= 10
  assert abs(levels.mean() - 9) < 0.02 and abs(levels.std() - 0.5) < 0.02
  uniform = augment._timm_levels(_seed(0), 20000, 9, float("inf"), 10).numpy()
  assert uniform.min() >= 0 and uniform.max() <= 9 and abs(uniform.mean() - 4.5) < 0.1


def test_parse_rand_augment():
  spec = augment.parse_rand_augment("rand-m9-mstd0.5-inc1")
  assert spec.kind == "image"
  assert spec.kwargs == dict(magnitude=9, num_ops=2, magnitude_std=0.5, magnitude_max=10,
                             increasing=True)
  spec = augment.parse_rand_augment("rand-m9-n3-mstd101")
  assert spec.kwargs["num_ops"] == 3 and spec.kwargs["magnitude_std"] == float("inf")
  assert not spec.kwargs["increasing"]
  spec = augment.parse_rand_augment("video-m7-n4-p0.5")
  assert spec == augment.RandAugmentSpec(
      "video", dict(magnitude=7, num_layers=4, prob=0.5, sampling_std=0.5))
  image = _image()
  np.testing.assert_array_equal(augment.rand_augment(image, _seed(2), ""), image)
  np.testing.assert_array_equal(
      augment.rand_augment(image, _seed(2), "rand-m9-mstd0.5-inc1"),
      augment.rand_augment_image(image, _seed(2)))


@pytest.mark.parametrize("spec, named", [
    ("rand-m9-x3", "'x3'"), ("rand-m9-w0", "'w0'"), ("rand-m9-inc", "'inc'"),
    ("rand-mfoo", "'mfoo'"), ("video-m7-inc1", "'inc1'"), ("auto-m9", "'auto'")])
def test_parse_errors_name_the_spec_and_section(spec, named):
  with pytest.raises(ValueError) as error:
    augment.parse_rand_augment(spec)
  assert repr(spec) in str(error.value) and named in str(error.value)


def test_unknown_op_names_are_refused():
  with pytest.raises(ValueError, match="'Blur'.*allowed.*Rotate"):
    augment.rand_augment_image(_image(), _seed(0), ops=("Rotate", "Blur"))
  with pytest.raises(ValueError, match="'TranslateXRel'"):
    augment.rand_augment_video(_image()[None], _seed(0), ops=("TranslateXRel",), num_layers=1)


def test_geometry_against_numpy():
  image = _image(shape=(9, 9, 3))
  fill = (1.0, 2.0, 3.0)
  # 90 degrees counter-clockwise about the centre of an odd square image: np.rot90, exactly.
  np.testing.assert_array_equal(augment.rotate(image, 90.0, fill), np.rot90(image))
  # Translating by 2 pixels (+: content moves left/up), the uncovered pixels get the fill.
  shifted = augment.translate_x(image, 2 / 9, fill).numpy()
  np.testing.assert_array_equal(shifted[:, :-2], image[:, 2:])
  np.testing.assert_array_equal(shifted[:, -2:], np.broadcast_to(fill, (9, 2, 3)))
  shifted = augment.translate_y(image, -3 / 9, fill).numpy()
  np.testing.assert_array_equal(shifted[3:], image[:-3])
  # Shear X by 1 about the top-left corner (PIL and pytorchvideo): the centre of row y sits at
  # y + 0.5, so the row moves left by y + 0.5 pixels and bilinear averages two neighbours.
  sheared = augment.shear_x(image, 1.0, fill).numpy().astype(np.int32)
  for y in range(8):
    between = (image[y, y:8].astype(np.int32) + image[y, y + 1:]) / 2
    assert np.abs(sheared[y, :8 - y] - between).max() <= 0.5


def test_pixel_ops_match_pil():
  pil_image = pytest.importorskip("PIL.Image")
  from PIL import ImageEnhance, ImageOps  # noqa: PLC0415

  image = _image(shape=(20, 22, 3))
  pil = pil_image.fromarray(image)

  def check(ours, theirs, tolerance=0):
    difference = np.abs(np.asarray(ours, np.int32) - np.asarray(theirs, np.int32))
    assert difference.max() <= tolerance

  check(augment.invert(image), ImageOps.invert(pil))
  check(augment.autocontrast(image), ImageOps.autocontrast(pil), 1)
  check(augment.equalize(image), ImageOps.equalize(pil))
  for bits in (0, 1, 4):
    check(augment.posterize(image, bits), ImageOps.posterize(pil, bits))
  check(augment.solarize(image, 128), ImageOps.solarize(pil, 128))
  lut = [min(255, i + 40) if i < 128 else i for i in range(256)] * 3
  check(augment.solarize_add(image, 40), pil.point(lut))
  for factor in (0.3, 1.7):
    check(augment.brightness(image, factor), ImageEnhance.Brightness(pil).enhance(factor), 1)
    check(augment.color(image, factor), ImageEnhance.Color(pil).enhance(factor), 2)
    check(augment.contrast(image, factor), ImageEnhance.Contrast(pil).enhance(factor), 2)
    check(augment.sharpness(image, factor), ImageEnhance.Sharpness(pil).enhance(factor), 1)
  # Bilinear warps: the same geometry as PIL's (interior; the border blends with the fill).
  ours = augment.rotate(image, 17.0, augment.TIMM_FILL).numpy()
  theirs = np.asarray(pil.rotate(17.0, resample=pil_image.BILINEAR, fillcolor=(128,) * 3))
  check(ours[3:-3, 3:-3], theirs[3:-3, 3:-3], 2)
  ours = augment.shear_y(image, 0.2, augment.TIMM_FILL).numpy()
  theirs = np.asarray(pil.transform(pil.size, pil_image.AFFINE, (1, 0, 0, 0.2, 1, 0),
                                    resample=pil_image.BILINEAR, fillcolor=(128,) * 3))
  check(ours[:14, 1:-1], theirs[:14, 1:-1], 2)
