"""Evaluation input (SPEC §4.2, DESIGN §8): the official test views, exactly, and every example of
a split counted once on any number of processes."""
import collections
from fractions import Fraction
import io
import math
import os
import tarfile

import av
from data_fixtures import data  # noqa: F401  (the built test datasets, a pytest fixture)
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from omnimae_jax.data import eval_config, eval_pipeline, eval_transforms, synthetic_files
from omnimae_jax.data._tf import tf
from omnimae_jax.data.errors import DatasetNotPreparedError

f32 = np.float32

# ---------------------------------------------------------------------------------------------
# Video views: the 5 x 3 geometry of a 50-frame clip at 12 fps, 240 x 320 (SSv2-like).
#
# ConstantClipsPerVideoSampler(2.7 s, 5 clips): max_start = duration - 2.7, clip k starts at
# k * max_start / 5 s and holds the frames i with start <= i / 12 < start + 2.7, i.e.
# ceil(12 * start) <= i < ceil(12 * start + 32.4).
#  'last_frame' (WebM): duration 49/12 s, 12 * start = 3.32 k -> 0, 3.32, 6.64, 9.96, 13.28:
#    first frames 0, 4, 7, 10, 14; ends (exclusive) ceil(32.4 + 3.32 k) = 33, 36, 40, 43, 46.
#  'frame_count' (MP4): duration 50/12 s, 12 * start = 3.52 k -> 0, 3.52, 7.04, 10.56, 14.08:
#    first frames 0, 4, 8, 11, 15; ends ceil(32.4 + 3.52 k) = 33, 36, 40, 43, 47.
# UniformTemporalSubsample(16) of n frames: floor(j * (n - 1) / 15).
#  n = 33: 0 2 4 6 8 10 12 14 17 19 21 23 25 27 29 32 (step 32/15 = 2.133)
#  n = 32: 0 2 4 6 8 10 12 14 16 18 20 22 24 26 28 31 (step 31/15 = 2.067)
# ShortSideScale(224) of 240 x 320: 224 x floor(320 / 240 * 224) = 224 x 298. uniform_crop(224)
# along the width: left 0, centre ceil((298 - 224) / 2) = 37, right 74; top ceil(0 / 2) = 0.
# ---------------------------------------------------------------------------------------------
_PICKS_33 = [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 32]
_PICKS_32 = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 31]
CLIP_TABLE = {
    "last_frame": {"ranges": [(0, 33), (4, 36), (7, 40), (10, 43), (14, 46)],
                   "picks": [_PICKS_33, _PICKS_32, _PICKS_33, _PICKS_33, _PICKS_32]},
    "frame_count": {"ranges": [(0, 33), (4, 36), (8, 40), (11, 43), (15, 47)],
                    "picks": [_PICKS_33, _PICKS_32, _PICKS_32, _PICKS_32, _PICKS_32]},
}
SCALED_SIZE = (224, 298)
CROP_LEFTS = [0, 37, 74]
FRAME_CODE = 5  # channel 1 of frame t is 5 * t: < 256 for 50 frames


def _table_indices(video_duration):
  table = CLIP_TABLE[video_duration]
  return np.array([[first + pick for pick in picks]
                   for (first, _), picks in zip(table["ranges"], table["picks"])])


@pytest.mark.parametrize("video_duration", eval_config.VIDEO_DURATIONS)
def test_clip_starts_and_frame_indices_follow_the_official_sampler(video_duration):
  ranges = eval_transforms.clip_frame_ranges(50, 12.0, clip_seconds=2.7, num_clips=5,
                                             video_duration=video_duration).numpy()
  np.testing.assert_array_equal(ranges, CLIP_TABLE[video_duration]["ranges"])
  indices = eval_transforms.temporal_clip_indices(
      50, 12.0, num_frames=16, clip_seconds=2.7, num_clips=5,
      video_duration=video_duration).numpy()
  np.testing.assert_array_equal(indices, _table_indices(video_duration))


