"""Batch augmentation on the device, inside the jitted train step (SPEC §4.2).

- `random_erasing`: timm's RandomErasing on normalised pixels, per sample; for videos the 'cube'
  variant of omnivision's video_random_erasing.py (one box on every frame of a clip).
- `mixup_cutmix`: timm's Mixup in 'batch' mode (one lambda per batch, mixing with the reversed
  batch), as omnivision's CutMixUp collator ran it on each GPU's own batch.
- `shard_local`: runs such a function on each data shard separately (jax.shard_map), so each shard
  mixes only within itself and draws its own lambda/box, as each GPU did in the official run.

Every draw comes from the key passed in, so a resumed run draws the same boxes and lambdas.
Boxes are masks from iota comparisons, so shapes stay static.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from omnimae_jax import pixels as pixel_utils
from omnimae_jax.train.sharding import DATA

ERASE_MODES = ("pixel", "rand", "const", "black")


def box_mask(top, bottom, left, right, height: int, width: int):
  """bool [height, width]: rows in [top, bottom) and columns in [left, right)."""
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


# ------------------------------------------------------------------------------------------------
# Random erasing.

def _uniform_int(u, count):
  """floor(u * count) for u uniform in [0, 1): a uniform integer in [0, count)."""
  return jnp.minimum(jnp.floor(u * count).astype(jnp.int32), count - 1)


def _erase_box(draws, height, width, *, count, min_area, max_area, log_aspect):
  """timm's box search from uniform `draws` [2 * attempts + 2]: the first of `attempts`
  (area, aspect) pairs whose box fits strictly inside, placed uniformly.

  Returns (top, bottom, left, right, found).
  """
  attempts = (draws.shape[0] - 2) // 2
  area_u, aspect_u, place_u = draws[:attempts], draws[attempts:-2], draws[-2:]
  area = (min_area + area_u * (max_area - min_area)) * (height * width) / count
  aspect = jnp.exp(log_aspect[0] + aspect_u * (log_aspect[1] - log_aspect[0]))
  # jnp.round rounds half to even, as Python's round() in timm.
  box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_h < height) & (box_w < width)
  first = jnp.argmax(fits)
  box_h, box_w = box_h[first], box_w[first]
  top = _uniform_int(place_u[0], height - box_h + 1)  # random.randint(0, H - h)
  left = _uniform_int(place_u[1], width - box_w + 1)
  return top, top + box_h, left, left + box_w, jnp.any(fits)


def _erase_mask(key, height, width, *, prob, min_count, max_count, attempts, **box_args):
  """bool [height, width]: the union of up to max_count boxes, or nothing (prob 1 - `prob`)."""
  # Two draws for everything: each jax.random call adds its own threefry code to compile.
  sample_key, box_key = jax.random.split(key)
  apply_u, count_u = jax.random.uniform(sample_key, (2,))
  count = min_count + _uniform_int(count_u, max_count - min_count + 1)
  box_draws = jax.random.uniform(box_key, (max_count, 2 * attempts + 2))
  mask = jnp.zeros((height, width), bool)
  for index in range(max_count):
    top, bottom, left, right, found = _erase_box(box_draws[index], height, width, count=count,
                                                 **box_args)
    mask |= box_mask(top, bottom, left, right, height, width) & found & (index < count)
  return mask & (apply_u < prob)


def _erase_values(key, mode, shape, dtype, video):
  """What erased pixels become, broadcastable to `shape` ([B, (T,) H, W, C])."""
  if mode == "pixel":  # fresh N(0, 1) per pixel (and per frame: timm draws per frame in cube mode)
    return jax.random.normal(key, shape, dtype)
  if mode == "rand":  # one N(0, 1) colour per box (per frame in cube mode)
    colour_shape = shape[:2 if video else 1] + (1, 1, shape[-1])
    return jax.random.normal(key, colour_shape, dtype)
  if mode == "const":  # timm: 0 after normalisation
    return jnp.zeros((), dtype)
  # 'black': torchvision RandomErasing(value=0) before Normalize, as the official IN1K config.
  return jnp.asarray(pixel_utils.normalize(np.zeros(3, np.float32)), dtype)


def random_erasing(key, pixels, *, prob=0.25, mode="pixel", min_area=0.02, max_area=1 / 3,
                   min_aspect=0.3, max_aspect=None, min_count=1, max_count=1, attempts=None,
                   video=False):
  """timm RandomErasing on normalised pixels [B, H, W, C] (video: [B, T, H, W, C], 'cube').

  Per sample, with probability `prob`: count in [min_count, max_count] boxes, each of area
  uniform in [min_area, max_area] x H x W / count and aspect log-uniform in
  [min_aspect, max_aspect (default 1/min_aspect)], the first of `attempts` draws that fits
  (default 10, or 100 for videos as omnivision's cube variant), placed uniformly. A box that
  never fits erases nothing. Videos: one box per clip, on every frame.
  Modes: 'pixel' per-pixel N(0, 1); 'rand' one N(0, 1) colour per box; 'const' zeros;
  'black' the normalised value of black pixels (torchvision RandomErasing(value=0), which the
  official IN1K config applies before Normalize).
  """
  if mode not in ERASE_MODES:
    raise ValueError(f"random_erasing: mode={mode!r}; allowed: {ERASE_MODES}")
  if pixels.ndim != (5 if video else 4):
    raise ValueError(f"random_erasing: pixels of shape {pixels.shape} with video={video}; "
                     "expected [B, T, H, W, C] for videos, [B, H, W, C] for images")
  if not 1 <= min_count <= max_count:
    raise ValueError(f"random_erasing: need 1 <= min_count <= max_count, got "
                     f"{min_count}, {max_count}")
  height, width = pixels.shape[-3], pixels.shape[-2]
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
  draw_mask = functools.partial(
      _erase_mask, height=height, width=width, prob=prob, min_count=min_count,
      max_count=max_count, min_area=min_area, max_area=max_area, log_aspect=log_aspect,
      attempts=attempts or (100 if video else 10))
  mask_key, value_key = jax.random.split(key)
  masks = jax.vmap(draw_mask)(jax.random.split(mask_key, pixels.shape[0]))  # [B, H, W]
  masks = masks[:, None, :, :, None] if video else masks[..., None]
  values = _erase_values(value_key, mode, pixels.shape, pixels.dtype, video)
  return jnp.where(masks, values, pixels)


# ------------------------------------------------------------------------------------------------
# Mixup / CutMix.

class MixParams(NamedTuple):
  """One batch's draw. `lam` is each sample's own share of its target (for cutmix already
  corrected to the box area); `box` = (top, bottom, left, right), used only when `use_cutmix`."""
  lam: jax.Array  # float32 []
  use_cutmix: jax.Array  # bool []
  box: jax.Array  # int32 [4]


def cutmix_box(key, lam, height: int, width: int):
  """timm rand_bbox: a box of about (1 - lam) of the area, centred uniformly, clipped to the image.

  int32 [4] (top, bottom, left, right).
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int(img_h * ratio)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  centre_u = jax.random.uniform(key, (2,))
  centre_y, centre_x = _uniform_int(centre_u[0], height), _uniform_int(centre_u[1], width)
  return jnp.stack([jnp.clip(centre_y - cut_h // 2, 0, height),
                    jnp.clip(centre_y + cut_h // 2, 0, height),
                    jnp.clip(centre_x - cut_w // 2, 0, width),
                    jnp.clip(centre_x + cut_w // 2, 0, width)])


def sample_mix_params(key, height: int, width: int, *, mixup_alpha=0.8, cutmix_alpha=1.0,
                      prob=1.0, switch_prob=0.5, correct_lam=True) -> MixParams:
  """timm Mixup._params_per_batch, then the cutmix box and its lambda correction."""
  choice_key, lam_key, box_key = jax.random.split(key, 3)
  apply_u, switch_u = jax.random.uniform(choice_key, (2,))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = switch_u < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  apply = (apply_u < prob) & (mixup_alpha > 0 or cutmix_alpha > 0)
  # Beta(a, a) as the first coordinate of Dirichlet(a, a): one gamma draw with the alpha of the
  # chosen method (jax.random.beta would compile two rejection loops per call site).
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha if mixup_alpha > 0 else 1.0)
  lam = jax.random.dirichlet(lam_key, jnp.stack([alpha, alpha]))[0]
  lam = jnp.where(apply, lam, 1.0).astype(jnp.float32)
  use_cutmix = apply & use_cutmix
  box = cutmix_box(box_key, lam, height, width)
  if correct_lam:
    box_area = (box[1] - box[0]) * (box[3] - box[2])
    lam = jnp.where(use_cutmix, 1.0 - box_area / (height * width), lam).astype(jnp.float32)
  return MixParams(lam, use_cutmix, box)


def _partners(batch: int):
  """timm mixes sample i with sample B-1-i; omnivision's CutMixUp leaves the last sample of an
  odd batch unmixed (it mixes the first B-1). Returns (partner index, whether mixed)."""
  num_mixed = batch - batch % 2
  partner = np.concatenate([np.arange(num_mixed)[::-1], np.arange(num_mixed, batch)])
  return jnp.asarray(partner), jnp.asarray(np.arange(batch) < num_mixed)


def smoothed_targets(labels, valid, num_classes: int, label_smoothing: float):
  """timm one_hot(on = 1 - s + s/K, off = s/K) == optax.smooth_labels; an invalid sample (its
  label is a placeholder) gets the uniform distribution, so every row is finite and sums to 1,
  also in the share a valid sample takes from an invalid partner."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  smoothed = optax.smooth_labels(one_hot, label_smoothing)
  return jnp.where(jnp.asarray(valid).astype(bool)[:, None], smoothed, 1.0 / num_classes)


def apply_mix(pixels, labels, valid, params: MixParams, *, num_classes: int,
              label_smoothing=0.1):
  """Mix a batch with its reverse: cutmix pastes the partner's box (on every frame of a video),
  mixup blends with weight lam. -> (pixels, float32 targets [B, num_classes])."""
  partner, mixed = _partners(pixels.shape[0])
  height, width = pixels.shape[-3], pixels.shape[-2]
  outside_box = ~box_mask(*params.box, height, width)[..., None]  # [H, W, 1]
  # Own-sample weight per pixel: 1 outside the box / 0 inside for cutmix, lam for mixup.
  weight = jnp.where(params.use_cutmix, outside_box.astype(jnp.float32), params.lam)
  own, other = pixels.astype(jnp.float32), pixels[partner].astype(jnp.float32)
  mixed_pixels = (own * weight + other * (1.0 - weight)).astype(pixels.dtype)
  rows = mixed.reshape((-1,) + (1,) * (pixels.ndim - 1))
  pixels = jnp.where(rows, mixed_pixels, pixels)
  targets = smoothed_targets(labels, valid, num_classes, label_smoothing)
  mixed_targets = params.lam * targets + (1.0 - params.lam) * targets[partner]
  return pixels, jnp.where(mixed[:, None], mixed_targets, targets)


def mixup_cutmix(key, pixels, labels, valid, *, num_classes: int, mixup_alpha=0.8,
                 cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                 correct_lam=True):
  """timm Mixup, mode 'batch', on [B, H, W, C] or [B, T, H, W, C] normalised pixels and int
  labels [B]. -> (mixed pixels, float32 soft targets [B, num_classes]).

  With probability `prob` the batch is mixed: cutmix (probability switch_prob when both alphas
  are > 0) with lam ~ Beta(cutmix_alpha) and a box of the partner pasted, lam corrected to the
  box area; otherwise mixup with lam ~ Beta(mixup_alpha). Targets are timm's mixup_target.
  """
  params = sample_mix_params(key, pixels.shape[-3], pixels.shape[-2], mixup_alpha=mixup_alpha,
                             cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                             correct_lam=correct_lam)
  return apply_mix(pixels, labels, valid, params, num_classes=num_classes,
                   label_smoothing=label_smoothing)


# ------------------------------------------------------------------------------------------------
# Per-shard application.

def shard_local(fn, mesh, axis: str = DATA):
  """fn(key, *batch_arrays) -> batch outputs, run independently on each `axis` shard.

  Every argument after the key is split along its leading (batch) axis over `axis`, as
  sharding.batch_sharding lays the batch out, and so are the outputs. Each shard gets the key
  folded with its index along `axis`, so shards draw different lambdas and boxes; devices that
  hold copies of a shard (the 'model' axis) draw the same.
  """
  def per_shard(key, *args):
    return fn(jax.random.fold_in(key, jax.lax.axis_index(axis)), *args)

  def call(key, *args):
    batch_spec = PartitionSpec(axis)
    in_specs = (PartitionSpec(),) + (batch_spec,) * len(args)
    mapped = jax.shard_map(per_shard, mesh=mesh, in_specs=in_specs, out_specs=batch_spec)
    return mapped(key, *args)

  return call
