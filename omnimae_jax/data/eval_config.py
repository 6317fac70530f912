"""Evaluation source configuration (SPEC §4.2 test protocols) and its validation.

No TensorFlow here: config files import it for the defaults, and a config error should come back
in a second, not after TensorFlow loads. The input itself is `eval_pipeline`.
"""
import ml_collections

from omnimae_jax.data import config as config_lib

# How pytorchvideo measures a video's duration, which sets where the clips start:
#   'last_frame': the last frame's timestamp, (n - 1) / fps. EncodedVideoPyAV falls back to it
#     when the stream has no duration, as in WebM files (SSv2 ships WebM).
#   'frame_count': n / fps, the stream duration of an MP4 (Kinetics).
VIDEO_DURATIONS = ("last_frame", "frame_count")
# Spatial crops per temporal clip: the centre, or left / centre / right.
SPATIAL_CROP_COUNTS = (1, 3)


def default_eval_source_config(modality):
  """The official test protocol (SPEC §4.2) for `modality`, as an evaluation source config.

  Images: IN1K validation, Resize(224) bicubic + CenterCrop(224), one view.
  Videos: SSv2 validation, 5 temporal clips of 16 frames from 2.7 s x 3 spatial crops
  (ShortSideScale 224, left/centre/right 224), logits averaged by the evaluator.
  Both field sets are present for either modality so that configs share one schema; an image
  source ignores the video fields and a video source ignores resize_size.
  """
  if modality not in config_lib.MODALITIES:
    raise ValueError(f"modality must be one of {config_lib.MODALITIES}, got {modality!r}")
  is_video = modality == "video"
  return ml_collections.ConfigDict(dict(
      tfds_name="something_something_v2" if is_video else "imagenet2012",
      split="validation",
      modality=modality,
      # Global examples per batch, all views of an example included. The official runs: 32
      # images x 32 GPUs; 1 video (15 views, 36 MB of uint8 at 224) x 32 GPUs.
      batch_size=32 if is_video else 1024,
      image_size=224,
      resize_size=224,  # images: Resize(resize_size) then CenterCrop(image_size): ratio 1.0
      num_frames=16,
      clip_seconds=2.7,
      num_temporal_clips=5,
      num_spatial_crops=3,
      eval_short_side=224,  # videos: ShortSideScale(eval_short_side), then the crops
      # How pytorchvideo measured the videos' duration (VIDEO_DURATIONS):
      # 'last_frame' for WebM (SSv2), 'frame_count' for MP4 (Kinetics).
      video_duration="last_frame",
  ))


def fail(name, field, value, allowed):
  raise ValueError(f"evaluation source {name!r}: field {field!r} = {value!r} is invalid; "
                   f"{allowed}")


def _require_positive_int(name, cfg, field):
  if not isinstance(cfg[field], int) or cfg[field] < 1:
    fail(name, field, cfg[field], "expected an integer >= 1")


def _validate_video(name, cfg, patch_t):
  for field in ("num_frames", "num_temporal_clips"):
    _require_positive_int(name, cfg, field)
  if cfg.num_frames % patch_t:
    fail(name, "num_frames", cfg.num_frames,
          f"expected a multiple of the temporal patch size {patch_t}")
  if not cfg.clip_seconds > 0:
    fail(name, "clip_seconds", cfg.clip_seconds, "expected a positive number of seconds")
  if cfg.num_spatial_crops not in SPATIAL_CROP_COUNTS:
    fail(name, "num_spatial_crops", cfg.num_spatial_crops,
          f"expected one of {SPATIAL_CROP_COUNTS} (centre, or left/centre/right)")
  if not isinstance(cfg.eval_short_side, int) or cfg.eval_short_side < cfg.image_size:
    fail(name, "eval_short_side", cfg.eval_short_side,
          f"expected an integer >= image_size={cfg.image_size} (the crops must fit)")
  if cfg.video_duration not in VIDEO_DURATIONS:
    fail(name, "video_duration", cfg.video_duration,
          f"expected one of {VIDEO_DURATIONS}")


def validate_eval_source(name, cfg, patch_size=None):
  """Raises ValueError naming the field for any value the evaluation input cannot honour."""
  if cfg.modality not in config_lib.MODALITIES:
    fail(name, "modality", cfg.modality, f"expected one of {config_lib.MODALITIES}")
  for field in ("tfds_name", "split"):
    if not isinstance(cfg[field], str) or not cfg[field]:
      fail(name, field, cfg[field], "expected a non-empty string")
  for field in ("batch_size", "image_size"):
    _require_positive_int(name, cfg, field)
  patch_t, patch_h, patch_w = tuple(patch_size) if patch_size is not None else (1, 1, 1)
  if cfg.image_size % patch_h or cfg.image_size % patch_w:
    fail(name, "image_size", cfg.image_size,
          f"expected a multiple of the patch size {(patch_h, patch_w)}")
  if cfg.modality == "image":
    if not isinstance(cfg.resize_size, int) or cfg.resize_size < cfg.image_size:
      fail(name, "resize_size", cfg.resize_size,
            f"expected an integer >= image_size={cfg.image_size} (the centre crop must fit)")
  else:
    _validate_video(name, cfg, patch_t)
