"""Training and evaluation transforms (SPEC §3.2, §3.3, §4.2) on real encoded pixels."""
import numpy as np
import pytest

from omnimae_jax.data import eval_transforms, synthetic_files, transforms
from omnimae_jax.data._tf import tf


def _seed(*values):
  return tf.constant(values, tf.int64)


def _jpeg_frames(num_frames, height, width):
  frames = synthetic_files.coded_frames(num_frames, height, width)
  return tf.constant([synthetic_files.jpeg_bytes(frame, quality=95) for frame in frames])


def test_random_resized_crop_boxes_respect_scale_ratio_and_bounds():
  height, width = 120, 160
  for draw in range(200):
    top, left, box_h, box_w = transforms.random_resized_crop_box(
        height, width, (0.2, 1.0), (3 / 4, 4 / 3), _seed(0, draw)).numpy()
    assert 0 <= top and top + box_h <= height and 0 <= left and left + box_w <= width
    # Rounding of w and h moves area and aspect slightly off the sampled values.
    assert 0.19 <= box_h * box_w / (height * width) <= 1.0
    assert 3 / 4 - 0.05 <= box_w / box_h <= 4 / 3 + 0.05


def test_random_resized_crop_falls_back_to_a_centred_crop_like_torchvision():
  # A 10x100 strip cannot hold a crop of 100% area with aspect in [3/4, 4/3]: torchvision then
  # takes the full height and width round(10 * 4/3) = 13, centred.
  box = transforms.random_resized_crop_box(10, 100, (1.0, 1.0), (3 / 4, 4 / 3), _seed(1, 2))
  np.testing.assert_array_equal(box.numpy(), [0, 43, 10, 13])


def test_train_image_crops_resizes_and_flips_uint8_pixels():
  ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], [48, 1, 3])  # [48, 64, 3]
  encoded = tf.constant(synthetic_files.jpeg_bytes(ramp, quality=100))
  flipped = []
  for draw in range(20):
    image = transforms.train_image(encoded, _seed(3, draw), image_size=32, crop_scale=(0.5, 1.0),
                                   crop_ratio=(3 / 4, 4 / 3), flip=True).numpy()
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    flipped.append(int(image[16, 0, 0]) > int(image[16, -1, 0]))
  assert 0 < sum(flipped) < 20  # both orientations occur


def test_png_images_take_the_generic_decode_path():
  pixels = np.full([20, 30, 3], 77, np.uint8)
  encoded = tf.io.encode_png(pixels)
  image = transforms.train_image(encoded, _seed(0, 0), image_size=16, crop_scale=(0.2, 1.0),
                                 crop_ratio=(3 / 4, 4 / 3), flip=False).numpy()
  assert image.shape == (16, 16, 3) and (image == 77).all()


def test_clip_frame_indices_take_a_window_of_clip_seconds_at_the_stored_fps():
  # 2.7 s at 12 fps = 32 frames, 16 of them: stride about 2 (SPEC §3.2).
  for draw in range(20):
    indices = transforms.clip_frame_indices(100, 12.0, _seed(4, draw), num_frames=16,
                                            clip_seconds=2.7).numpy()
    assert indices.shape == (16,) and indices.dtype == np.int32
    assert indices.min() >= 0 and indices.max() < 100
    assert indices[-1] - indices[0] == 31
    assert set(np.diff(indices)) <= {2, 3}


def test_short_clips_use_all_frames_and_repeat_to_fill():
  indices = transforms.clip_frame_indices(6, 12.0, _seed(0, 1), num_frames=16,
                                          clip_seconds=2.7).numpy()
  assert indices[0] == 0 and indices[-1] == 5
  assert set(indices) == set(range(6)) and (np.diff(indices) >= 0).all()


def test_short_side_size_matches_short_side_scale():
  sizes = [tuple(int(v) for v in transforms.short_side_size(h, w, 256))
           for h, w in ((240, 320), (320, 240), (256, 300))]
  assert sizes == [(256, 341), (341, 256), (256, 300)]
  assert transforms.short_side_size(240, 320, 0) == (240, 320)


def test_video_replicas_share_frames_and_differ_in_crop():
  encoded = _jpeg_frames(8, 36, 48)
  frames = transforms.decode_frames(encoded, tf.constant([0, 2, 4, 6]), 4)
  replicas = transforms.train_video_replicas(
      frames, _seed(5, 6), num_replicas=4, image_size=16, short_side=24, crop_scale=(0.08, 1.0),
      crop_ratio=(3 / 4, 4 / 3), flip=False).numpy()
  assert replicas.shape == (4, 4, 16, 16, 3) and replicas.dtype == np.uint8
  # Channel 1 encodes the frame number: every replica shows frames 0, 2, 4, 6.
  frame_codes = replicas[..., 1].astype(float).mean(axis=(2, 3))  # [replica, frame]
  np.testing.assert_allclose(frame_codes, np.tile(
      synthetic_files.FRAME_CODE_STEP * np.array([0, 2, 4, 6]), [4, 1]), atol=3)
  # Channels 0/2 are spatial ramps: different crops give different pixels.
  ramps = replicas[:, 0, :, :, 0].reshape(4, -1)
  assert len({row.tobytes() for row in ramps}) == 4
  # One crop per replica, shared by its frames: the ramp channel is equal across frames.
  assert np.abs(replicas[:, :1, ..., 0].astype(int) - replicas[..., 0]).max() <= 3