def test_crop_geometry_follows_short_side_scale_and_uniform_crop():
  assert [int(v) for v in eval_transforms.short_side_scale_size(240, 320, 224)] == [224, 298]
  assert [int(v) for v in eval_transforms.short_side_scale_size(320, 240, 224)] == [298, 224]
  tops, lefts = eval_transforms.uniform_crop_offsets(224, 298, 224, 3)
  assert tops.numpy().tolist() == [0, 0, 0] and lefts.numpy().tolist() == CROP_LEFTS
  tops, lefts = eval_transforms.uniform_crop_offsets(298, 224, 224, 3)  # tall: along height
  assert tops.numpy().tolist() == CROP_LEFTS and lefts.numpy().tolist() == [0, 0, 0]
  # One crop is the centre, rounded up: ceil(75 / 2) = 38 (torchvision's CenterCrop says 37).
  assert eval_transforms.uniform_crop_offsets(224, 299, 224, 1)[1].numpy().tolist() == [38]


def _torch_linspace_long(length, num_frames):
  """torch.linspace(0, length - 1, num_frames).long() on CPU, float32: the first half counts up
  from 0, the second half down from the end (ATen's linspace kernel), then truncation."""
  end, step = f32(length - 1), f32(length - 1) / f32(num_frames - 1)
  picks = [step * f32(j) if j < num_frames // 2 else end - step * f32(num_frames - 1 - j)
           for j in range(num_frames)]
  return np.array(picks, np.float32).astype(np.int64)


def test_integer_subsampling_equals_torch_float32_linspace_truncated():
  lengths = np.arange(1, 400)
  for num_frames in (2, 4, 8, 16, 32):
    ours = eval_transforms.uniform_subsample_offsets(lengths, num_frames).numpy()
    expected = np.stack([_torch_linspace_long(n, num_frames) for n in lengths])
    np.testing.assert_array_equal(ours, expected)
  np.testing.assert_array_equal(eval_transforms.uniform_subsample_offsets(7, 1).numpy(), [0])


