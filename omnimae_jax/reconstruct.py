"""What does the MAE see and rebuild? Labelled panels for one image or video, and its loss.

    python -m omnimae_jax.reconstruct --checkpoint vitb_pretrain.torch --input cat.jpg \
        --mask_ratio 0.9 --mask_kind random --out recon/cat
    python -m omnimae_jax.reconstruct --checkpoint workdir/demo --input clip.mp4 --out recon/clip

CKPT is a pretraining checkpoint: an official .torch file (imported on the fly by
omnimae_jax.convert) or one of our model directories / training workdirs (all read by
omnimae_jax.pretrained.load). An image (JPEG/PNG/...) is resized (short side) and centre-cropped
to the model's img_size; a video (mp4/webm/...) gives the model's num_frames frames spread evenly
over a 2.7 s window at its middle (the whole clip if shorter), each resized and cropped likewise.
Writes OUT.png for an image, OUT.gif and OUT_strip.png for a video (see visualize.py).

The loss and the panels depend on what the model was trained to predict: per-patch normalised
pixels (the paper's `loss.norm_pix=True`) or plain pixels. A training workdir says which in its
config.json; for anything else (an official file, a model directory) the paper's default is
assumed and a note says so. `--norm_pix` / `--no-norm_pix` overrides both.
"""
import argparse
import math
import os
import sys
from typing import Optional, Tuple

import av
import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from omnimae_jax import pretrained, visualize
from omnimae_jax import pixels as pixel_stats
from omnimae_jax.models import mae
from omnimae_jax.models.vit import token_grid
from omnimae_jax.train import checkpoint, run_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
CLIP_SECONDS = 2.7  # the official clip window (SPEC §3.2)
DEFAULT_RATIOS = {"image": 0.9, "video": 0.95}  # the paper's (SPEC §2.3)
TARGET_KINDS = {True: "per-patch normalised", False: "plain-pixel"}


class ReconstructError(ValueError):
  """An input, checkpoint or option the tool cannot use; the message says which and why."""