@pytest.mark.parametrize("num_replicas", [1, 4])
def test_video_replicas_from_the_decoded_region_equal_those_from_whole_frames(num_replicas):
  # The pipeline decodes only the window its replicas' crops cover (plus a pixel: see
  # transforms.decode_region); the replicas must be bit-identical to those cut from whole
  # frames. Textured 4:2:0 frames, so that chroma upsampling at a window's edge would show.
  frames = synthetic_files.scene_frames(6, 60, 90, seed=3)
  encoded = tf.constant([synthetic_files.jpeg_bytes(frame, quality=60) for frame in frames])
  options = dict(num_replicas=num_replicas, short_side=64, crop_scale=(0.08, 1.0),
                 crop_ratio=(3 / 4, 4 / 3))
  indices = tf.constant([0, 2, 3, 5])
  smaller = 0
  for draw in range(12):
    seed = _seed(7, draw)
    whole = transforms.train_video_replicas(transforms.decode_frames(encoded, indices, 4), seed,
                                            image_size=16, flip=False, **options)
    height, width = transforms.frame_shape(encoded, indices).numpy()
    assert (height, width) == (60, 90)
    boxes = transforms.video_replica_boxes(height, width, seed, **options)
    region = transforms.decode_region(boxes, height, width)
    part = transforms.decode_frames(encoded, indices, 4, region)
    assert part.shape[1:3] == tuple(region.numpy()[2:])
    smaller += int(region[2] * region[3] < height * width)
    from_region = transforms.train_video_replicas(
        part, seed, image_size=16, flip=False,
        boxes=boxes - tf.stack([region[0], region[1], 0, 0]), **options)
    np.testing.assert_array_equal(from_region.numpy(), whole.numpy())
  assert smaller >= 3  # the region saves decoding


def test_stored_video_frames_are_shrunk_but_never_enlarged():
  from omnimae_jax.data import video_io  # noqa: PLC0415  (PyAV, only for building)

  assert video_io.scaled_size(240, 427, 256) == (240, 427)  # SSv2: kept at 240p
  assert video_io.scaled_size(480, 854, 256) == (256, 455)
  assert video_io.scaled_size(854, 480, 256) == (455, 256)
  assert video_io.scaled_size(240, 427, 0) == (240, 427)


def test_eval_image_resizes_the_short_side_and_centre_crops():
  pixels = np.zeros([40, 80, 3], np.uint8)
  pixels[:, 20:60] = 200  # the centre square of the short side
  image = eval_transforms.eval_image(tf.constant(synthetic_files.jpeg_bytes(pixels, 100)),
                                     image_size=20).numpy()
  assert image.shape == (20, 20, 3)
  assert image[:, 2:-2].min() > 180  # the whole crop lies inside the bright centre


def test_eval_video_views_are_temporal_clips_times_spatial_crops():
  encoded = _jpeg_frames(40, 24, 40)
  views = eval_transforms.eval_video_views(encoded, tf.constant(12.0), num_frames=4,
                                           clip_seconds=1.0, image_size=16,
                                           num_temporal_clips=5, num_spatial_crops=3).numpy()
  assert views.shape == (15, 4, 16, 16, 3) and views.dtype == np.uint8
  # pytorchvideo's ConstantClipsPerVideoSampler: clip k starts at k * (duration - window) / 5 s
  # (divided by the clip count, so the last clip stops short of the end): 39/12 - 1 s = 2.25 s,
  # so starts at 0, 0.45, 0.9, 1.35, 1.8 s -> the first frames at or after them.
  clip_starts = eval_transforms.temporal_clip_indices(40, 12.0, num_frames=4, clip_seconds=1.0,
                                                      num_clips=5).numpy()[:, 0]
  np.testing.assert_array_equal(clip_starts, [0, 6, 11, 17, 22])
  first_frame_code = views[::3, 0, ..., 1].astype(float).mean(axis=(1, 2))
  np.testing.assert_allclose(first_frame_code,
                             (synthetic_files.FRAME_CODE_STEP * clip_starts) % 256, atol=3)
  # Left, centre and right crops of the horizontal ramp (channel 0) are increasingly bright.
  left, centre, right = views[:3, 0, ..., 0].astype(float).mean(axis=(1, 2))
  assert left < centre < right


@pytest.mark.parametrize("num_crops, expected", [(1, [12]), (3, [0, 12, 24])])
def test_spatial_crop_offsets(num_crops, expected):
  offsets = eval_transforms.spatial_crop_offsets(40, 16, num_crops).numpy()
  np.testing.assert_array_equal(offsets, expected)
