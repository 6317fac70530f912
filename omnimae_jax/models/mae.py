"""The OmniMAE pretraining model and its reconstruction loss (SPEC §1.4, §1.5)."""
from typing import Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnimae_jax import pixels as pixel_stats
from omnimae_jax.models import layers
from omnimae_jax.models.vit import ModelConfig, Trunk, as_clip, block_remat, token_grid

TARGET_EPS = 1e-6  # inside the square root, as in the official per-patch normalisation


def check_mask(mask, batch: int, num_tokens: int, keep_idx=None):
  """Validates mask [B, N] (True = masked); returns keep_idx [B, N_vis] (ascending raster order).

  When the mask is concrete, the counts per row are checked and keep_idx is computed; under a
  trace, the static visible count cannot be known, so keep_idx must be passed.
  """
  if mask.ndim != 2 or mask.shape != (batch, num_tokens):
    raise ValueError(f"mask: expected shape [B, N] = [{batch}, {num_tokens}] for these pixels, "
                     f"got {tuple(mask.shape)}")
  if keep_idx is not None:
    if keep_idx.ndim != 2 or keep_idx.shape[0] != batch or keep_idx.shape[1] > num_tokens:
      raise ValueError(f"keep_idx: expected shape [{batch}, N_vis] with N_vis <= {num_tokens}, "
                       f"got {tuple(keep_idx.shape)}")
    return keep_idx
  if isinstance(mask, jax.core.Tracer):
    raise ValueError("mask: under jit the visible-token count must be static; pass "
                     "keep_idx [B, N_vis] (the input pipeline provides it)")
  mask = np.asarray(mask, dtype=bool)
  counts = mask.sum(axis=1)
  if np.any(counts != counts[0]):
    raise ValueError(f"mask: every row must mask the same number of tokens (static shapes); got "
                     f"counts {sorted(set(counts.tolist()))} in a mask of shape {mask.shape}")
  num_visible = num_tokens - int(counts[0])
  return np.argsort(mask, axis=1, kind="stable")[:, :num_visible].astype(np.int32)


def scatter_tokens(fill, visible, keep_idx, num_tokens: int):
  """[B, N, D] filled with `fill` ([D]) except rows keep_idx, which take `visible` [B, N_vis, D]."""
  batch, _, width = visible.shape
  full = jnp.broadcast_to(fill.astype(visible.dtype), (batch, num_tokens, width))
  return full.at[jnp.arange(batch)[:, None], keep_idx].set(visible)


class Decoder(nn.Module):
  """Mask tokens back in, positions added at encoder width, projection, blocks, norm (SPEC §1.4)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, visible, keep_idx, grid, train: bool = False):
    cfg = self.config
    num_tokens = int(np.prod(grid))
    mask_token = self.param(
        "mask_token", layers.partitioned(nn.initializers.zeros, (None, "embed")),
        (1, cfg.width))  # zeros, "following iBOT" (SPEC §1.3)
    embed = layers.Dense(
        cfg.decoder_width, dtype=cfg.dtype, name="decoder_embed",
        kernel_init=layers.partitioned(
            layers.xavier_uniform(cfg.width, cfg.decoder_width), ("embed", "decoder_embed")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("decoder_embed",)))
    # The official decoder projects (mask tokens scattered among the visible ones + positions),
    # [B, N, D_enc] rows. The projection is linear, so each part is projected on its own: the
    # visible tokens, one mask token and the batch-independent position table (with the bias),
    # a tenth of the rows at 90% masking, the same sum.
    positions = layers.position_table(grid, cfg.table_grid, cfg.width)  # [N, D_enc]
    tokens = scatter_tokens(embed(mask_token, add_bias=False)[0], embed(visible, add_bias=False),
                            keep_idx, num_tokens)  # [B, N, D_dec]
    tokens = tokens + embed(positions.astype(visible.dtype))
    tokens = layers.block_stack(
        tokens, prefix="decoder_blocks", depth=cfg.decoder_depth, num_heads=cfg.decoder_heads,
        mlp_dim=int(cfg.decoder_width * cfg.mlp_ratio), qkv_bias=cfg.decoder_qkv_bias,
        drop_path=0.0, dtype=cfg.dtype, attention=cfg.attention, remat=block_remat(cfg, grid),
        train=train)
    return layers.layer_norm("norm", cfg.dtype)(tokens)  # [B, N, D_dec]


class MAEPretrain(nn.Module):
  """apply(variables, pixels, mask) -> per-token pixel predictions [B, N, 3*pt*ph*pw] (float32).

  pixels: normalised [B,H,W,3] or [B,T,H,W,3]; mask: bool [B, N], True = masked, the same count
  in every row. Pass keep_idx [B, N_vis] when calling under jit.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, pixels, mask, keep_idx: Optional[jnp.ndarray] = None, train: bool = False):
    cfg = self.config
    grid = token_grid(pixels.shape, cfg.patch_size)
    keep_idx = check_mask(mask, pixels.shape[0], int(np.prod(grid)), keep_idx)
    visible = Trunk(cfg, name="trunk")(pixels, keep_idx, train=train)  # [B, N_vis, D]
    decoded = Decoder(cfg, name="decoder")(visible, keep_idx, grid, train=train)
    pred = layers.Dense(
        cfg.pixels_per_patch, dtype=cfg.dtype, name="head",
        kernel_init=layers.partitioned(layers.truncated_normal(0.02), ("decoder_embed", None)),
        bias_init=layers.partitioned(nn.initializers.zeros, (None,)))(decoded)
    return pred.astype(jnp.float32)  # [B, N, 3*pt*ph*pw]


