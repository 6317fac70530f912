"""Corrupt data never kills, hangs or shifts a run (DESIGN §4, §8).

A record that cannot be decoded keeps its slot as an invalid sample; a damaged file, or a split
where too many records fail, stops the run with a CorruptDataError saying what to do; an error in
our own transform code is raised, not skipped.
"""
import io
import json
import os
import threading
import time

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import pytest

from data_fixtures import (DEMO_IMAGE_VALIDATION, PATCH_SIZE, copy_prepared, damage_media, data,
                           flip_a_byte, garbage_bytes, record_payloads, rewrite_records,
                           small_source_config, truncated_jpeg)
from omnimae_jax.data import loader as loader_lib
from omnimae_jax.data import pipeline, sources, transforms
from omnimae_jax.data._tf import tf
from omnimae_jax.data.errors import CorruptDataError
from omnimae_jax.train import checkpoint, loop

assert data  # the session fixture, imported so that pytest finds it here

CORRUPT_EVERY = 20  # of the demo validation records read (200 images, 100 clips): 5%
# A damaged file must fail well within this; a hang (the old ignore_errors retrying a sticky
# read error forever) fails the test instead of blocking it.
DEADLINE_SECONDS = 30


def _source(data_dir, cfg, name="source"):
  return pipeline.make_source(name, cfg, data_dir=data_dir, patch_size=PATCH_SIZE, seed=0,
                              process_index=0, process_count=1)


def _image_config(**overrides):
  # 25 batches of 8: each of the 200 records exactly once per epoch.
  return small_source_config("image", "omnimae_demo/images", split=DEMO_IMAGE_VALIDATION,
                             **overrides)


def _video_config():
  # 25 batches of 4 clips x 2 replicas: each of the 100 clips exactly once per epoch.
  return small_source_config("video", "omnimae_demo/videos", split="validation",
                             num_replicas=2, repeat_factor=1.0)


def _split_file(builder):
  (path,) = sources.split_files(builder, "validation")
  return path


