"""Per-sample RandAugment in tf.data (SPEC §4.2), stateless from an explicit seed.

Two flavours, as the official fine-tuning configs use them:
- `rand_augment_image`: timm's RandAugment ('rand-m9-mstd0.5-inc1' for IN1K, through omnivision's
  copy `omnivision/data/transforms/rand_auto_aug.py`).
- `rand_augment_video`: pytorchvideo's RandAugment (magnitude 7, 4 layers, p 0.5 for SSv2), one
  draw per clip applied to every frame.

Pixels stay uint8 in and out; every op rounds and clips back to uint8 (PIL, which timm uses, does
too; pytorchvideo works on [0, 1] floats, so there the rounding between ops is ours). Ops work on
[..., H, W, 3] with per-image statistics (contrast mean, autocontrast range, equalize histogram),
as PIL does per image and torchvision per frame.

Deliberate differences from the references (all at the level of one grey level or a sub-pixel):
- Geometric ops use bilinear interpolation; timm picks bilinear or bicubic at random per call and
  TF's projective transform has no bicubic. Near the border bilinear blends with the fill colour.
- Blends round to nearest where PIL truncates; greyscale uses TF's ITU-R 601 weights
  (0.2989, 0.587, 0.114) in float where PIL rounds the L image.
- tf.image.adjust_contrast/brightness/saturation are not these ops (per-channel mean, additive,
  HSV), so the PIL/torchvision definitions are written out below.
"""
import math
import re
from typing import Any, Dict, NamedTuple

from omnimae_jax.data._tf import tf
from omnimae_jax.data.transforms import to_uint8

_MAX_LEVEL = 10.0

# omnivision's RandAugment runs `hparams.update(_HPARAMS_DEFAULT)`, so the official IN1K run
# filled with timm's _FILL (128, 128, 128), not create_transform's img_mean.
TIMM_FILL = (128.0, 128.0, 128.0)
# pytorchvideo's default fill (0.5, 0.5, 0.5) on [0, 1] videos.
PYTORCHVIDEO_FILL = (127.5, 127.5, 127.5)


# ------------------------------------------------------------------------------------------------
# Ops on uint8 [..., H, W, 3].

def _float(image):
  return tf.cast(image, tf.float32)


def _blend(degenerate, image, factor):
  """PIL Image.blend(degenerate, image, factor) == torchvision _blend(image, degenerate, factor)."""
  image = _float(image)
  return to_uint8(degenerate + factor * (image - degenerate))


def brightness(image, factor):
  return _blend(0.0, image, factor)


def color(image, factor):
  """PIL ImageEnhance.Color == torchvision adjust_saturation: blend with the greyscale image."""
  return _blend(tf.image.rgb_to_grayscale(_float(image)), image, factor)


def contrast(image, factor):
  """Blend with the mean of the greyscale image (one value per image, not per channel)."""
  grey = tf.image.rgb_to_grayscale(_float(image))
  return _blend(tf.reduce_mean(grey, axis=[-3, -2, -1], keepdims=True), image, factor)


def _flat_images(image):
  """[..., H, W, C] -> [N, H, W, C], for ops that want a 4-D batch."""
  return tf.reshape(image, tf.concat([[-1], tf.shape(image)[-3:]], 0))


def sharpness(image, factor):
  """Blend with PIL's SMOOTH filter (3x3, centre 5, rest 1, /13); border pixels stay as they are."""
  flat = _float(_flat_images(image))
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(flat, kernel, [1, 1, 1, 1], "VALID"))
  padding = [[0, 0], [1, 1], [1, 1], [0, 0]]
  interior = tf.pad(tf.ones_like(smooth, tf.bool), padding)
  degenerate = tf.where(interior, tf.pad(smooth, padding), flat)
  return tf.reshape(_blend(degenerate, flat, factor), tf.shape(image))


def invert(image):
  return 255 - image


def posterize(image, bits):
  """Keep the `bits` most significant bits (0 bits: black)."""
  shift = 8 - tf.cast(bits, tf.int32)
  kept = tf.bitwise.left_shift(tf.bitwise.right_shift(tf.cast(image, tf.int32), shift), shift)
  return tf.cast(kept, tf.uint8)


def solarize(image, threshold):
  """Invert the pixels >= threshold (threshold in grey levels, may be fractional)."""
  return tf.where(_float(image) >= tf.cast(threshold, tf.float32), 255 - image, image)