def resize_and_crop(picture: Image.Image, size: int) -> np.ndarray:
  """Short side to `size` (bicubic), then the central size x size square: uint8 [size, size, 3]."""
  width, height = picture.size
  scale = size / min(width, height)
  resized = picture.convert("RGB").resize(
      (max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
  left, top = (resized.width - size) // 2, (resized.height - size) // 2
  return np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)


def read_image(path: str, size: int) -> np.ndarray:
  try:
    with Image.open(path) as picture:
      return resize_and_crop(picture, size)
  except (UnidentifiedImageError, OSError) as e:
    raise ReconstructError(f"{path}: cannot read the image ({e})") from e


def clip_window(duration, clip_seconds: float):
  """[start, end) in seconds from the clip's start: its middle `clip_seconds`, or all of it.

  A container that declares no duration gives the window that starts at the first frame.
  """
  if duration is None:
    return 0.0, clip_seconds
  if duration <= clip_seconds:
    return 0.0, math.inf
  start = (duration - clip_seconds) / 2
  return start, start + clip_seconds


def _duration_seconds(container, stream):
  if stream.duration is not None and stream.time_base:
    return float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / av.time_base
  return None


def _start_seconds(stream) -> float:
  """Frame times count from the stream's start time, which need not be 0."""
  if stream.start_time is not None and stream.time_base:
    return float(stream.start_time * stream.time_base)
  return 0.0


def _decode_window(container, stream, start: float, end: float, size: int):
  """The frames whose time lies in [start, end), resized and cropped: list of uint8 arrays."""
  fps = float(stream.average_rate or stream.guessed_rate or 25)
  if start > _start_seconds(stream):
    container.seek(int(start / stream.time_base), stream=stream)  # the keyframe before start
  frames = []
  for index, frame in enumerate(container.decode(stream)):
    time = frame.time if frame.time is not None else index / fps
    if time < start:
      continue
    if time >= end:
      break
    frames.append(resize_and_crop(frame.to_image(), size))
  return frames


def read_video(path: str, num_frames: int, size: int, clip_seconds: float = CLIP_SECONDS
               ) -> np.ndarray:
  """num_frames frames spread evenly over the clip window: uint8 [num_frames, size, size, 3]."""
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise ReconstructError(f"{path}: no video stream")
      stream = container.streams.video[0]
      start, end = clip_window(_duration_seconds(container, stream), clip_seconds)
      offset = _start_seconds(stream)
      frames = _decode_window(container, stream, offset + start, offset + end, size)
  except (av.error.FFmpegError, OSError) as e:
    raise ReconstructError(f"{path}: cannot decode the video ({e})") from e
  if not frames:
    raise ReconstructError(f"{path}: no frames decoded")
  # Evenly spaced, as UniformTemporalSubsample: a short clip repeats frames.
  picks = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(int)
  return np.stack([frames[i] for i in picks])


def read_input(path: str, config) -> np.ndarray:
  """uint8 [H, W, 3] for an image, [T, H, W, 3] for a video, at the model's sizes."""
  suffix = os.path.splitext(path)[1].lower()
  if not os.path.isfile(path):
    raise ReconstructError(f"{path}: no such file")
  if suffix in IMAGE_SUFFIXES:
    return read_image(path, config.img_size)
  if suffix in VIDEO_SUFFIXES:
    return read_video(path, config.num_frames, config.img_size)
  raise ReconstructError(f"{path}: unknown suffix {suffix!r}; images: {IMAGE_SUFFIXES}, "
                         f"videos: {VIDEO_SUFFIXES}")


def sample_mask(kind: str, grid, ratio: float, seed: int) -> np.ndarray:
  """bool [N], True = masked, from the input pipeline's own mask sampler."""
  from omnimae_jax.data import masking  # pylint: disable=g-import-not-at-top  (imports TF)
  try:
    return np.asarray(masking.sample_mask(kind, grid, ratio, [seed, 0]).numpy(), bool)
  except ValueError as e:
    raise ReconstructError(f"--mask_kind/--mask_ratio: {e}") from e


def predict(model, variables, frames: np.ndarray, mask_kind: str, mask_ratio: float, seed: int):
  """(normalised pixels [1, ...], mask [1, N], predictions [1, N, 3*pt*ph*pw])."""
  pixels = pixel_stats.normalize(frames)[None]
  grid = token_grid(pixels.shape, model.config.patch_size)
  mask = sample_mask(mask_kind, grid, mask_ratio, seed)[None]
  keep_idx = mae.check_mask(mask, 1, mask.shape[1])
  pred = jax.jit(model.apply)(variables, pixels, mask, keep_idx)
  return pixels, mask, np.asarray(pred)


def target_normalisation(checkpoint_path: str, override=None) -> Tuple[bool, Optional[str]]:
  """(norm_pix, where it comes from): --norm_pix, else the training workdir's stored config;
  (True, None), the paper's default, for a checkpoint that does not say (official file, model
  directory, workdir from before config.json)."""
  if override is not None:
    return bool(override), "from --norm_pix" if override else "from --no-norm_pix"
  stored = run_config.read(checkpoint_path) if os.path.isdir(checkpoint_path) else None
  norm_pix = (stored or {}).get("loss", {}).get("norm_pix")
  if norm_pix is None:
    return True, None
  return bool(norm_pix), f"from {os.path.join(checkpoint_path, run_config.RUN_CONFIG_FILE)}"


def output_prefix(out: str, input_path: str) -> str:
  """OUT itself, or OUT/<input name> when OUT is an existing directory."""
  if os.path.isdir(out):
    return os.path.join(out, os.path.splitext(os.path.basename(input_path))[0])
  return out


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m omnimae_jax.reconstruct",
      description="Write labelled pictures of what a pretraining checkpoint predicts for an "
      "image or a video (masked input, prediction, target, original) and its loss.")
  parser.add_argument("--checkpoint", required=True, help="official .torch file, model "
                      "directory or training workdir")
  parser.add_argument("--input", required=True, help="an image (JPEG/PNG) or a video (mp4/webm)")
  parser.add_argument("--out", required=True, help="output path prefix (or an existing folder)")
  parser.add_argument("--mask_ratio", type=float, help="default: 0.9 for images, 0.95 for videos")
  parser.add_argument("--mask_kind", default="random", help="random | tube | causal | frame")
  parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
  parser.add_argument("--norm_pix", action=argparse.BooleanOptionalAction, default=None,
                      help="the model predicts per-patch normalised pixels (the official loss); "
                      "default: the training workdir's loss.norm_pix (config.json), else True")
  parser.add_argument("--img_size", type=int, help="the model's input size (default: the "
                      "checkpoint's; a .torch file's is read off its position table assuming 16 "
                      "frames, see omnimae_jax.convert)")
  parser.add_argument("--num_frames", type=int, help="the model's clip length (default: the "
                      "checkpoint's; 16 for a .torch file)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  overrides = {k: getattr(args, k) for k in ("img_size", "num_frames") if getattr(args, k)}
  try:
    model, variables = pretrained.load(args.checkpoint, expect="pretrain", **overrides)
    frames = read_input(args.input, model.config)
    modality = "video" if frames.ndim == 4 else "image"
    ratio = DEFAULT_RATIOS[modality] if args.mask_ratio is None else args.mask_ratio
    pixels, mask, pred = predict(model, variables, frames, args.mask_kind, ratio, args.seed)
  except (ReconstructError, checkpoint.CheckpointError) as e:  # pretrained.PretrainedError too
    print(f"error: {e}", file=sys.stderr)
    return 2  # bad input: one line and exit code 2, as main.py does
  cfg = model.config
  norm_pix, origin = target_normalisation(os.path.abspath(args.checkpoint), args.norm_pix)
  if origin is None:
    print(f"note: {args.checkpoint} does not say what its model predicts (only a training "
          f"workdir keeps its config, {run_config.RUN_CONFIG_FILE}); assuming the paper's "
          f"per-patch normalised targets; pass --no-norm_pix for a model trained on plain pixels")
  loss = float(mae.reconstruction_loss(pred, pixels, mask, cfg.patch_size, norm_pix,
                                       cfg.pad_type))
  paths = visualize.write_reconstruction(output_prefix(args.out, args.input), pixels, mask, pred,
                                         cfg.patch_size, norm_pix=norm_pix, pad_type=cfg.pad_type)
  print(f"{modality} {tuple(frames.shape)}, {args.mask_kind} mask {int(mask.sum())}/"
        f"{mask.size} tokens, masked-patch loss {loss:.4f} on {TARGET_KINDS[norm_pix]} targets "
        f"(loss.norm_pix={norm_pix} {origin or 'assumed'})")
  print("panels: " + " | ".join(visualize.panel_labels(norm_pix)))
  for path in paths:
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
