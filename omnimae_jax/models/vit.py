"""The OmniMAE trunk: 3-D patch embedding, fixed sin-cos positions, pre-LN ViT blocks (SPEC §1.1-1.3)."""
import dataclasses
import functools
from typing import Optional, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnimae_jax.models import layers
from omnimae_jax.models.attention import ATTENTION_SETTINGS
from omnimae_jax.models.remat import normalise_remat, remat_for

PAD_TYPES = ("repeat", "zero")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that shapes a model; `omnimae_jax.models.build` fills it from a named size."""
  patch_size: Tuple[int, int, int] = (2, 16, 16)  # (time, height, width)
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  img_size: int = 224  # with num_frames, fixes the position table's grid
  num_frames: int = 16
  qkv_bias: bool = True
  drop_path: float = 0.0
  pad_type: str = "repeat"  # how an image becomes a `patch_size[0]`-frame clip
  decoder_width: int = 384
  decoder_depth: int = 4
  decoder_heads: int = 16
  decoder_qkv_bias: bool = False  # the published checkpoints have none (SPEC §1.3)
  num_classes: int = 1000
  head_init_std: float = 2e-5  # classifier head: 2e-5 for IN1K, 0.01 for SSv2
  compute_dtype: str = "float32"  # 'bfloat16' on accelerators; params stay float32
  remat: str = "none"  # 'none' | 'full' | 'auto' (see models/remat.py)
  attention: str = "auto"  # 'auto' | 'xla' | 'explicit' | 'cudnn' | 'splash' (models/attention.py)

  def __post_init__(self):
    object.__setattr__(self, "remat", normalise_remat(self.remat))  # frozen: set once, here
    if self.attention not in ATTENTION_SETTINGS:
      raise ValueError(f"attention={self.attention!r}; allowed: {ATTENTION_SETTINGS}")
    if self.pad_type not in PAD_TYPES:
      raise ValueError(f"pad_type={self.pad_type!r}; allowed: {PAD_TYPES}")
    if self.compute_dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"compute_dtype={self.compute_dtype!r}; allowed: float32, bfloat16, float16")
    pt, ph, pw = self.patch_size
    if self.img_size % ph or self.img_size % pw or self.num_frames % pt:
      raise ValueError(f"img_size={self.img_size} and num_frames={self.num_frames} must be "
                       f"divisible by patch_size={self.patch_size}")

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)

  @property
  def table_grid(self) -> Tuple[int, int, int]:
    pt, ph, pw = self.patch_size
    return self.num_frames // pt, self.img_size // ph, self.img_size // pw

  @property
  def pixels_per_patch(self) -> int:
    return 3 * int(np.prod(self.patch_size))


def block_remat(config: ModelConfig, grid) -> str:
  """The remat of this forward's blocks; 'auto' not yet decided by the caller (the training loop
  decides it per modality and mesh) is decided for the default backend."""
  modality = "video" if grid[0] > 1 else "image"
  return remat_for(config, modality, jax.default_backend())


def token_grid(pixels_shape, patch_size) -> Tuple[int, int, int]:
  """(T', H', W') for an image [B,H,W,3] (T'=1) or a video [B,T,H,W,3]; ValueError otherwise."""
  if len(pixels_shape) not in (4, 5) or pixels_shape[-1] != 3:
    raise ValueError(f"pixels: expected [B,H,W,3] (image) or [B,T,H,W,3] (video), "
                     f"got shape {tuple(pixels_shape)}")
  pt, ph, pw = patch_size
  height, width = pixels_shape[-3:-1]
  frames = pixels_shape[1] if len(pixels_shape) == 5 else 1
  if height % ph or width % pw:
    raise ValueError(f"pixels: spatial size {height}x{width} (shape {tuple(pixels_shape)}) is not "
                     f"divisible by the patch size {ph}x{pw}")
  if frames > 1 and frames % pt:
    raise ValueError(f"pixels: {frames} frames (shape {tuple(pixels_shape)}) is not divisible by "
                     f"the temporal patch size {pt}")
  return max(frames // pt, 1), height // ph, width // pw


def as_clip(pixels, num_frames: int, pad_type: str):
  """An image [B,H,W,3] (or a 1-frame clip) becomes a `num_frames`-frame clip [B,T,H,W,3].

  'repeat' copies the frame (the released models); 'zero' pads with zero frames.
  """
  if pixels.ndim == 4:
    pixels = pixels[:, None]
  if pixels.shape[1] != 1:
    return pixels
  if pad_type == "repeat":
    return jnp.repeat(pixels, num_frames, axis=1)
  zeros = jnp.zeros_like(pixels)
  return jnp.concatenate([pixels] + [zeros] * (num_frames - 1), axis=1)


class PatchEmbed(nn.Module):
  """Conv3d with kernel = stride = patch size on NTHWC; tokens flattened in raster (t, h, w).

  The parameters are those of `nn.Conv(features, kernel_size=patch_size)` ('proj/kernel'
  [pt, ph, pw, C, D], 'proj/bias' [D]); the convolution is computed as what it is, one matmul of
  the patchified pixels [B, N, pt*ph*pw*C] with the kernel viewed as [pt*ph*pw*C, D]. On XLA:CPU
  that is faster than the strided convolution and its weight gradient (it skips their layout
  copies). An image padded to a clip by *repeating* its frame gives the same tokens as the image
  times the kernel summed over time, so images never build the repeated clip and do half the
  multiply-adds; a zero-padded image only meets the kernel's first time slice. Given keep_idx,
  only those patches are projected (a masked patch's token is never used).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, pixels, keep_idx: Optional[jnp.ndarray] = None):
    return PatchProjection(self.config, name="proj")(pixels, keep_idx)


class PatchProjection(nn.Module):
  """The parameters of PatchEmbed, named as nn.Conv names them (a converter stays a table)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, pixels, keep_idx: Optional[jnp.ndarray] = None):
    cfg = self.config
    fan_in = cfg.pixels_per_patch
    kernel = self.param(
        "kernel", layers.partitioned(layers.xavier_uniform(fan_in, cfg.width),
                                     (None, None, None, None, "embed")),
        (*cfg.patch_size, 3, cfg.width))  # [pt, ph, pw, C, D]
    bias = self.param("bias", layers.partitioned(layers.uniform_bias(fan_in), ("embed",)),
                      (cfg.width,))
    return project_patches(pixels, kernel, bias, cfg.pad_type, cfg.dtype, keep_idx)


def project_patches(pixels, kernel, bias, pad_type: str, dtype,
                    keep_idx: Optional[jnp.ndarray] = None):
  """pixels [B,H,W,C] or [B,T,H,W,C], kernel [pt,ph,pw,C,D], bias [D] -> tokens [B, N, D], or
  [B, N_vis, D] of the patches keep_idx [B, N_vis] names."""
  pt, ph, pw = kernel.shape[:3]
  if pixels.ndim == 5 and pixels.shape[1] == 1:
    pixels = pixels[:, 0]
  if pixels.ndim == 4:  # an image: as_clip(pixels, pt, pad_type) folded into the kernel
    # [ph, pw, C, D]. The time slices are summed by adds: XLA:CPU fuses a reduce into the
    # matmul and recomputes it per tile (ViT-B, 160 visible patches: 32 ms against 6 ms).
    kernel = functools.reduce(jnp.add, list(kernel)) if pad_type == "repeat" else kernel[0]
    patches = einops.rearrange(pixels, "b (h ph) (w pw) c -> b (h w) (ph pw c)", ph=ph, pw=pw)
  else:
    patches = einops.rearrange(pixels, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)",
                               pt=pt, ph=ph, pw=pw)
  if keep_idx is not None:
    patches = gather_tokens(patches, keep_idx)
  kernel = kernel.reshape(-1, kernel.shape[-1]).astype(dtype)  # [(pt) ph pw C, D]
  return patches.astype(dtype) @ kernel + bias.astype(dtype)  # [B, N or N_vis, D]


def gather_tokens(tokens, keep_idx):
  """tokens [B, N, D], keep_idx [B, N_vis] -> [B, N_vis, D] (raster order when keep_idx ascends)."""
  return jnp.take_along_axis(tokens, keep_idx[..., None], axis=1)


class Trunk(nn.Module):
  """Patch embed + positions, optional token dropping, blocks, and the final norm.

  pool=False: per-token outputs, normed (pretraining). pool=True: mean over tokens, then the norm
  (fine-tuning; the norm plays MAE's fc_norm role, SPEC §1.6).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, pixels, keep_idx: Optional[jnp.ndarray] = None, *, pool: bool = False,
               train: bool = False):
    cfg = self.config
    grid = token_grid(pixels.shape, cfg.patch_size)
    tokens = PatchEmbed(cfg, name="patch_embed")(pixels, keep_idx)  # [B, N or N_vis, D]
    positions = layers.position_table(grid, cfg.table_grid, cfg.width)  # [N, D]
    if keep_idx is not None:
      positions = positions[keep_idx]  # [B, N_vis, D]
    tokens = tokens + positions.astype(tokens.dtype)
    tokens = nn.with_logical_constraint(tokens, ("batch", "length", "embed"))
    tokens = layers.block_stack(
        tokens, prefix="blocks", depth=cfg.depth, num_heads=cfg.num_heads,
        mlp_dim=int(cfg.width * cfg.mlp_ratio), qkv_bias=cfg.qkv_bias, drop_path=cfg.drop_path,
        dtype=cfg.dtype, attention=cfg.attention, remat=block_remat(cfg, grid), train=train)
    if pool:
      tokens = tokens.mean(axis=1)  # [B, D]
    return layers.layer_norm("norm", cfg.dtype)(tokens)
