"""Evaluation transforms (SPEC §4.2): deterministic, and exact to the official test protocol.

Images, torchvision `Resize(resize_size, BICUBIC)` on a PIL image, then `CenterCrop(image_size)`:
  - JPEGs decode with the accurate integer DCT, as Pillow's libjpeg does (TensorFlow's default
    fast DCT differs from it by up to 4 levels, up to 18 seen on a photo);
  - the short side becomes resize_size and the long side int(resize_size * long / short);
  - the resize runs like Pillow's: an antialiased Keys-cubic (a = -0.5) horizontal pass, rounded
    half up and clipped to uint8, then the same vertical pass;
  - the crop starts at round((size - crop) / 2), Python's round (half to even).
  Measured against Pillow: at most 1 level on about 0.02% of the pixels (tests/test_eval_data.py).
Videos, the SSv2 test transform of omnimae_vitbase_ft_ssv2.yaml:
  - pytorchvideo ConstantClipsPerVideoSampler(clip_seconds, num_temporal_clips): clip k starts at
    k * max(duration - clip_seconds, 0) / num_temporal_clips seconds (k = 0 .. clips - 1, so the
    last clip does not reach the end) and holds the frames whose time i / fps lies in
    [start, start + clip_seconds), in exact fractions as pytorchvideo computes. The builders keep
    fps, not each frame's timestamp, so container tick rounding is not modelled: on 492
    synthetic WebM / MP4 files the clips matched pytorchvideo's on all at 12, 24, 25 and 29.97
    fps; at 15 and 30 fps a tick moved one clip bound by one frame on 18 of them;
  - UniformTemporalSubsample(num_frames): frame floor(j * (n - 1) / (num_frames - 1)) of the
    clip's n frames, j = 0 .. num_frames - 1 (torch's float32 linspace truncated gives the same);
  - ShortSideScale(short_side): bilinear, align_corners=False, no antialiasing (torch
    interpolate), sizes as pytorchvideo computes them;
  - SpatialCrop(image_size, num_spatial_crops): pytorchvideo uniform_crop, i.e. left / centre /
    right along the width of a wide frame (top / centre / bottom of a tall one), the centre at
    ceil((size - crop) / 2);
  - views clip-major: all spatial crops of clip 0 first.
  Each stored frame is decoded and scaled once even where clips overlap.
Pixels stay uint8 like the training ones; the official video transform keeps floats, so the
rounding after the bilinear scale is off by at most half a level.
"""
from fractions import Fraction
import functools
import math

import numpy as np

from omnimae_jax.data._tf import tf
from omnimae_jax.data.eval_config import SPATIAL_CROP_COUNTS, VIDEO_DURATIONS



