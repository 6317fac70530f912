"""Evaluation transforms (SPEC §4.2), deterministic; pixels stay uint8 like the training ones.

Images: Resize(short side) bicubic + CenterCrop. Videos: T temporal clips evenly spread over the
video (pytorchvideo ConstantClipsPerVideoSampler) x S spatial crops (ShortSideScale, then
left/centre/right crops along the long side), for logits averaged over the T*S views.
"""
from omnimae_jax.data import transforms
from omnimae_jax.data._tf import tf


def eval_image(encoded, *, image_size, resize_size=None):
  """Encoded image -> uint8 [image_size, image_size, 3]: short side to resize_size (default
  image_size, i.e. crop ratio 1.0 as the official config), then a centre crop."""
  resize_size = resize_size or image_size
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  height, width = transforms.short_side_size(tf.shape(image)[0], tf.shape(image)[1], resize_size)
  resized = tf.image.resize(image, [height, width], method="bicubic", antialias=True)
  cropped = tf.image.crop_to_bounding_box(resized, (height - image_size) // 2,
                                          (width - image_size) // 2, image_size, image_size)
  return transforms.to_uint8(cropped)


def temporal_clip_indices(num_stored, fps, *, num_frames, clip_seconds, num_clips):
  """int32 [num_clips, num_frames]: clip k starts at k * (length - window) / (num_clips - 1)."""
  window = tf.maximum(1, tf.cast(tf.round(clip_seconds * fps), tf.int32))
  span = tf.minimum(window, num_stored)
  last_start = tf.cast(num_stored - span, tf.float32)
  step = last_start / float(max(num_clips - 1, 1))
  starts = tf.cast(tf.floor(tf.range(num_clips, dtype=tf.float32) * step), tf.int32)
  offsets = tf.cast(tf.floor(tf.linspace(0.0, tf.cast(span - 1, tf.float32), num_frames)),
                    tf.int32)
  return starts[:, None] + offsets[None, :]


def spatial_crop_offsets(length, crop, num_crops):
  """Start offsets of `num_crops` crops of size `crop` along an axis: centre for 1, else evenly
  from the start to the end (left, centre, right for 3)."""
  if num_crops == 1:
    return tf.reshape((length - crop) // 2, [1])
  fraction = tf.linspace(0.0, 1.0, num_crops)
  return tf.cast(tf.floor(fraction * tf.cast(length - crop, tf.float32)), tf.int32)


def eval_video_views(encoded_frames, fps, *, num_frames, clip_seconds, image_size,
                     num_temporal_clips=5, num_spatial_crops=3, short_side=None):
  """JPEG frames [n] + fps -> uint8 [num_temporal_clips * num_spatial_crops, T, S, S, 3].

  Views are ordered clip-major (all spatial crops of clip 0 first). short_side defaults to
  image_size, as in the official SSv2 test transform (ShortSide 224 + three 224 crops).
  """
  short_side = short_side or image_size
  num_stored = tf.shape(encoded_frames)[0]
  clip_indices = temporal_clip_indices(num_stored, fps, num_frames=num_frames,
                                       clip_seconds=clip_seconds, num_clips=num_temporal_clips)
  views = []
  for clip in range(num_temporal_clips):
    frames = transforms.decode_frames(encoded_frames, clip_indices[clip], num_frames)
    height, width = transforms.short_side_size(tf.shape(frames)[1], tf.shape(frames)[2],
                                               short_side)
    scaled = tf.image.resize(frames, [height, width], method="bilinear", antialias=True)
    # The crops slide along the long side; the short side is centred (it equals image_size
    # in the default setting).
    crops_along_width = width >= height
    long_offsets = spatial_crop_offsets(tf.maximum(height, width), image_size, num_spatial_crops)
    short_offset = (tf.minimum(height, width) - image_size) // 2
    for crop in range(num_spatial_crops):
      top = tf.where(crops_along_width, short_offset, long_offsets[crop])
      left = tf.where(crops_along_width, long_offsets[crop], short_offset)
      view = tf.slice(scaled, [0, top, left, 0], [num_frames, image_size, image_size, 3])
      views.append(transforms.to_uint8(view))
  return tf.stack(views)