def solarize_add(image, addition, threshold=128):
  added = tf.minimum(tf.cast(image, tf.int32) + tf.cast(addition, tf.int32), 255)
  return tf.where(image < threshold, tf.cast(added, tf.uint8), image)


def autocontrast(image):
  """Stretch each channel of each image to [0, 255]; a constant channel stays as it is."""
  pixels = _float(image)
  low = tf.reduce_min(pixels, axis=[-3, -2], keepdims=True)
  high = tf.reduce_max(pixels, axis=[-3, -2], keepdims=True)
  # Dividing last keeps high -> 255 exact; PIL truncates the stretched value (int()).
  stretched = tf.floor((pixels - low) * 255.0 / tf.maximum(high - low, 1.0))
  stretched = tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)
  return tf.where(high > low, stretched, image)


def equalize(image):
  """PIL ImageOps.equalize / torchvision equalize, per channel of each image."""
  flat = _flat_images(image)
  shape = tf.shape(flat)
  # [N, 3, H*W] int32 values, offset so that one bincount gives every (image, channel) histogram.
  values = tf.transpose(tf.reshape(tf.cast(flat, tf.int32), [shape[0], -1, 3]), [0, 2, 1])
  num_hists = shape[0] * 3
  offsets = tf.reshape(tf.range(num_hists) * 256, [shape[0], 3, 1])
  hist = tf.reshape(tf.math.bincount(values + offsets, minlength=num_hists * 256,
                                     maxlength=num_hists * 256), [shape[0], 3, 256])
  last_level = tf.reduce_max(tf.where(hist > 0, tf.range(256), -1), axis=-1)
  last_count = tf.gather(hist, tf.maximum(last_level, 0), batch_dims=2)
  step = (tf.reduce_sum(hist, axis=-1) - last_count) // 255  # [N, 3]
  safe_step = tf.maximum(step, 1)[..., None]
  lut = (tf.cumsum(hist, axis=-1, exclusive=True) + safe_step // 2) // safe_step
  lut = tf.where(step[..., None] > 0, tf.minimum(lut, 255), tf.range(256))
  equalized = tf.gather(lut, values, batch_dims=2)  # [N, 3, H*W]
  equalized = tf.reshape(tf.transpose(equalized, [0, 2, 1]), tf.shape(image))
  return tf.cast(equalized, tf.uint8)


def affine(image, matrix, fill):
  """Output pixel at (x, y) samples the input at (a x + b y + c, d x + e y + f), bilinear.

  `matrix` = (a, b, c, d, e, f) in PIL's continuous coordinates (origin at the top-left corner,
  pixel centres at +0.5), which is also what torchvision's tensor affine amounts to for the
  pytorchvideo ops below. Outside the input: `fill` (one value per channel).
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in matrix]
  # TF's projective transform works in pixel indices (centres at integers).
  index_matrix = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0])
  flat = _flat_images(image)
  fill = tf.constant(fill, tf.float32)
  # Warping (image - fill) with fill 0 and adding fill back gives a per-channel fill colour
  # (the op takes one scalar) and is exact for bilinear interpolation, which is linear.
  warped = tf.raw_ops.ImageProjectiveTransformV3(
      images=_float(flat) - fill, transforms=index_matrix[None], output_shape=tf.shape(flat)[1:3],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
  return tf.reshape(to_uint8(warped + fill), tf.shape(image))


def _height_width(image):
  shape = tf.shape(image)
  return tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)


def rotate(image, degrees, fill):
  """Counter-clockwise about the image centre (PIL Image.rotate, torchvision rotate)."""
  height, width = _height_width(image)
  angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  centre_x, centre_y = width / 2.0, height / 2.0
  offset_x = centre_x - cos * centre_x - sin * centre_y
  offset_y = centre_y + sin * centre_x - cos * centre_y
  return affine(image, (cos, sin, offset_x, -sin, cos, offset_y), fill)


def shear_x(image, factor, fill):
  return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image, factor, fill):
  return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x(image, fraction, fill):
  """Positive `fraction` of the width moves the content left (timm, pytorchvideo)."""
  _, width = _height_width(image)
  return affine(image, (1.0, 0.0, fraction * width, 0.0, 1.0, 0.0), fill)


def translate_y(image, fraction, fill):
  height, _ = _height_width(image)
  return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * height), fill)


# ------------------------------------------------------------------------------------------------
# Op tables: name -> fn(image, level, negate, fill), level in [0, 10], negate a bool tensor.

def _signed(value, negate):
  return tf.where(negate, -value, value)


def _fraction(level):
  return level / _MAX_LEVEL


def _no_arg(op):
  return lambda image, level, negate, fill: op(image)


def _geometric(op, max_value):
  return lambda image, level, negate, fill: op(
      image, _signed(_fraction(level) * max_value, negate), fill)


def _enhance(op):  # timm: factor in [0.1, 1.9], increasing with the level
  return lambda image, level, negate, fill: op(image, _fraction(level) * 1.8 + 0.1)


def _enhance_signed(op):  # timm '...Increasing', pytorchvideo Adjust*: 1 +- 0.9 * level/10
  return lambda image, level, negate, fill: op(
      image, tf.maximum(0.1, 1.0 + _signed(_fraction(level) * 0.9, negate)))


def _floor(value):
  return tf.floor(value)  # Python's int() of a non-negative level


# timm/data/auto_augment.py NAME_TO_OP + LEVEL_TO_ARG, the ops its RandAugment sets use.
TIMM_OPS = {
    "AutoContrast": _no_arg(autocontrast),
    "Equalize": _no_arg(equalize),
    "Invert": _no_arg(invert),
    "Rotate": _geometric(rotate, 30.0),
    "Posterize": lambda image, level, negate, fill: posterize(
        image, _floor(_fraction(level) * 4)),
    "PosterizeIncreasing": lambda image, level, negate, fill: posterize(
        image, 4 - _floor(_fraction(level) * 4)),
    "Solarize": lambda image, level, negate, fill: solarize(
        image, _floor(_fraction(level) * 256)),
    "SolarizeIncreasing": lambda image, level, negate, fill: solarize(
        image, 256 - _floor(_fraction(level) * 256)),
    "SolarizeAdd": lambda image, level, negate, fill: solarize_add(
        image, _floor(_fraction(level) * 110)),
    "Color": _enhance(color),
    "ColorIncreasing": _enhance_signed(color),
    "Contrast": _enhance(contrast),
    "ContrastIncreasing": _enhance_signed(contrast),
    "Brightness": _enhance(brightness),
    "BrightnessIncreasing": _enhance_signed(brightness),
    "Sharpness": _enhance(sharpness),
    "SharpnessIncreasing": _enhance_signed(sharpness),
    "ShearX": _geometric(shear_x, 0.3),
    "ShearY": _geometric(shear_y, 0.3),
    "TranslateXRel": _geometric(translate_x, 0.45),
    "TranslateYRel": _geometric(translate_y, 0.45),
}
# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in its order.
RAND_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                   "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX",
                   "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

# pytorchvideo/transforms/rand_augment.py _TRANSFORM_RANDAUG_MAX_PARAMS with the level functions
# of augmentations.py, in its order.
PYTORCHVIDEO_OPS = {
    "AdjustBrightness": _enhance_signed(brightness),
    "AdjustContrast": _enhance_signed(contrast),
    "AdjustSaturation": _enhance_signed(color),
    "AdjustSharpness": _enhance_signed(sharpness),
    "AutoContrast": _no_arg(autocontrast),
    "Equalize": _no_arg(equalize),
    "Invert": _no_arg(invert),
    "Rotate": _geometric(rotate, 30.0),
    "Posterize": lambda image, level, negate, fill: posterize(
        image, 4 - _floor(_fraction(level) * 4)),
    # torchvision solarize on [0, 1] videos with threshold 1 - level/10.
    "Solarize": lambda image, level, negate, fill: solarize(
        image, (1.0 - _fraction(level)) * 255.0),
    "ShearX": _geometric(shear_x, 0.3),
    "ShearY": _geometric(shear_y, 0.3),
    "TranslateX": _geometric(translate_x, 0.45),
    "TranslateY": _geometric(translate_y, 0.45),
}
VIDEO_TRANSFORMS = tuple(PYTORCHVIDEO_OPS)


def _checked_ops(ops, table, default, where):
  names = tuple(default if ops is None else ops)
  unknown = [name for name in names if name not in table]
  if unknown or not names:
    raise ValueError(f"{where}: unknown op(s) {unknown or names!r}; allowed: {sorted(table)}")
  return names


# ------------------------------------------------------------------------------------------------
# RandAugment drivers.

def _apply_layer(image, fns, index, apply, level, negate, fill):
  """Op `index` of `fns` when `apply`; tf.switch_case runs only the chosen branch."""
  branches = [lambda fn=fn: tf.ensure_shape(fn(image, level, negate, fill), image.shape)
              for fn in fns]
  return tf.cond(apply, lambda: tf.switch_case(index, branches), lambda: image)


def _apply_layers(image, fns, indices, apply, levels, negate, fill):
  for layer in range(indices.shape[0]):
    image = _apply_layer(image, fns, indices[layer], apply[layer], levels[layer], negate[layer],
                         fill)
  return image


def _split4(seed):
  return tf.unstack(tf.random.experimental.stateless_split(seed, 4))


def _timm_levels(seed, num_ops, magnitude, magnitude_std, magnitude_max):
  """timm AugmentOp: gauss(m, mstd), or uniform(0, m) for mstd=inf, clipped to [0, mmax]."""
  if math.isinf(magnitude_std):
    levels = tf.random.stateless_uniform([num_ops], seed, 0.0, float(magnitude))
  else:
    levels = magnitude + magnitude_std * tf.random.stateless_normal([num_ops], seed)
  return tf.clip_by_value(levels, 0.0, float(magnitude_max))


def rand_augment_image(image, seed, *, num_ops=2, magnitude=9, magnitude_std=0.5,
                       magnitude_max=10, increasing=True, prob=0.5, fill=TIMM_FILL, ops=None):
  """timm RandAugment on one uint8 [H, W, 3] image (any leading dims share the draws).

  Defaults: the official IN1K 'rand-m9-mstd0.5-inc1'. `num_ops` ops are drawn uniformly with
  replacement from `ops` (default: timm's increasing set, or its plain set when not
  `increasing`); each runs with probability `prob` at a level drawn per op from
  N(magnitude, magnitude_std) (uniform in [0, magnitude] when magnitude_std is inf), clipped to
  [0, magnitude_max]; rotate/shear/translate and the '...Increasing' enhancements flip their
  sign with probability 1/2, as timm's _randomly_negate.
  """
  default = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
  names = _checked_ops(ops, TIMM_OPS, default, "rand_augment_image")
  choice_seed, apply_seed, level_seed, sign_seed = _split4(seed)
  indices = tf.random.stateless_uniform([num_ops], choice_seed, 0, len(names), tf.int32)
  apply = tf.random.stateless_uniform([num_ops], apply_seed) < prob
  levels = _timm_levels(level_seed, num_ops, magnitude, magnitude_std, magnitude_max)
  negate = tf.random.stateless_uniform([num_ops], sign_seed) > 0.5
  return _apply_layers(image, [TIMM_OPS[name] for name in names], indices, apply, levels, negate,
                       fill)


def _pytorchvideo_levels(seed, num_layers, magnitude, sampling, sampling_std):
  """pytorchvideo AugmentTransform._get_magnitude."""
  if sampling == "gaussian":
    levels = magnitude + sampling_std * tf.random.stateless_normal([num_layers], seed)
    return tf.clip_by_value(levels, 0.0, _MAX_LEVEL)
  # 'uniform': an integer level in [0, magnitude].
  levels = tf.random.stateless_uniform([num_layers], seed, 0, int(magnitude) + 1, tf.int32)
  return tf.cast(levels, tf.float32)


def rand_augment_video(frames, seed, *, magnitude=7, num_layers=4, prob=0.5,
                       sampling="gaussian", sampling_std=0.5, fill=PYTORCHVIDEO_FILL, ops=None):
  """pytorchvideo RandAugment on uint8 [T, H, W, 3] (any leading dims): one draw per call.

  Defaults: the official SSv2 config (magnitude 7, 4 layers, p 0.5, pytorchvideo's default
  gaussian sampling with std 0.5). `num_layers` distinct ops are drawn uniformly without
  replacement (OpSampler's default); each runs with probability `prob` at a level drawn per op,
  clipped to [0, 10], with the same parameters on every frame.
  """
  if sampling not in ("gaussian", "uniform"):
    raise ValueError(f"rand_augment_video: sampling={sampling!r}; allowed: 'gaussian', 'uniform'")
  names = _checked_ops(ops, PYTORCHVIDEO_OPS, VIDEO_TRANSFORMS, "rand_augment_video")
  if num_layers > len(names):
    raise ValueError(f"rand_augment_video: num_layers={num_layers} > {len(names)} ops; "
                     "ops are drawn without replacement")
  choice_seed, apply_seed, level_seed, sign_seed = _split4(seed)
  # The first num_layers of a random permutation: a draw without replacement.
  order = tf.argsort(tf.random.stateless_uniform([len(names)], choice_seed))
  indices = tf.ensure_shape(order[:num_layers], [num_layers])
  apply = tf.random.stateless_uniform([num_layers], apply_seed) < prob
  levels = _pytorchvideo_levels(level_seed, num_layers, magnitude, sampling, sampling_std)
  negate = tf.random.stateless_uniform([num_layers], sign_seed) > 0.5
  return _apply_layers(frames, [PYTORCHVIDEO_OPS[name] for name in names], indices, apply, levels,
                       negate, fill)


# ------------------------------------------------------------------------------------------------
# Spec strings.

class RandAugmentSpec(NamedTuple):
  kind: str  # 'image' (timm) or 'video' (pytorchvideo)
  kwargs: Dict[str, Any]  # keyword arguments of rand_augment_image / rand_augment_video


def _timm_value(key, value):
  if key == "mstd":
    # timm: mstd > 100 means uniform sampling in [0, m].
    return "magnitude_std", (math.inf if float(value) > 100 else float(value))
  if key == "inc":
    # timm tests bool(val) of the string, so even 'inc0' turns it on; we read the number.
    return "increasing", int(value) != 0
  return {"m": "magnitude", "n": "num_ops", "mmax": "magnitude_max"}[key], int(value)


def _video_value(key, value):
  if key == "mstd":
    return "sampling_std", float(value)
  if key == "p":
    return "prob", float(value)
  return {"m": "magnitude", "n": "num_layers"}[key], int(value)


# Defaults of timm's rand_augment_transform and of pytorchvideo's RandAugment for keys a spec omits.
_SPEC_KINDS = {
    "rand": ("image", _timm_value, ("m", "n", "mstd", "mmax", "inc"),
             dict(magnitude=10, num_ops=2, magnitude_std=0.0, magnitude_max=10,
                  increasing=False)),
    "video": ("video", _video_value, ("m", "n", "p", "mstd"),
              dict(magnitude=9, num_layers=2, prob=0.5, sampling_std=0.5)),
}


def parse_rand_augment(spec: str) -> RandAugmentSpec:
  """'rand-m9-mstd0.5-inc1' (timm's grammar) or 'video-m7-n4-p0.5' (pytorchvideo's arguments).

  Sections are '-'-separated key+number pairs in any order. Unlike timm, a section that is not
  a known key followed by a number is an error, not silently skipped.
  """
  head, *sections = spec.split("-")
  if head not in _SPEC_KINDS:
    raise ValueError(f"rand_augment={spec!r}: starts with {head!r}; allowed: "
                     f"{sorted(_SPEC_KINDS)} (e.g. 'rand-m9-mstd0.5-inc1', 'video-m7-n4-p0.5')")
  kind, to_value, keys, defaults = _SPEC_KINDS[head]
  kwargs = dict(defaults)
  for section in sections:
    match = re.fullmatch(r"([a-z]+)(\d.*)", section)
    if not match or match.group(1) not in keys:
      raise ValueError(f"rand_augment={spec!r}: unknown section {section!r}; allowed for "
                       f"{head!r}: {', '.join(k + '<number>' for k in keys)}")
    try:
      name, value = to_value(*match.groups())
    except ValueError:
      raise ValueError(f"rand_augment={spec!r}: section {section!r} has no valid number") from None
    kwargs[name] = value
  return RandAugmentSpec(kind, kwargs)


def rand_augment(pixels, seed, spec):
  """RandAugment from a spec string (or a parsed spec); an empty spec returns `pixels`."""
  if not spec:
    return pixels
  parsed = parse_rand_augment(spec) if isinstance(spec, str) else spec
  fn = rand_augment_image if parsed.kind == "image" else rand_augment_video
  return fn(pixels, seed, **parsed.kwargs)
