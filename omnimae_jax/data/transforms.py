"""Training-time transforms (SPEC §3.2, §3.3), all stateless in an explicit seed.

Pixels stay uint8 in [0, 255] (rounded and clipped after resizing): normalisation with the
ImageNet statistics happens on the device through `omnimae_jax.pixels.normalize`, which keeps
host->device traffic 4x smaller than float32 (it matters for 16-frame video batches).
"""
import math

from omnimae_jax.data._tf import tf

# torchvision's RandomResizedCrop tries this many (scale, ratio) draws before its fallback.
_CROP_ATTEMPTS = 10


def _uniform(seed, shape, low=0.0, high=1.0):
  return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def random_resized_crop_box(height, width, scale, ratio, seed):
  """torchvision RandomResizedCrop.get_params, stateless: int32 (top, left, crop_h, crop_w).

  Draws `_CROP_ATTEMPTS` (area fraction, log aspect ratio) pairs at once and keeps the first that
  fits; if none fits it falls back to the largest centred crop whose aspect ratio is in `ratio`.
  """
  area_seed, ratio_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  height_f = tf.cast(height, tf.float32)
  width_f = tf.cast(width, tf.float32)
  target_area = height_f * width_f * _uniform(area_seed, [_CROP_ATTEMPTS], *scale)
  aspect = tf.exp(_uniform(ratio_seed, [_CROP_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
  crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first_fit = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  def sampled_box():
    box_h, box_w = crop_h[first_fit], crop_w[first_fit]
    offsets = _uniform(offset_seed, [2])
    top = tf.cast(tf.floor(offsets[0] * tf.cast(height - box_h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(offsets[1] * tf.cast(width - box_w + 1, tf.float32)), tf.int32)
    return tf.stack([top, left, box_h, box_w])

  def centre_fallback_box():
    in_ratio = width_f / height_f
    box_w = tf.where(in_ratio > ratio[1], tf.round(height_f * ratio[1]), width_f)
    box_h = tf.where(in_ratio < ratio[0], tf.round(width_f / ratio[0]), height_f)
    box_h, box_w = tf.cast(box_h, tf.int32), tf.cast(box_w, tf.int32)
    return tf.stack([(height - box_h) // 2, (width - box_w) // 2, box_h, box_w])

  return tf.cond(tf.reduce_any(fits), sampled_box, centre_fallback_box)


def to_uint8(pixels):
  """Round and clip resized float pixels back to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def random_flip(pixels, seed, width_axis=-2):
  """Horizontal flip with probability 1/2."""
  flip = _uniform(seed, []) < 0.5
  return tf.cond(flip, lambda: tf.reverse(pixels, [width_axis]), lambda: pixels)


def decode_image_shape(encoded):
  """[height, width] of an encoded image, reading only the JPEG header when it is a JPEG."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.extract_jpeg_shape(encoded)[:2],
      lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2])


def decode_and_crop(encoded, box):
  """Decode only the crop `box` = (top, left, h, w) of a JPEG (fused op); any other format in full."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_and_crop_jpeg(encoded, box, channels=3),
      lambda: tf.slice(tf.io.decode_image(encoded, channels=3, expand_animations=False),
                       [box[0], box[1], 0], [box[2], box[3], 3]))


def train_image(encoded, seed, *, image_size, crop_scale, crop_ratio, flip):
  """Encoded image -> uint8 [image_size, image_size, 3]: RandomResizedCrop (bicubic) + flip."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = decode_image_shape(encoded)
  box = random_resized_crop_box(shape[0], shape[1], crop_scale, crop_ratio, crop_seed)
  crop = decode_and_crop(encoded, box)
  # antialias=True matches torchvision's PIL bicubic when the crop is shrunk.
  resized = tf.image.resize(crop, [image_size, image_size], method="bicubic", antialias=True)
  pixels = to_uint8(resized)
  return random_flip(pixels, flip_seed) if flip else pixels


def clip_frame_indices(num_stored, fps, seed, *, num_frames, clip_seconds):
  """int32 [num_frames] indices of the frames to decode (pytorchvideo RandomClipSampler +
  UniformTemporalSubsample): a random window of clip_seconds at the stored fps, then num_frames
  evenly spaced frames in it. A clip shorter than the window uses all its frames, and repeats
  frames when it has fewer than num_frames."""
  window = tf.maximum(1, tf.cast(tf.round(clip_seconds * fps), tf.int32))
  span = tf.minimum(window, num_stored)
  start_choices = tf.cast(num_stored - span + 1, tf.float32)
  start = tf.cast(tf.floor(_uniform(seed, []) * start_choices), tf.int32)
  start = tf.minimum(start, num_stored - span)  # guards the float edge case u*n == n
  offsets = tf.linspace(0.0, tf.cast(span - 1, tf.float32), num_frames)
  return start + tf.cast(tf.floor(offsets), tf.int32)


def decode_frames(encoded_frames, frame_indices, num_frames, region=None):
  """Decode only the chosen JPEG frames: uint8 [num_frames, H, W, 3]; with `region` = (top,
  left, h, w), only that window of each frame ([num_frames, h, w, 3], one fused op per frame)."""
  chosen = tf.gather(encoded_frames, frame_indices)
  # One decode op per frame (num_frames is static) so TF runs them in parallel; frames of a
  # clip share one size, so they stack.
  if region is None:
    return tf.stack([tf.io.decode_jpeg(chosen[i], channels=3) for i in range(num_frames)])
  return tf.stack([tf.io.decode_and_crop_jpeg(chosen[i], region, channels=3)
                   for i in range(num_frames)])


def frame_shape(encoded_frames, frame_indices):
  """[height, width] of a clip's stored frames, from the header of the first chosen frame only
  (a frame the clip does not use is never read)."""
  return tf.io.extract_jpeg_shape(tf.gather(encoded_frames, frame_indices[0]))[:2]


def short_side_size(height, width, short_side):
  """(height, width) after pytorchvideo's ShortSideScale(short_side); 0 keeps the size."""
  if short_side == 0:
    return height, width
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  short = tf.minimum(height_f, width_f)
  new_height = tf.where(height_f <= width_f, float(short_side),
                        tf.floor(height_f / short * short_side))
  new_width = tf.where(height_f <= width_f, tf.floor(width_f / short * short_side),
                       float(short_side))
  return tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32)


def _box_in_stored_pixels(box, scaled_size, stored_size):
  """Crop `box` (top, left, h, w in the short-side-scaled frame) in stored-frame pixels.

  Cropping the stored frame and resizing once equals ShortSideScale-then-crop up to sub-pixel
  rounding of the box, and skips resizing the whole frame.
  """
  scale_h = tf.cast(stored_size[0], tf.float32) / tf.cast(scaled_size[0], tf.float32)
  scale_w = tf.cast(stored_size[1], tf.float32) / tf.cast(scaled_size[1], tf.float32)
  top, left, box_h, box_w = [tf.cast(v, tf.float32) for v in tf.unstack(box)]
  stored_h = tf.clip_by_value(tf.cast(tf.round(box_h * scale_h), tf.int32), 1, stored_size[0])
  stored_w = tf.clip_by_value(tf.cast(tf.round(box_w * scale_w), tf.int32), 1, stored_size[1])
  stored_top = tf.clip_by_value(tf.cast(tf.round(top * scale_h), tf.int32), 0,
                                stored_size[0] - stored_h)
  stored_left = tf.clip_by_value(tf.cast(tf.round(left * scale_w), tf.int32), 0,
                                 stored_size[1] - stored_w)
  return stored_top, stored_left, stored_h, stored_w


def _replica_seeds(seed, num_replicas):
  """[(crop_seed, flip_seed)] of each replica."""
  replica_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num_replicas))
  return [tuple(tf.unstack(tf.random.experimental.stateless_split(replica_seed, 2)))
          for replica_seed in replica_seeds]


def video_replica_boxes(stored_height, stored_width, seed, *, num_replicas, short_side,
                        crop_scale, crop_ratio):
  """int32 [num_replicas, 4]: each replica's crop (top, left, h, w) in stored-frame pixels, a
  RandomResizedCrop of the ShortSideScale(short_side) frame (see _box_in_stored_pixels).

  Needs only the frames' size, so the decode stage can decode just the boxes' union.
  """
  stored_size = stored_height, stored_width
  scaled_size = short_side_size(stored_height, stored_width, short_side)
  boxes = []
  for crop_seed, _ in _replica_seeds(seed, num_replicas):
    box = random_resized_crop_box(scaled_size[0], scaled_size[1], crop_scale, crop_ratio,
                                  crop_seed)
    boxes.append(tf.stack(_box_in_stored_pixels(box, scaled_size, stored_size)))
  return tf.stack(boxes)


def decode_region(boxes, height, width):
  """The window (top, left, h, w) of a height x width JPEG to decode for the crops `boxes`
  (int32 [N, 4]): their union plus one pixel on each side, within the frame.

  The pixel: libjpeg's fancy chroma upsampling reads a neighbour beyond a window's edge, so a
  window cut exactly at a crop's edge decodes that edge differently (by up to ~30 levels on
  4:2:0 frames); with the margin the crops are bit-identical to crops of the full decode.
  """
  top = tf.maximum(tf.reduce_min(boxes[:, 0]) - 1, 0)
  left = tf.maximum(tf.reduce_min(boxes[:, 1]) - 1, 0)
  bottom = tf.minimum(tf.reduce_max(boxes[:, 0] + boxes[:, 2]) + 1, height)
  right = tf.minimum(tf.reduce_max(boxes[:, 1] + boxes[:, 3]) + 1, width)
  return tf.stack([top, left, bottom - top, right - left])


def train_video_replicas(frames, seed, *, num_replicas, image_size, short_side, crop_scale,
                         crop_ratio, flip, boxes=None):
  """uint8 [T, H, W, 3] decoded frames -> uint8 [num_replicas, T, S, S, 3].

  Each replica gets its own ShortSideScale + RandomResizedCrop (bilinear, torchvision's default
  for videos), shared by all its frames, and its own flip when `flip`. `boxes`: the replicas'
  crops in `frames` when the caller drew them already (video_replica_boxes, moved into a decoded
  region of the stored frames); by default they are drawn here from `seed`, the same draws.
  """
  num_frames = frames.shape[0]
  if boxes is None:
    boxes = video_replica_boxes(tf.shape(frames)[1], tf.shape(frames)[2], seed,
                                num_replicas=num_replicas, short_side=short_side,
                                crop_scale=crop_scale, crop_ratio=crop_ratio)
  replicas = []
  for replica, (_, flip_seed) in enumerate(_replica_seeds(seed, num_replicas)):
    top, left, height, width = tf.unstack(boxes[replica])
    crop = tf.slice(frames, [0, top, left, 0], [num_frames, height, width, 3])
    # Same values either way, but TF's bilinear kernel is ~1.6x slower on uint8 input than on
    # float32 (it converts every tap it reads), so the crop is cast once first.
    resized = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size],
                              method="bilinear")
    # Bilinear values lie within the input's [0, 255], so +0.5 and truncation round them; this
    # is ~4x cheaper than crop_and_resize + round + clip on 16-frame clips.
    pixels = tf.cast(resized + 0.5, tf.uint8)
    replicas.append(random_flip(pixels, flip_seed) if flip else pixels)
  return tf.stack(replicas)