def _damage_every_20th_record(builder, media_key):
  """Every 20th record's media becomes garbage or a cut JPEG, in turn (every frame of a clip);
  returns their TFDS ids (file name __ position)."""
  path = _split_file(builder)
  damages = (garbage_bytes, truncated_jpeg)

  def change(position, example):
    if position % CORRUPT_EVERY == 0:
      damage_media(example, media_key, damages[(position // CORRUPT_EVERY) % 2])

  rewrite_records(path, change)
  split = DEMO_IMAGE_VALIDATION if media_key == "image" else "validation"
  num_records = builder.info.splits[split].num_examples  # the records the tests read
  return {f"{os.path.basename(path)}__{position}"
          for position in range(0, num_records, CORRUPT_EVERY)}


@pytest.fixture(scope="module")
def corrupt_images(data, tmp_path_factory):
  """(data_dir, TFDS ids of the corrupt records) of a demo image split with 5% corrupt JPEGs."""
  data_dir = str(tmp_path_factory.mktemp("corrupt_images"))
  builder = copy_prepared("omnimae_demo/images", data["data_dir"], data_dir)
  return data_dir, _damage_every_20th_record(builder, "image")


@pytest.fixture(scope="module")
def corrupt_videos(data, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("corrupt_videos"))
  builder = copy_prepared("omnimae_demo/videos", data["data_dir"], data_dir)
  return data_dir, _damage_every_20th_record(builder, "video")


def _concatenated(batches, key):
  return np.concatenate([batch[key] for batch in batches])


def test_an_epoch_with_5_percent_corrupt_jpegs_completes_and_keeps_their_slots(corrupt_images):
  data_dir, corrupt_ids = corrupt_images
  source = _source(data_dir, _image_config())
  produced = list(source.batches(0))
  assert len(produced) == source.steps_per_epoch == 25
  batches = [batch for batch, _ in produced]
  assert set(batches[0]) == {"pixels", "mask", "keep_idx", "label", "valid"}
  valid, labels = _concatenated(batches, "valid"), _concatenated(batches, "label")
  pixels, masks = _concatenated(batches, "pixels"), _concatenated(batches, "mask")
  assert len(corrupt_ids) == 10 and np.count_nonzero(~valid) == len(corrupt_ids)
  assert (pixels[~valid] == 0).all() and (labels[~valid] == -1).all()
  assert set(labels[valid]) <= set(range(4))
  assert (masks.sum(axis=1) == 12).all()  # placeholders carry a legal mask too
  logged_ids = [record_id for _, ids in produced for record_id in ids]
  assert sorted(logged_ids) == sorted(corrupt_ids)  # 10 <= LOGGED_CORRUPT_RECORDS


def test_a_corrupt_clip_makes_all_its_replicas_invalid(corrupt_videos):
  data_dir, corrupt_ids = corrupt_videos
  source = _source(data_dir, _video_config())
  batches = [batch for batch, _ in source.batches(0)]
  assert len(batches) == 25
  valid = _concatenated(batches, "valid").reshape(-1, 2)  # [clips, replicas]
  assert (valid[:, 0] == valid[:, 1]).all()
  assert np.count_nonzero(~valid) == len(corrupt_ids) * 2 == 10
  pixels = _concatenated(batches, "pixels")
  assert pixels.shape[1:] == (4, 32, 32, 3) and (pixels[~valid.reshape(-1)] == 0).all()


@pytest.mark.parametrize("which", ["corrupt_images", "corrupt_videos"])
def test_resume_reproduces_the_rest_of_the_epoch_bit_exactly_despite_corrupt_records(
    which, request):
  data_dir, _ = request.getfixturevalue(which)
  source = _source(data_dir, _image_config() if which == "corrupt_images" else _video_config())
  full = list(source.dataset(1).as_numpy_iterator())
  assert len(full) == source.steps_per_epoch
  invalid_batches = [index for index, batch in enumerate(full) if not batch["valid"].all()]
  assert len(invalid_batches) >= 3
  for skip in (1, invalid_batches[1], invalid_batches[-1], source.steps_per_epoch - 1):
    resumed = list(source.dataset(1, skip_batches=skip).as_numpy_iterator())
    assert len(resumed) == len(full) - skip
    for one, other in zip(resumed, full[skip:]):
      assert one.keys() == other.keys()
      for key in one:
        np.testing.assert_array_equal(one[key], other[key], err_msg=f"{key} after {skip}")


def test_the_two_image_stages_give_exactly_the_tested_train_image(data):
  source = _source(data["data_dir"], _image_config())
  batch = next(iter(source.dataset(0)))
  records = sources.read_records(source.builder, "validation", media_key="image", shuffle_seed=0)
  encoded = {record["tfds_id"]: record["image"] for record in records.as_numpy_iterator()}
  epoch_seed = source._epoch_seed(0)  # pylint: disable=protected-access
  for index in range(4):
    # Record numbers are int64, as enumerate() makes them (fold_in depends on the dtype).
    pixel_seed, _, _ = pipeline._record_seeds(  # pylint: disable=protected-access
        epoch_seed, tf.constant(index, tf.int64))
    cfg = source.cfg
    expected = transforms.train_image(
        encoded[batch["record_id"][index].numpy()], pixel_seed, image_size=cfg.image_size,
        crop_scale=tuple(cfg.crop_scale), crop_ratio=tuple(cfg.crop_ratio), flip=cfg.flip)
    np.testing.assert_array_equal(batch["pixels"][index], expected)


def _with_a_bug(function):
  """`function`, raising at run time (not while tracing) as a bug in it would."""
  def buggy(*args, **kwargs):
    result = function(*args, **kwargs)
    check = tf.debugging.assert_less(tf.reduce_max(tf.cast(result, tf.float32)), -1.0,
                                     message="a bug in our transform code")
    with tf.control_dependencies([check]):
      return tf.identity(result)
  return buggy


def test_an_error_in_the_transform_stage_is_raised_not_skipped(data, monkeypatch):
  source = _source(data["data_dir"], _image_config())
  monkeypatch.setattr(transforms, "to_uint8", _with_a_bug(transforms.to_uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match="a bug in our transform code"):
    next(source.batches(0))


def test_the_same_error_in_the_decode_stage_makes_the_record_a_placeholder(data, monkeypatch):
  source = _source(data["data_dir"], _image_config(max_corrupt_fraction=1.0))
  monkeypatch.setattr(transforms, "decode_and_crop", _with_a_bug(transforms.decode_and_crop))
  batch, corrupt_ids = next(source.batches(0))
  assert not batch["valid"].any() and len(corrupt_ids) == 8


def _error_within(seconds, work):
  """Runs work() in a thread; the exception it raised, or a test failure if it is still running
  after `seconds` (a hang)."""
  outcome = {}

  def run():
    try:
      work()
    except Exception as error:  # noqa: BLE001  (returned to the test)
      outcome["error"] = error

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still running after {seconds} s: the pipeline hangs"
  return outcome.get("error")


@pytest.fixture(scope="module")
def batch_sharding():
  return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated"])
def test_a_damaged_file_stops_the_loader_promptly_naming_the_file(data, tmp_path, damage,
                                                                  batch_sharding):
  builder = copy_prepared("omnimae_demo/images", data["data_dir"], str(tmp_path))
  path = _split_file(builder)
  if damage == "flipped_byte":
    flip_a_byte(path, 120)
  else:
    offset, length = record_payloads(path)[120]
    with open(path, "r+b") as file:
      file.truncate(offset + length // 2)  # ends inside a record
  source = _source(str(tmp_path), _image_config(), name="images")

  def read_an_epoch():
    with loader_lib.Loader({"images": source}, sharding=batch_sharding, seed=0) as loader:
      for _ in range(source.steps_per_epoch):
        next(loader)

  error = _error_within(DEADLINE_SECONDS, read_an_epoch)
  assert isinstance(error, CorruptDataError), error
  message = str(error)
  assert path in message and "data source 'images'" in message
  assert "prepare the dataset again" in message
  assert ("corrupted record" if damage == "flipped_byte" else "less bytes") in message


def test_too_many_corrupt_records_stop_the_run_with_a_clear_error(corrupt_images):
  data_dir, _ = corrupt_images
  source = _source(data_dir, _image_config(max_corrupt_fraction=0.02), name="in1k")
  # 10 of 200 records (5%) are corrupt: past 2% by the end of the epoch at the latest.
  with pytest.raises(CorruptDataError,
                     match=r"data source 'in1k': \d+ of the \d+ records .* omnimae_demo/images "
                           r"validation\[:200\] .* max_corrupt_fraction=0.02"):
    for _ in source.batches(0):
      pass


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_max_corrupt_fraction_must_be_a_fraction(data, fraction):
  with pytest.raises(ValueError, match="'max_corrupt_fraction'"):
    _source(data["data_dir"], _image_config(max_corrupt_fraction=fraction))


def test_the_loader_weighs_by_valid_and_hands_over_the_logged_ids(corrupt_images, batch_sharding):
  data_dir, corrupt_ids = corrupt_images
  source = _source(data_dir, _image_config(), name="images")
  with loader_lib.Loader({"images": source}, sharding=batch_sharding, seed=0) as loader:
    items = [next(loader) for _ in range(source.steps_per_epoch)]
    taken = loader.take_corrupt_record_ids()
  valid = np.concatenate([np.asarray(batch["valid"]) for _, _, batch in items])
  assert items[0][2]["valid"].sharding == batch_sharding
  assert np.count_nonzero(~valid) == len(corrupt_ids)
  # The producer may be into the next epoch already, which has the same corrupt records.
  assert len(taken) >= len(corrupt_ids) and set(taken) == {("images", i) for i in corrupt_ids}


def test_only_the_first_corrupt_records_of_an_epoch_are_logged(corrupt_images, monkeypatch,
                                                               caplog):
  data_dir, corrupt_ids = corrupt_images
  monkeypatch.setattr(pipeline, "LOGGED_CORRUPT_RECORDS", 3)
  source = _source(data_dir, _image_config())
  logged = [record_id for _, ids in source.batches(0) for record_id in ids]
  assert len(logged) == 3 and set(logged) < corrupt_ids
  messages = [record.getMessage() for record in caplog.records]
  assert sum("could not be decoded" in message for message in messages) == 3
  assert sum("the rest are counted" in message for message in messages) == 1


def _pretraining_over(data_dir, total_steps):
  """The demo pretraining, shallow, on the corrupt image split alone: batches of 8, 25 steps an
  epoch."""
  from configs import demo_omni  # noqa: PLC0415 (a config module, only this test needs it)
  from test_train import SHALLOW, set_fields  # noqa: PLC0415 (test_train's shallow demo model)
  config = set_fields(demo_omni.get_config("sources=images"), SHALLOW)
  with config.unlocked():
    config.data.data_dir = data_dir
    source = config.data.sources.images
    source.update(split=DEMO_IMAGE_VALIDATION, batch_size=8, image_size=32, shuffle_buffer=64)
    config.model.img_size = 32
    config.total_steps = total_steps
    config.log_every_steps = 1
    config.recon_every_steps = 0
    config.checkpoint.every_steps = 10
    config.evals = {}
  return config


def _training_history(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as file:
    entries = [json.loads(line) for line in file]
  return [(e["step"], e["loss"], e["skipped_images"]) for e in entries if "eval" not in e]


def test_pretraining_over_5_percent_corrupt_jpegs_resumes_bit_exactly_and_counts_them(
    corrupt_images, tmp_path):
  """An epoch of training over the damaged split: interrupted twice (between and off the save
  steps), it gives the losses and parameters of the run that never stopped, and the metrics
  count each of the 10 corrupt records once."""
  data_dir, corrupt_ids = corrupt_images
  config = _pretraining_over(data_dir, total_steps=25)
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  quiet = io.StringIO
  loop.train(config, straight, stream=quiet())
  for stop in (7, 16, None):
    loop.train(config, interrupted, stream=quiet(), stop_at_step=stop)
  history = _training_history(straight)
  assert [step for step, _, _ in history] == list(range(1, 26))
  assert history[-1][2] == len(corrupt_ids) == 10
  assert _training_history(interrupted) == history
  _, straight_vars = checkpoint.load_model(straight)
  _, resumed_vars = checkpoint.load_model(interrupted)
  for a, b in zip(jax.tree.leaves(straight_vars), jax.tree.leaves(resumed_vars)):
    np.testing.assert_array_equal(a, b)


def test_a_damaged_file_read_by_one_of_two_processes_stops_both_at_once(data, tmp_path):
  """main.py as two processes; only process 1's half of the training split holds a damaged
  record. It says so in one line (exit 2) and leaves; process 0, whose step lost its peer, stops
  too. Before, both waited out jax.distributed's shutdown barrier (5 min), then aborted."""
  from test_train import demo_flags, free_port, main_py  # noqa: PLC0415 (main.py as users run it)
  data_dir = str(tmp_path / "tfds")
  builder = copy_prepared("omnimae_demo/images", data["data_dir"], data_dir)
  (path,) = sources.split_files(builder, "train")
  flip_a_byte(path, 1100)  # of 2000 records: in process 1's half
  address = f"localhost:{free_port()}"
  started = time.monotonic()
  procs = [main_py(*demo_flags(data_dir, tmp_path / "work", "--config.total_steps=200",
                               "--config.recon_every_steps=0", f"--coordinator_address={address}",
                               "--num_processes=2", f"--process_id={index}", sources="images",
                               probe=False),
                   extra_env={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"})
           for index in range(2)]
  (_, first_err), (_, second_err) = [proc.communicate(timeout=280) for proc in procs]
  assert time.monotonic() - started < 150
  assert procs[1].returncode == 2 and "Traceback" not in second_err, second_err[-3000:]
  last_line = second_err.strip().splitlines()[-1]
  assert last_line.startswith("error: data source 'images': 1 file(s) of omnimae_demo/images")
  assert path in last_line and "prepare the dataset again" in last_line
  assert procs[0].returncode == 1, first_err[-3000:]
  assert "if another process stopped first, its output says why" in first_err