def _pytorchvideo_clip_ranges(path, clip_seconds, num_clips):
  """EncodedVideoPyAV + ConstantClipsPerVideoSampler on a real container: the duration is the
  stream's, or the last frame's timestamp when the stream has none; clip bounds in exact
  fractions; frames whose pts lie in [ceil(start / time_base), ceil(end / time_base))."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    time_base, start_pts = stream.time_base, stream.start_time or 0
    frame_pts = [frame.pts for frame in container.decode(stream)]
    duration_pts = stream.duration
  duration = ((duration_pts if duration_pts is not None else frame_pts[-1]) - start_pts)
  step = Fraction(max(duration * time_base - Fraction(clip_seconds), 0), num_clips)
  ranges = []
  for k in range(num_clips):
    low = math.ceil(step * k / time_base) + start_pts
    high = math.ceil((step * k + Fraction(clip_seconds)) / time_base) + start_pts
    inside = [i for i, pts in enumerate(frame_pts) if low <= pts < high]
    ranges.append([inside[0], inside[-1] + 1])
  mode = "frame_count" if duration_pts is not None else "last_frame"
  return ranges, mode, len(frame_pts)


@pytest.mark.parametrize("codec, suffix, fps, num_frames", [
    ("libvpx-vp9", "webm", 12, 50),  # SSv2's container: no stream duration
    ("libvpx-vp9", "webm", 12, 47),
    ("libx264", "mp4", 25, 61),
    # 2.7 as a double is a hair above 2.7: the frame at exactly 81/30 s is in the first clip,
    # which float64 arithmetic misses.
    ("libx264", "mp4", 30, 83),
])
def test_clip_ranges_match_pytorchvideo_on_real_containers(tmp_path, codec, suffix, fps,
                                                           num_frames):
  path = str(tmp_path / f"clip.{suffix}")
  synthetic_files.write_coded_video(path, num_frames=num_frames, height=16, width=16, fps=fps,
                                    codec=codec)
  expected, video_duration, decoded = _pytorchvideo_clip_ranges(path, 2.7, 5)
  ours = eval_transforms.clip_frame_ranges(decoded, float(fps), clip_seconds=2.7, num_clips=5,
                                           video_duration=video_duration)
  assert ours.numpy().tolist() == expected


def _torch_bilinear(frames, out_height, out_width):
  """torch.nn.functional.interpolate(bilinear, align_corners=False, antialias=False), float32
  index arithmetic as ATen's: src = max(scale * (dst + 0.5) - 0.5, 0), scale = in / out;
  neighbours floor(src) and floor(src) + 1 (clamped), weights by the fractional part."""
  def axis(in_size, out_size):
    scale = f32(in_size) / f32(out_size)
    source = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
    low = source.astype(np.int64)
    high_weight = source - low.astype(f32)
    return low, np.minimum(low + 1, in_size - 1), f32(1) - high_weight, high_weight

  y0, y1, wy0, wy1 = axis(frames.shape[1], out_height)
  x0, x1, wx0, wx1 = axis(frames.shape[2], out_width)
  rows = lambda w: w[None, :, None, None]  # noqa: E731
  cols = lambda w: w[None, None, :, None]  # noqa: E731
  top, bottom = frames[:, y0], frames[:, y1]
  return (rows(wy0) * (cols(wx0) * top[:, :, x0] + cols(wx1) * top[:, :, x1])
          + rows(wy1) * (cols(wx0) * bottom[:, :, x0] + cols(wx1) * bottom[:, :, x1]))


@pytest.mark.parametrize("in_size, out_size", [((240, 320), (224, 298)),  # SSv2 frames
                                               ((256, 341), (224, 298)),  # stored at 256
                                               ((32, 40), (224, 280))])  # upsampling
def test_tf_bilinear_equals_torch_bilinear_without_antialiasing(in_size, out_size):
  frames = np.random.default_rng(0).uniform(0, 255, (2,) + in_size + (3,)).astype(f32)
  ours = tf.image.resize(frames, out_size, method="bilinear").numpy()
  # Measured: 4.6e-5 levels at most (float32 rounding of the two lerp orders).
  np.testing.assert_allclose(ours, _torch_bilinear(frames, *out_size), rtol=0, atol=2e-4)
  if out_size[0] < in_size[0]:  # antialiasing (the old code) is a different filter downscaling
    blurred = tf.image.resize(frames, out_size, method="bilinear", antialias=True).numpy()
    assert np.abs(blurred - ours).max() > 20


def _coded_video(num_frames=50, height=240, width=320):
  """JPEG frames: channel 1 codes the frame (5 t), channels 0/2 carry ramps and texture."""
  y, x = np.mgrid[0:height, 0:width]
  frames = np.empty([num_frames, height, width, 3], np.uint8)
  frames[..., 0] = (x * 255 // (width - 1))
  frames[..., 2] = ((y * 7 + x * 3) % 256)
  for t in range(num_frames):
    frames[t, ..., 1] = FRAME_CODE * t
  return [synthetic_files.jpeg_bytes(frame, quality=95) for frame in frames]


def _official_views(encoded_frames, indices):
  """The official views from the table: Pillow-decoded frames, torch's bilinear ShortSideScale,
  uniform_crop at the table's offsets, clip-major; rounded half up to uint8 like ours."""
  views = []
  for clip in indices:
    frames = np.stack([np.asarray(Image.open(io.BytesIO(encoded_frames[i]))) for i in clip])
    scaled = _torch_bilinear(frames.astype(f32), *SCALED_SIZE)
    scaled = np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)
    views += [scaled[:, :, left:left + 224] for left in CROP_LEFTS]
  return np.stack(views)


def test_video_views_equal_the_official_protocol_end_to_end():
  encoded = _coded_video()
  views = eval_transforms.eval_video_views(
      tf.constant(encoded), tf.constant(12.0), num_frames=16, clip_seconds=2.7, image_size=224,
      num_temporal_clips=5, num_spatial_crops=3, short_side=224,
      video_duration="last_frame").numpy()
  assert views.shape == (15, 16, 224, 224, 3) and views.dtype == np.uint8
  indices = _table_indices("last_frame")
  # Clip-major: views 3k .. 3k+2 are clip k; channel 1 shows which frames each one holds.
  frame_codes = views[..., 1].astype(float).mean(axis=(2, 3))  # [view, frame]
  np.testing.assert_allclose(frame_codes, FRAME_CODE * np.repeat(indices, 3, axis=0), atol=1.5)
  difference = np.abs(views.astype(int) - _official_views(encoded, indices))
  assert difference.max() <= 1  # float32 lerp order only, at exact .5 ties
  assert (difference > 0).mean() < 1e-4


