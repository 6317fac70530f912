"""Per-source pipeline: batch layout, replication, exact resume, per-process splits."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_fixtures import DEMO_IMAGE_VALIDATION, PATCH_SIZE, data, small_source_config
from omnimae_jax.data import masking, pipeline, sources, synthetic_files

assert data  # the session fixture, imported so that pytest finds it here


def _source(data, name, cfg, process_index=0, process_count=1, seed=0):
  return pipeline.make_source(name, cfg, data_dir=data["data_dir"], patch_size=PATCH_SIZE,
                              seed=seed, process_index=process_index,
                              process_count=process_count)


def _batches(source, epoch=0, skip_batches=0, limit=None):
  dataset = source.dataset(epoch, skip_batches=skip_batches)
  if limit is not None:
    dataset = dataset.take(limit)
  return list(dataset.as_numpy_iterator())


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for one, other in zip(first, second):
    assert one.keys() == other.keys()
    for key in one:
      np.testing.assert_array_equal(one[key], other[key], err_msg=key)


@pytest.fixture(scope="module")
def image_source(data):
  return _source(data, "images", small_source_config("image", "omnimae_demo/images",
                                                     split=DEMO_IMAGE_VALIDATION))


@pytest.fixture(scope="module")
def video_source(data):
  cfg = small_source_config("video", "omnimae_demo/videos", split="validation", num_replicas=4,
                            repeat_factor=0.25)
  return _source(data, "videos", cfg)


def test_image_batches_have_the_documented_keys_shapes_and_dtypes(image_source):
  assert image_source.grid == (1, 4, 4)
  assert image_source.num_visible == 16 - int(0.75 * 16) == 4
  assert image_source.steps_per_epoch == 200 // 8
  batch = _batches(image_source, limit=1)[0]
  assert {key: (value.shape, value.dtype.name) for key, value in batch.items()} == {
      "pixels": ((8, 32, 32, 3), "uint8"), "mask": ((8, 16), "bool"),
      "keep_idx": ((8, 4), "int32"), "label": ((8,), "int32"), "valid": ((8,), "bool"),
      "record_id": ((8,), "object")}
  assert batch["valid"].all()
  assert all(record_id.startswith(b"omnimae_demo-validation.tfrecord") for record_id in
             batch["record_id"])
  assert (batch["mask"].sum(axis=1) == 12).all()
  for mask, keep in zip(batch["mask"], batch["keep_idx"]):
    np.testing.assert_array_equal(keep, np.flatnonzero(~mask))
  assert set(batch["label"]) <= set(range(4))


def test_video_batches_have_the_documented_keys_shapes_and_dtypes(video_source):
  assert video_source.grid == (2, 4, 4)
  # 100 clips x repeat factor 1/4, 8 samples = 2 clips x 4 replicas per step.
  assert video_source.steps_per_epoch == 100 * 0.25 // 2 == 12
  batches = _batches(video_source)
  assert len(batches) == 12
  assert {key: (value.shape, value.dtype.name) for key, value in batches[0].items()} == {
      "pixels": ((8, 4, 32, 32, 3), "uint8"), "mask": ((8, 32), "bool"),
      "keep_idx": ((8, 8), "int32"), "label": ((8,), "int32"), "valid": ((8,), "bool"),
      "record_id": ((8,), "object")}
  for key in ("label", "record_id"):  # the 4 replicas of a clip are adjacent
    values = batches[0][key]
    assert (values[:4] == values[0]).all() and (values[4:] == values[4]).all()
  assert batches[0]["record_id"][0] != batches[0]["record_id"][4]


def test_replicas_of_a_clip_share_frames_but_not_crop_or_mask(data):
  # SSv2 test clips: 12 frames at 12 fps whose channel 1 encodes the frame number. A 2.7 s
  # window is longer than the clip, so the 4 frames are linspace(0, 11, 4) -> 0, 3, 7, 11.
  cfg = small_source_config("video", "something_something_v2/original", num_replicas=4,
                            repeat_factor=1.0, batch_size=8, image_size=16)
  source = _source(data, "ssv2", cfg)
  batch = _batches(source, limit=1)[0]
  expected_codes = (synthetic_files.FRAME_CODE_STEP * np.array([0, 3, 7, 11])) % 256
  for clip in range(2):
    replicas = batch["pixels"][clip * 4:(clip + 1) * 4]  # [4, T, H, W, 3]
    frame_codes = replicas[..., 1].astype(float).mean(axis=(2, 3))
    np.testing.assert_allclose(frame_codes, np.tile(expected_codes, [4, 1]), atol=4)
    crops = {replica[0, ..., 0].tobytes() for replica in replicas}
    masks = {mask.tobytes() for mask in batch["mask"][clip * 4:(clip + 1) * 4]}
    assert len(crops) == 4 and len(masks) == 4


@pytest.mark.parametrize("which", ["image_source", "video_source"])
def test_skip_batches_resumes_exactly(which, request):
  source = request.getfixturevalue(which)
  full = _batches(source, epoch=1)
  assert len(full) == source.steps_per_epoch
  for skip in (1, 5, source.steps_per_epoch - 1):
    _assert_same_batches(_batches(source, epoch=1, skip_batches=skip), full[skip:])
  assert _batches(source, epoch=1, skip_batches=source.steps_per_epoch) == []


def test_epochs_are_reproducible_and_reshuffled(image_source):
  first = _batches(image_source, epoch=0, limit=3)
  _assert_same_batches(first, _batches(image_source, epoch=0, limit=3))
  other_epoch = _batches(image_source, epoch=1, limit=3)
  assert not all(np.array_equal(a["pixels"], b["pixels"]) for a, b in zip(first, other_epoch))


def _ids(builder, split):
  records = sources.read_records(builder, split, media_key="image", shuffle_seed=0)
  return [record["id"] for record in records.as_numpy_iterator()]


def test_per_process_splits_are_disjoint_and_cover_the_split(data):
  builder = sources.load_builder("omnimae_demo/images", data["data_dir"])
  all_ids = _ids(builder, DEMO_IMAGE_VALIDATION)
  parts = [_ids(builder, sources.split_for_process(DEMO_IMAGE_VALIDATION, index, 3))
           for index in range(3)]
  assert sum(len(part) for part in parts) == len(all_ids) == 200
  assert set().union(*map(set, parts)) == set(all_ids)
  for index, part in enumerate(parts):
    for other in parts[index + 1:]:
      assert not set(part) & set(other)


def test_each_process_gets_a_slice_of_the_global_batch_and_the_same_step_count(data):
  cfg = small_source_config("image", "omnimae_demo/images", split=DEMO_IMAGE_VALIDATION,
                            batch_size=12)
  hosts = [_source(data, "images", cfg, process_index=index, process_count=3)
           for index in range(3)]
  assert {host.steps_per_epoch for host in hosts} == {200 // 12}
  assert {host.local_batch_size for host in hosts} == {4}
  assert {host.num_examples for host in hosts} == {200}
  first = [_batches(host, limit=1)[0]["pixels"] for host in hosts]
  assert all(batch.shape == (4, 32, 32, 3) for batch in first)
  assert not np.array_equal(first[0], first[1])


def test_batch_and_dataset_sizes_that_cannot_work_are_rejected(data):
  cfg = small_source_config("image", "omnimae_demo/images", split=DEMO_IMAGE_VALIDATION,
                            batch_size=8)
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    _source(data, "images", cfg, process_index=0, process_count=3)
  cfg = small_source_config("video", "omnimae_demo/videos", split="validation", batch_size=8,
                            num_replicas=4)
  with pytest.raises(ValueError, match="not divisible by num_replicas"):
    _source(data, "videos", cfg, process_index=0, process_count=4)
  cfg = small_source_config("image", "omnimae_demo/images", split="validation[:5]")
  with pytest.raises(ValueError, match="fewer than one batch"):
    _source(data, "images", cfg)


def test_mask_kinds_flow_through_the_pipeline(data):
  for kind, expected_visible in (("tube", 2 * 4), ("causal", 8), ("frame", 16)):
    cfg = small_source_config("video", "omnimae_demo/videos", split="validation",
                              mask_kind=kind, mask_ratio=0.75, num_replicas=2, batch_size=4)
    source = _source(data, "videos", cfg)
    assert source.num_visible == masking.num_visible(kind, (2, 4, 4), 0.75) == expected_visible
    batch = _batches(source, limit=1)[0]
    assert batch["keep_idx"].shape == (4, expected_visible)
    assert ((~batch["mask"]).sum(axis=1) == expected_visible).all()


def test_resume_is_exact_when_the_split_has_many_files(tmp_path):
  # Real splits have hundreds of files read in a seeded, interleaved order (ImageNet: 1024).
  builder = tfds.builder("omnimae_demo/images", data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=5))
  assert builder.info.splits["train"].num_shards == 5
  cfg = small_source_config("image", "omnimae_demo/images", shuffle_buffer=16)
  for process_index, process_count in ((0, 1), (1, 2)):
    source = pipeline.make_source("images", cfg, data_dir=str(tmp_path), patch_size=PATCH_SIZE,
                                  seed=1, process_index=process_index,
                                  process_count=process_count)
    full = _batches(source, epoch=2, limit=14)
    _assert_same_batches(_batches(source, epoch=2, skip_batches=10, limit=4), full[10:])
