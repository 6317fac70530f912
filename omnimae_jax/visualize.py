"""Pictures of what the MAE reconstructs: original | masked | reconstruction (the paper's Fig. 4).

All functions take the model's inputs and outputs as they are (normalised pixels [B,H,W,3] or
[B,T,H,W,3], mask [B,N] with True = masked, predictions [B,N,3*pt*ph*pw] in the loss's
channel-fastest layout) and work on the host in NumPy. An image becomes a pt-frame clip exactly as
the model sees it, so its patches and their statistics match the loss targets.
"""
import io
from typing import List

import einops
import numpy as np
from PIL import Image

from omnimae_jax import paths, pixels as pixel_stats
from omnimae_jax.models.mae import TARGET_EPS, patchify
from omnimae_jax.models.vit import as_clip

GREY = 0.5  # masked patches in the 'masked' panel
GAP = 4  # white pixels between panels (and between frames of a strip)
GIF_FRAME_MS = 170  # ~16 frames over the 2.7 s the model's clips span


def _clip(pixels, frames_per_patch: int, pad_type: str) -> np.ndarray:
  """Normalised model inputs -> [B, T, H, W, 3] in [0, 1] (an image becomes pt frames)."""
  unit = pixel_stats.denormalize(np.asarray(pixels, np.float32))
  return np.asarray(as_clip(unit, frames_per_patch, pad_type), np.float32)