def decode_rgb(encoded):
  """uint8 [H, W, 3]; JPEGs decoded bit-exactly like Pillow (accurate integer DCT)."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def _round_half_up_to_uint8(pixels):
  # Pillow's resampler adds half and truncates its fixed-point sums, then clips to uint8.
  return tf.cast(tf.clip_by_value(tf.floor(pixels + 0.5), 0.0, 255.0), tf.uint8)


def resized_short_side_size(height, width, size):
  """(height, width) after torchvision Resize(size): short side size, long int(size*long/short)."""
  height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
  short, long = tf.minimum(height, width), tf.maximum(height, width)
  # float64, like Python's true division, so the truncation agrees at every size.
  new_long = tf.cast(tf.floor(tf.cast(size * long, tf.float64) / tf.cast(short, tf.float64)),
                     tf.int32)
  width_is_short = width <= height
  return tf.where(width_is_short, new_long, size), tf.where(width_is_short, size, new_long)


def pil_bicubic_resize(image, height, width):
  """Pillow's Image.resize((width, height), BICUBIC) of uint8 [H, W, 3]: the horizontal pass,
  uint8, then the vertical pass, uint8. A pass at scale 1 is an exact identity (the cubic's
  weights at whole-pixel distances are 1, 0, 0), so passes Pillow skips cost no difference."""
  in_height = tf.shape(image)[0]
  horizontal = tf.image.resize(image, [in_height, width], method="bicubic", antialias=True)
  vertical = tf.image.resize(_round_half_up_to_uint8(horizontal), [height, width],
                             method="bicubic", antialias=True)
  return _round_half_up_to_uint8(vertical)


def centre_crop_offsets(height, width, crop):
  """(top, left) of torchvision CenterCrop(crop): round((size - crop) / 2), half to even."""
  def offset(size):
    return tf.cast(tf.round(tf.cast(size - crop, tf.float64) / 2.0), tf.int32)  # half to even
  return offset(height), offset(width)


def eval_image(encoded, *, image_size, resize_size=None):
  """Encoded image -> uint8 [image_size, image_size, 3]: Resize(resize_size) + CenterCrop.

  resize_size defaults to image_size (crop ratio 1.0, the official IN1K test transform).
  """
  resize_size = resize_size or image_size
  if resize_size < image_size:
    raise ValueError(f"resize_size={resize_size} is smaller than the crop {image_size}")
  image = decode_rgb(encoded)
  height, width = resized_short_side_size(tf.shape(image)[0], tf.shape(image)[1], resize_size)
  resized = pil_bicubic_resize(image, height, width)
  top, left = centre_crop_offsets(height, width, image_size)
  cropped = tf.slice(resized, [top, left, 0], [image_size, image_size, 3])
  return tf.ensure_shape(cropped, [image_size, image_size, 3])


def _exact_clip_frame_ranges(num_stored, fps, clip_seconds, num_clips, video_duration):
  """NumPy int32 [num_clips, 2] in exact fractions, as pytorchvideo computes clip times."""
  num_stored, fps = int(num_stored), Fraction(float(fps))
  if num_stored < 1 or fps <= 0:
    raise ValueError(f"a video of {num_stored} frames at {float(fps)} fps has no clips")
  frames_spanned = num_stored - 1 if video_duration == "last_frame" else num_stored
  clip = Fraction(clip_seconds)
  step = Fraction(max(frames_spanned / fps - clip, 0), num_clips)
  ranges = []
  for k in range(num_clips):
    start = step * k
    # Frame i (at i / fps) is in the clip when start <= i / fps < start + clip.
    first = min(math.ceil(start * fps), num_stored - 1)
    end = min(max(math.ceil((start + clip) * fps), first + 1), num_stored)
    ranges.append((first, end))
  return np.array(ranges, np.int32)


def clip_frame_ranges(num_stored, fps, *, clip_seconds, num_clips, video_duration="last_frame"):
  """int32 [num_clips, 2]: (first frame, one past the last frame) of each clip of
  ConstantClipsPerVideoSampler, frame i being at time i / fps.

  Exact fractions like pytorchvideo's: float64 misplaces a frame when a clip bound falls within
  a rounding error of a frame time (it does for 2.7 s at 30 fps: 2.7 as a double is a hair above
  2.7, so the frame at exactly 2.7 s is in the first clip). A clip keeps at least one frame, where
  pytorchvideo would fail (only possible when clip_seconds is under one frame).
  """
  if video_duration not in VIDEO_DURATIONS:
    raise ValueError(f"video_duration={video_duration!r}; allowed: {VIDEO_DURATIONS}")
  ranges = tf.numpy_function(
      functools.partial(_exact_clip_frame_ranges, clip_seconds=float(clip_seconds),
                        num_clips=int(num_clips), video_duration=video_duration),
      [tf.cast(num_stored, tf.int64), tf.cast(fps, tf.float32)], tf.int32, stateful=False)
  return tf.ensure_shape(ranges, [num_clips, 2])


def uniform_subsample_offsets(length, num_frames):
  """int32 [..., num_frames]: UniformTemporalSubsample's picks among `length` frames (any
  shape), trunc(linspace(0, length - 1, num_frames)) = floor(j * (length - 1) / (num_frames - 1)),
  in integers so no float rounding can move a pick."""
  length = tf.cast(length, tf.int64)[..., None]
  if num_frames == 1:
    return tf.zeros_like(length, tf.int32)
  steps = tf.range(num_frames, dtype=tf.int64)
  return tf.cast(steps * (length - 1) // (num_frames - 1), tf.int32)


def temporal_clip_indices(num_stored, fps, *, num_frames, clip_seconds, num_clips,
                          video_duration="last_frame"):
  """int32 [num_clips, num_frames]: the stored frames of every temporal clip."""
  ranges = clip_frame_ranges(num_stored, fps, clip_seconds=clip_seconds, num_clips=num_clips,
                             video_duration=video_duration)
  first, end = ranges[:, 0], ranges[:, 1]
  return first[:, None] + uniform_subsample_offsets(end - first, num_frames)


def short_side_scale_size(height, width, short_side):
  """(height, width) after pytorchvideo ShortSideScale(short_side), in its float64 arithmetic:
  a frame narrower than tall gets width short_side, any other height short_side."""
  height_f, width_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  size = tf.constant(short_side, tf.float64)
  width_is_short = width_f < height_f
  new_height = tf.where(width_is_short, tf.floor(height_f / width_f * size), size)
  new_width = tf.where(width_is_short, size, tf.floor(width_f / height_f * size))
  return tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32)


def spatial_crop_offsets(length, crop, num_crops):
  """Start offsets along one axis of uniform_crop's spatial indices: [centre] for one crop,
  [start, centre, end] for three; the centre is ceil((length - crop) / 2)."""
  if num_crops not in SPATIAL_CROP_COUNTS:
    raise ValueError(f"num_spatial_crops={num_crops}; allowed: {SPATIAL_CROP_COUNTS}")
  length = tf.cast(length, tf.int32)
  centre = (length - crop + 1) // 2  # ceil for a non-negative difference
  if num_crops == 1:
    return tf.reshape(centre, [1])
  return tf.stack([tf.zeros_like(centre), centre, length - crop])


def uniform_crop_offsets(height, width, crop, num_crops):
  """(tops, lefts), int32 [num_crops] each, of SpatialCrop(crop, num_crops): the crops slide
  along the height of a frame taller than wide, else along the width; the other axis is
  centred."""
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  along_height = height > width
  centred_top = tf.fill([num_crops], (height - crop + 1) // 2)
  centred_left = tf.fill([num_crops], (width - crop + 1) // 2)
  tops = tf.where(along_height, spatial_crop_offsets(height, crop, num_crops), centred_top)
  lefts = tf.where(along_height, centred_left, spatial_crop_offsets(width, crop, num_crops))
  return tops, lefts


def decode_frames(encoded_frames, frame_indices):
  """uint8 [len(frame_indices), H, W, 3]: the chosen JPEG frames, decoded like Pillow."""
  return tf.map_fn(
      lambda encoded: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      tf.gather(encoded_frames, frame_indices),
      fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def eval_video_views(encoded_frames, fps, *, num_frames, clip_seconds, image_size,
                     num_temporal_clips=5, num_spatial_crops=3, short_side=None,
                     video_duration="last_frame"):
  """JPEG frames [n] + fps -> uint8 [num_temporal_clips * num_spatial_crops, T, S, S, 3].

  Views are ordered clip-major (all spatial crops of clip 0 first), as the official
  FlattenListOfList leaves them. short_side defaults to image_size (ShortSideScale 224 + three
  224 crops in the official SSv2 test transform).
  """
  short_side = short_side or image_size
  if short_side < image_size:
    raise ValueError(f"short_side={short_side} is smaller than the crop {image_size}")
  clip_indices = temporal_clip_indices(
      tf.shape(encoded_frames)[0], fps, num_frames=num_frames, clip_seconds=clip_seconds,
      num_clips=num_temporal_clips, video_duration=video_duration)
  # Overlapping clips share frames: decode and scale each stored frame once, then gather.
  unique_indices, positions = tf.unique(tf.reshape(clip_indices, [-1]))
  frames = decode_frames(encoded_frames, unique_indices)  # [U, H, W, 3]
  height, width = short_side_scale_size(tf.shape(frames)[1], tf.shape(frames)[2], short_side)
  scaled = _round_half_up_to_uint8(tf.image.resize(frames, [height, width], method="bilinear"))
  clips = tf.reshape(tf.gather(scaled, positions),
                     [num_temporal_clips, num_frames, height, width, 3])
  tops, lefts = uniform_crop_offsets(height, width, image_size, num_spatial_crops)
  crops = [tf.slice(clips, [0, 0, tops[k], lefts[k], 0],
                    [num_temporal_clips, num_frames, image_size, image_size, 3])
           for k in range(num_spatial_crops)]
  views = tf.stack(crops, axis=1)  # [clips, crops, T, S, S, 3]: clip-major
  return tf.reshape(views, [num_temporal_clips * num_spatial_crops, num_frames, image_size,
                            image_size, 3])