def test_each_stored_frame_is_decoded_once(monkeypatch):
  decoded = []
  decode_frames = eval_transforms.decode_frames

  def recording_decode_frames(encoded_frames, frame_indices):
    decoded.extend(frame_indices.numpy().tolist())
    return decode_frames(encoded_frames, frame_indices)

  monkeypatch.setattr(eval_transforms, "decode_frames", recording_decode_frames)
  eval_transforms.eval_video_views(
      tf.constant(_coded_video(height=24, width=32)), tf.constant(12.0), num_frames=16,
      clip_seconds=2.7, image_size=16, short_side=24, video_duration="last_frame")
  # Overlapping clips share frames: the 5 x 16 picks of the table need 40 distinct frames.
  needed = np.unique(_table_indices("last_frame"))
  assert len(needed) == 40
  assert sorted(decoded) == needed.tolist()


# ---------------------------------------------------------------------------------------------
# Images: torchvision Resize(bicubic) on a PIL image + CenterCrop.
# ---------------------------------------------------------------------------------------------
def _photo_like_jpeg(rng, height, width):
  """Smooth colour fields, fine texture, hard edges and noise: the cases where filters differ."""
  coarse = rng.integers(0, 256, size=[6, 8, 3], dtype=np.uint8)
  pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), float)
  y, x = np.mgrid[0:height, 0:width]
  pixels += 40 * np.sin(x / 3.0 + y / 5.0)[..., None]
  pixels[(x // 16 + y // 16) % 2 == 0] *= 0.6
  pixels += rng.normal(0, 8, pixels.shape)
  return synthetic_files.jpeg_bytes(np.clip(pixels, 0, 255).astype(np.uint8), quality=90)


def _torchvision_eval_image(encoded, resize_size, crop):
  """Resize(resize_size, BICUBIC) + CenterCrop(crop) as torchvision runs them on a PIL image."""
  image = Image.open(io.BytesIO(encoded)).convert("RGB")
  width, height = image.size
  short, long = (width, height) if width <= height else (height, width)
  new_long = int(resize_size * long / short)
  size = (resize_size, new_long) if width <= height else (new_long, resize_size)
  if size != image.size:
    image = image.resize(size, Image.BICUBIC)
  top = int(round((size[1] - crop) / 2.0))
  left = int(round((size[0] - crop) / 2.0))
  return np.asarray(image.crop((left, top, left + crop, top + crop)))


@pytest.mark.parametrize("height, width, resize_size", [
    (375, 500, 224), (500, 333, 224), (600, 800, 224),  # downscaling, ImageNet-like sizes
    (180, 240, 224),  # upscaling
    (224, 300, 224),  # the short side already fits: no resize
    (300, 400, 227),  # crop ratio < 1: odd margins, round half to even (1.5 -> 2)
])
def test_eval_image_matches_torchvision_on_pil(height, width, resize_size):
  encoded = _photo_like_jpeg(np.random.default_rng(height + width), height, width)
  ours = eval_transforms.eval_image(tf.constant(encoded), image_size=224,
                                    resize_size=resize_size).numpy()
  expected = _torchvision_eval_image(encoded, resize_size, 224)
  difference = np.abs(ours.astype(int) - expected)
  # Measured on these images: at most 1 level on 0 to 0.03% of the values. Both sides round
  # each pass half up; Pillow sums in 22-bit fixed point and TF in float32, so only sums within
  # ~1e-4 of a .5 boundary can round apart, by one level.
  assert difference.max() <= 1
  assert (difference > 0).mean() < 1e-3


def test_jpeg_decoding_is_pillows_bit_for_bit():
  encoded = _photo_like_jpeg(np.random.default_rng(1), 120, 160)
  ours = eval_transforms.decode_rgb(tf.constant(encoded)).numpy()
  np.testing.assert_array_equal(ours, np.asarray(Image.open(io.BytesIO(encoded))))
  # TF's default (fast) DCT would not be.
  fast = tf.io.decode_jpeg(encoded, channels=3).numpy()
  assert np.abs(fast.astype(int) - ours).max() > 0


def test_resized_size_and_centre_crop_follow_torchvision():
  assert [int(v) for v in eval_transforms.resized_short_side_size(375, 500, 224)] == [224, 298]
  assert [int(v) for v in eval_transforms.resized_short_side_size(500, 333, 224)] == [336, 224]
  # Python's round is half to even: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2.
  offsets = [int(eval_transforms.centre_crop_offsets(224 + d, 224, 224)[0]) for d in (1, 3, 5)]
  assert offsets == [0, 2, 2]


# ---------------------------------------------------------------------------------------------
# The evaluation source: ordered, padded, every example exactly once.
# ---------------------------------------------------------------------------------------------
def _image_config(split="train", batch_size=2, **overrides):
  cfg = eval_config.default_eval_source_config("image")
  cfg.update(tfds_name="imagenet2012", split=split, batch_size=batch_size, image_size=32,
             resize_size=32, **overrides)
  return cfg


def _split_labels(builder, split):
  records = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()})
  return {record["file_name"]: int(record["label"]) for record in records.as_numpy_iterator()}