def _unpatchify(patches, clip_shape, patch_size) -> np.ndarray:
  """[B, N, pt*ph*pw, 3] -> [B, T, H, W, 3] (inverse of models.mae.patchify)."""
  pt, ph, pw = patch_size
  _, frames, height, width, _ = clip_shape
  return einops.rearrange(patches, "b (t h w) (pt ph pw) c -> b (t pt) (h ph) (w pw) c",
                          t=frames // pt, h=height // ph, w=width // pw, pt=pt, ph=ph, pw=pw)


def _pixel_mask(mask, clip_shape, patch_size) -> np.ndarray:
  """Token mask [B, N] -> per-pixel mask [B, T, H, W, 1]."""
  pt, ph, pw = patch_size
  _, frames, height, width, _ = clip_shape
  tokens = np.asarray(mask, bool).reshape(-1, frames // pt, height // ph, width // pw)
  for axis, size in ((1, pt), (2, ph), (3, pw)):
    tokens = np.repeat(tokens, size, axis=axis)
  return tokens[..., None]


def _check_mask(mask, clip_shape, patch_size):
  pt, ph, pw = patch_size
  _, frames, height, width, _ = clip_shape
  num_tokens = (frames // pt) * (height // ph) * (width // pw)
  if np.shape(mask) != (clip_shape[0], num_tokens):
    raise ValueError(f"mask: expected shape [B, N] = [{clip_shape[0]}, {num_tokens}] for pixels "
                     f"of clip shape {tuple(clip_shape)} and patch_size {tuple(patch_size)}, "
                     f"got {tuple(np.shape(mask))}")


def reconstruct_pixels(pred, pixels, mask, patch_size, norm_pix: bool = True,
                       pad_type: str = "repeat") -> np.ndarray:
  """The reconstruction in pixel space: float32 [B, T, H, W, 3] in [0, 1].

  Masked patches come from `pred`; with norm_pix (the official loss's per-patch, per-channel
  normalised targets) they are un-normalised with the statistics of the target patch, i.e. its
  per-channel mean and unbiased std sqrt(var + 1e-6). Visible patches are the input itself.
  """
  clip = _clip(pixels, patch_size[0], pad_type)
  _check_mask(mask, clip.shape, patch_size)
  patches = patchify(clip, patch_size)  # [B, N, P, 3]
  predicted = np.asarray(pred, np.float32).reshape(patches.shape)
  if norm_pix:
    mean = patches.mean(axis=2, keepdims=True)
    std = np.sqrt(patches.var(axis=2, ddof=1, keepdims=True) + TARGET_EPS)
    predicted = predicted * std + mean
  recon = _unpatchify(predicted, clip.shape, patch_size)
  merged = np.where(_pixel_mask(mask, clip.shape, patch_size), recon, clip)
  return np.clip(merged, 0.0, 1.0).astype(np.float32)


def masked_pixels(pixels, mask, patch_size, pad_type: str = "repeat") -> np.ndarray:
  """The input as the encoder sees it: float32 [B, T, H, W, 3] in [0, 1], masked patches grey."""
  clip = _clip(pixels, patch_size[0], pad_type)
  _check_mask(mask, clip.shape, patch_size)
  shown = np.where(_pixel_mask(mask, clip.shape, patch_size), np.float32(GREY), clip)
  return np.clip(shown, 0.0, 1.0).astype(np.float32)


def _to_uint8(unit) -> np.ndarray:
  return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _is_image(pixels) -> bool:
  return np.ndim(pixels) == 4 or np.shape(pixels)[1] == 1


def _panels(pixels, mask, pred, patch_size, norm_pix, index, pad_type):
  """(original, masked, reconstruction) of one sample, each uint8 [T, H, W, 3].

  An image keeps one frame: its pt frames are the same picture (with 'repeat' padding).
  """
  batch = np.shape(pixels)[0]
  if not 0 <= index < batch:
    raise ValueError(f"index={index} is outside the batch of {batch}")
  one = slice(index, index + 1)  # keep the batch axis: the helpers take batches
  pixels, mask, pred = np.asarray(pixels)[one], np.asarray(mask)[one], np.asarray(pred)[one]
  panels = [_clip(pixels, patch_size[0], pad_type)[0],
            masked_pixels(pixels, mask, patch_size, pad_type)[0],
            reconstruct_pixels(pred, pixels, mask, patch_size, norm_pix, pad_type)[0]]
  if _is_image(pixels):
    panels = [panel[:1] for panel in panels]
  return [_to_uint8(panel) for panel in panels]


def _join(arrays, axis: int) -> np.ndarray:
  """Concatenates uint8 pictures along `axis` with GAP white pixels between them."""
  gap_shape = list(arrays[0].shape)
  gap_shape[axis] = GAP
  gap = np.full(gap_shape, 255, np.uint8)
  pieces = [arrays[0]]
  for array in arrays[1:]:
    pieces += [gap, array]
  return np.concatenate(pieces, axis=axis)


def comparison_frames(pixels, mask, pred, patch_size, norm_pix: bool = True, index: int = 0,
                      pad_type: str = "repeat") -> np.ndarray:
  """original | masked | reconstruction of sample `index`: uint8 [T, H, 3W + 2*GAP, 3].

  T is the clip's frame count for a video and 1 for an image.
  """
  return _join(_panels(pixels, mask, pred, patch_size, norm_pix, index, pad_type), axis=2)


def write_reconstruction(path_prefix, pixels, mask, pred, patch_size, norm_pix: bool = True,
                         index: int = 0, pad_type: str = "repeat") -> List[str]:
  """Writes the comparison for sample `index`; returns the paths written.

  An image: `<prefix>.png` (original | masked | reconstruction). A video: `<prefix>.gif`
  (animated, the three side by side) and `<prefix>_strip.png` (frames left to right; rows
  original, masked, reconstruction). The prefix may be a gs:// URL.
  """
  panels = _panels(pixels, mask, pred, patch_size, norm_pix, index, pad_type)
  prefix = paths.workdir_path(path_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  if _is_image(pixels):
    path = _sibling(prefix, ".png")
    _save(path, Image.fromarray(_join(panels, axis=2)[0]), "PNG")
    return [str(path)]
  frames = [Image.fromarray(frame) for frame in _join(panels, axis=2)]
  gif_path, strip_path = _sibling(prefix, ".gif"), _sibling(prefix, "_strip.png")
  _save(gif_path, frames[0], "GIF", save_all=True, append_images=frames[1:],
        duration=GIF_FRAME_MS, loop=0)
  rows = [_join(list(panel), axis=1) for panel in panels]  # each [H, T*W + (T-1)*GAP, 3]
  _save(strip_path, Image.fromarray(_join(rows, axis=0)), "PNG")
  return [str(gif_path), str(strip_path)]


def _sibling(prefix, suffix: str):
  return prefix.parent / (prefix.name + suffix)


def _save(path, image, image_format: str, **options):
  """Pillow writes into memory and epath writes the bytes: Pillow cannot open a gs:// URL."""
  buffer = io.BytesIO()
  image.save(buffer, format=image_format, **options)
  path.write_bytes(buffer.getvalue())