def patchify(clip, patch_size):
  """[B, T, H, W, C] -> [B, N, pt*ph*pw, C], tokens in raster (t, h, w) order."""
  pt, ph, pw = patch_size
  return einops.rearrange(clip, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw) c",
                          pt=pt, ph=ph, pw=pw)


def reconstruction_target(pixels, patch_size, norm_pix: bool = True, pad_type: str = "repeat"):
  """Per-token targets [B, N, pt*ph*pw*3] (channel fastest) from normalised pixels.

  Pixels go back to [0, 1]; an image becomes a clip exactly as the model sees it. With norm_pix,
  each token's pixels are normalised per channel by their mean and *unbiased* variance
  (x - mean) / sqrt(var + 1e-6), as in the official loss.
  """
  clip = as_clip(pixel_stats.denormalize(pixels.astype(jnp.float32)), patch_size[0], pad_type)
  patches = patchify(clip, patch_size)  # [B, N, P, 3]
  if norm_pix:
    mean = patches.mean(axis=2, keepdims=True)
    var = patches.var(axis=2, keepdims=True, ddof=1)
    patches = (patches - mean) / jnp.sqrt(var + TARGET_EPS)
  return patches.reshape(patches.shape[0], patches.shape[1], -1)


def _normalise_patches(patches, count: int):
  """(x - mean) / sqrt(var + eps) over axis 2 of [B, N, P, C]; var is unbiased over `count`
  samples of which `patches` holds count / P copies of each (a repeated frame)."""
  mean = patches.mean(axis=2, keepdims=True)
  centred = patches - mean
  repeats = count // patches.shape[2]
  var = repeats * jnp.sum(jnp.square(centred), axis=2, keepdims=True) / (count - 1)
  return centred * jax.lax.rsqrt(var + TARGET_EPS)


def per_token_error(pred, pixels, patch_size, norm_pix: bool = True, pad_type: str = "repeat"):
  """Mean squared error per token [B, N] between pred [B, N, pt*ph*pw*3] and the target.

  An image padded by repeating its frame has pt identical target frames: the target of one frame
  is computed (the unbiased variance counts the pt copies) and compared with each of the pt
  slices of the prediction, so the repeated clip is never built. Otherwise the target is
  reconstruction_target's.
  """
  pt, ph, pw = patch_size
  image = pixels.ndim == 4 or pixels.shape[1] == 1
  if not (image and pad_type == "repeat"):
    target = reconstruction_target(pixels, patch_size, norm_pix, pad_type)
    if pred.shape != target.shape:
      raise ValueError(f"pred: expected shape {target.shape} for pixels {tuple(pixels.shape)} "
                       f"and patch_size {tuple(patch_size)}, got {tuple(pred.shape)}")
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  frame = pixel_stats.denormalize(pixels.reshape(pixels.shape[0], *pixels.shape[-3:])
                                  .astype(jnp.float32))
  patches = einops.rearrange(frame, "b (h ph) (w pw) c -> b (h w) (ph pw) c", ph=ph, pw=pw)
  if norm_pix:
    patches = _normalise_patches(patches, pt * ph * pw)
  batch, num_tokens = patches.shape[:2]
  expected = (batch, num_tokens, pt * ph * pw * 3)
  if pred.shape != expected:
    raise ValueError(f"pred: expected shape {expected} for pixels {tuple(pixels.shape)} and "
                     f"patch_size {tuple(patch_size)}, got {tuple(pred.shape)}")
  target = patches.reshape(batch, num_tokens, 1, -1)  # [B, N, 1, ph*pw*3]
  pred = pred.astype(jnp.float32).reshape(batch, num_tokens, pt, -1)  # [B, N, pt, ph*pw*3]
  return jnp.mean(jnp.square(pred - target), axis=(2, 3))


def reconstruction_loss(pred, pixels, mask, patch_size, norm_pix: bool = True,
                        pad_type: str = "repeat", sample_weights=None):
  """MSE per token, summed over masked tokens of the batch / number of masked tokens (SPEC §1.5).

  sample_weights [B] (optional, e.g. the input pipeline's `valid` flags) scale each sample's
  masked tokens: a sample of weight 0 (a record that could not be decoded) costs nothing.
  """
  per_token = per_token_error(pred, pixels, patch_size, norm_pix, pad_type)  # [B, N]
  if mask.shape != per_token.shape:
    raise ValueError(f"mask: expected shape {per_token.shape}, got {tuple(mask.shape)}")
  weights = mask.astype(jnp.float32)
  if sample_weights is not None:
    weights = weights * jnp.asarray(sample_weights, jnp.float32)[:, None]
  return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)