@pytest.mark.parametrize("process_count", [1, 2, 3, 5])
def test_every_example_counts_exactly_once_on_any_number_of_processes(data, process_count):
  # imagenet2012 'train' of the fixtures: 12 records, one of them undecodable.
  labels = _split_labels(data["imagenet2012"], "train")
  corrupt_name = b"n01440764_0.JPEG"
  cfg = _image_config(batch_size=2 * process_count)  # 2 examples per process and batch
  slots, corrupt, batch_counts = collections.Counter(), [], []
  for index in range(process_count):
    source = eval_pipeline.make_eval_source("val", cfg, data_dir=data["data_dir"],
                                            process_index=index, process_count=process_count)
    assert source.num_examples == 12
    batches = list(source.batches(with_ids=True))
    batch_counts.append(len(batches))
    assert len(batches) == source.num_batches
    for batch in batches:
      assert batch["pixels"].shape == (2, 32, 32, 3) and batch["pixels"].dtype == np.uint8
      assert batch["label"].dtype == np.int32 and batch["valid"].dtype == bool
      for name, label, valid, pixels in zip(batch["id"], batch["label"], batch["valid"],
                                            batch["pixels"]):
        if not valid:  # padding or the corrupt record: label -1, zero pixels
          assert label == -1 and not pixels.any()
        if name:
          slots[name] += 1
          assert not valid or label == labels[name]
          assert valid == (name != corrupt_name)
    corrupt += source.corrupt_ids
  # The same number of batches everywhere: ceil(largest part / 2).
  largest_part = math.ceil(12 / process_count)
  assert batch_counts == [math.ceil(largest_part / 2)] * process_count
  assert slots == collections.Counter(labels.keys())  # every record exactly once
  assert corrupt == [corrupt_name]  # counted once, by the process that owns it


def test_single_process_order_is_fixed_and_unshuffled(data):
  cfg = _image_config(split="validation", batch_size=3)  # 4 examples: 2 batches, 2 padded
  source = eval_pipeline.make_eval_source("val", cfg, data_dir=data["data_dir"],
                                          process_index=0, process_count=1)
  first, second = list(source.batches(with_ids=True)), list(source.batches(with_ids=True))
  assert source.num_batches == 2 and len(first) == 2
  for a, b in zip(first, second):
    for key in ("pixels", "label", "valid", "id"):
      np.testing.assert_array_equal(a[key], b[key])
  ids = [name for batch in first for name in batch["id"]]
  assert ids == list(_split_labels(data["imagenet2012"], "validation")) + [b"", b""]
  assert [bool(v) for batch in first for v in batch["valid"]] == [True] * 4 + [False] * 2
  assert set(next(iter(source))) == {"pixels", "label", "valid"}


def test_video_source_yields_clip_major_views_per_example(data):
  cfg = eval_config.default_eval_source_config("video")
  cfg.update(tfds_name="something_something_v2/original", batch_size=4, image_size=16,
             eval_short_side=32, num_frames=4, clip_seconds=0.5)
  source = eval_pipeline.make_eval_source("val", cfg, data_dir=data["data_dir"],
                                          patch_size=(2, 8, 8), process_index=0,
                                          process_count=1)
  assert source.num_views == 15 and source.num_examples == 2 and source.num_classes == 3
  (batch,) = list(source.batches(with_ids=True))
  assert batch["pixels"].shape == (4, 15, 4, 16, 16, 3)
  assert batch["id"].tolist() == [b"201", b"202", b"", b""]
  assert batch["valid"].tolist() == [True, True, False, False]
  assert batch["label"].tolist() == [0, 1, -1, -1]
  assert not batch["pixels"][2:].any()


def test_an_undecodable_video_frame_flags_its_record_and_keeps_the_order(data):
  cfg = eval_config.default_eval_source_config("video")
  cfg.update(tfds_name="something_something_v2/original", batch_size=1, image_size=16,
             eval_short_side=32, num_frames=4, clip_seconds=0.5)
  source = eval_pipeline.make_eval_source("val", cfg, data_dir=data["data_dir"],
                                          process_index=0, process_count=1)
  good = [synthetic_files.jpeg_bytes(frame) for frame in synthetic_files.coded_frames(8, 32, 40)]
  broken = good[:3] + [b"\xff\xd8 not a jpeg"] + good[4:]
  records = tf.data.Dataset.from_tensor_slices({
      "video": [good, broken, good], "fps": [12.0] * 3, "label": [2, 1, 0],
      "id": [b"a", b"b", b"c"]})
  examples = list(source.examples(records).as_numpy_iterator())
  assert [e["id"] for e in examples] == [b"a", b"b", b"c"]
  assert [bool(e["corrupt"]) for e in examples] == [False, True, False]
  assert [bool(e["valid"]) for e in examples] == [True, False, True]
  assert [int(e["label"]) for e in examples] == [2, -1, 0]


def _imagenet_with_test_split(root):
  """imagenet2012 with a test split (TFDS labels it -1) besides one-image train/validation."""
  manual = os.path.join(root, "manual")
  synthetic_files.write_imagenet_manual_dir(manual, synsets=("n01440764",), images_per_synset=1,
                                            num_validation=1, height=8, width=8)
  with tarfile.open(os.path.join(manual, "ILSVRC2012_img_test.tar"), "w") as tar:
    payload = synthetic_files.jpeg_bytes(np.zeros([8, 8, 3], np.uint8))
    info = tarfile.TarInfo("ILSVRC2012_test_00000001.JPEG")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  data_dir = os.path.join(root, "tfds")
  tfds.builder("imagenet2012", data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return data_dir


def test_unlabelled_or_missing_splits_are_clear_errors(data, tmp_path):
  data_dir = _imagenet_with_test_split(str(tmp_path))
  with pytest.raises(DatasetNotPreparedError, match=r"imagenet2012.*'test' is unlabelled"):
    eval_pipeline.make_eval_source("val", _image_config(split="test"), data_dir=data_dir,
                                   process_index=0, process_count=1)
  with pytest.raises(DatasetNotPreparedError, match="no split 'test'"):  # the fixtures' build
    eval_pipeline.make_eval_source("val", _image_config(split="test"),
                                   data_dir=data["data_dir"], process_index=0, process_count=1)


@pytest.mark.parametrize("modality, field, value, message", [
    ("video", "num_temporal_clips", 0, "integer >= 1"),
    ("video", "num_spatial_crops", 2, "expected one of"),
    ("video", "eval_short_side", 200, "the crops must fit"),
    ("video", "video_duration", "seconds", "expected one of"),
    ("video", "num_frames", 15, "temporal patch size 2"),
    ("image", "resize_size", 200, "centre crop must fit"),
    ("image", "image_size", 220, "multiple of the patch size"),
])
def test_config_errors_name_the_field(modality, field, value, message):
  cfg = eval_config.default_eval_source_config(modality)
  cfg[field] = value
  with pytest.raises(ValueError, match=f"'{field}' = .*{message}"):
    eval_config.validate_eval_source("val", cfg, patch_size=(2, 16, 16))


def test_batch_size_must_split_over_the_processes(data):
  with pytest.raises(ValueError, match="'batch_size' = 3 .*multiple of the 2 processes"):
    eval_pipeline.make_eval_source("val", _image_config(batch_size=3), data_dir=data["data_dir"],
                                   process_index=0, process_count=2)


def test_default_configs_are_the_official_protocol():
  image = eval_config.default_eval_source_config("image")
  video = eval_config.default_eval_source_config("video")
  assert (image.image_size, image.resize_size, image.split) == (224, 224, "validation")
  assert (video.num_temporal_clips, video.num_spatial_crops, video.eval_short_side,
          video.num_frames, video.clip_seconds) == (5, 3, 224, 16, 2.7)
  for cfg in (image, video):
    eval_config.validate_eval_source("val", cfg, patch_size=(2, 16, 16))
