"""Modality schedule and the Loader: homogeneous steps, global arrays, exact resume."""
import collections
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_fixtures import PATCH_SIZE, data, small_source_config
from omnimae_jax.data import loader as loader_lib
from omnimae_jax.data import pipeline
from omnimae_jax.data.schedule import consumed_batches, epoch_schedule

assert data  # the session fixture, imported so that pytest finds it here

STEPS = {"in1k": 626, "ssv2": 82}  # SPEC §3.4 with 64 GPUs


def test_schedule_is_identical_on_every_host_and_follows_the_proportions():
  host_a = epoch_schedule(STEPS, seed=123, epoch=7)
  host_b = epoch_schedule(dict(reversed(list(STEPS.items()))), seed=123, epoch=7)
  assert host_a == host_b
  assert collections.Counter(host_a) == STEPS
  assert host_a != sorted(host_a)  # interleaved, not blocks


def test_schedule_changes_with_epoch_and_seed():
  base = epoch_schedule(STEPS, seed=0, epoch=0)
  assert epoch_schedule(STEPS, seed=0, epoch=1) != base
  assert epoch_schedule(STEPS, seed=1, epoch=0) != base
  assert collections.Counter(epoch_schedule(STEPS, seed=0, epoch=1)) == STEPS


def test_consumed_batches_counts_each_source_before_a_position():
  order = ["a", "b", "a", "a", "b"]
  assert consumed_batches(order, 0) == {"a": 0, "b": 0}
  assert consumed_batches(order, 4) == {"a": 3, "b": 1}


@pytest.fixture(scope="module")
def demo_sources(data):
  image_cfg = small_source_config("image", "omnimae_demo/images", split="validation[:48]")
  video_cfg = small_source_config("video", "omnimae_demo/videos", split="validation[:40]",
                                  num_replicas=4, repeat_factor=0.5)
  return {
      name: pipeline.make_source(name, cfg, data_dir=data["data_dir"], patch_size=PATCH_SIZE,
                                 seed=3, process_index=0, process_count=1)
      for name, cfg in (("images", image_cfg), ("videos", video_cfg))}


@pytest.fixture(scope="module")
def batch_sharding():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  return NamedSharding(mesh, PartitionSpec("data"))


def _take(sources, sharding, start_step, count):
  with loader_lib.Loader(sources, sharding=sharding, seed=3, start_step=start_step) as loader:
    return [next(loader) for _ in range(count)], loader


def test_loader_yields_global_arrays_sharded_over_the_devices(demo_sources, batch_sharding):
  assert len(jax.devices()) == 8
  items, loader = _take(demo_sources, batch_sharding, 0, 4)
  # 48 images / 8 = 6 steps; 40 clips x 0.5 / 2 clips per step = 10 steps.
  assert loader.steps_per_epoch == 16
  assert loader.steps_per_source == {"images": 6, "videos": 10}
  assert [step for step, _, _ in items] == [0, 1, 2, 3]
  for _, name, batch in items:
    assert set(batch) == {"pixels", "mask", "keep_idx", "label", "valid"}
    for value in batch.values():
      assert isinstance(value, jax.Array) and value.sharding == batch_sharding
      assert value.shape[0] == 8 and len(value.addressable_shards) == 8
      assert {shard.data.shape[0] for shard in value.addressable_shards} == {1}
    expected_pixels = (8, 32, 32, 3) if name == "images" else (8, 4, 32, 32, 3)
    assert batch["pixels"].shape == expected_pixels and batch["pixels"].dtype == np.uint8
  assert loader.last_wait_seconds >= 0.0
  assert all(np.asarray(batch["valid"]).all() for _, _, batch in items)
  assert loader.take_corrupt_record_ids() == []


def test_loader_follows_the_schedule_across_epochs(demo_sources, batch_sharding):
  items, _ = _take(demo_sources, batch_sharding, 0, 20)
  expected = (epoch_schedule({"images": 6, "videos": 10}, 3, 0)
              + epoch_schedule({"images": 6, "videos": 10}, 3, 1)[:4])
  assert [name for _, name, _ in items] == expected
  assert [step for step, _, _ in items] == list(range(20))


@pytest.mark.parametrize("start_step", [5, 15])  # inside the first epoch; just before the next
def test_loader_resumes_exactly_at_any_step(demo_sources, batch_sharding, start_step):
  uninterrupted, _ = _take(demo_sources, batch_sharding, 0, start_step + 3)
  resumed, _ = _take(demo_sources, batch_sharding, start_step, 3)
  for (step_a, name_a, batch_a), (step_b, name_b, batch_b) in zip(uninterrupted[start_step:],
                                                                  resumed):
    assert (step_a, name_a) == (step_b, name_b)
    for key in batch_a:
      np.testing.assert_array_equal(np.asarray(batch_a[key]), np.asarray(batch_b[key]))


class _BrokenSource:
  steps_per_epoch = 3

  def batches(self, epoch, skip_batches=0):
    raise OSError(f"disk gone while opening epoch {epoch}")


def test_producer_errors_reach_the_consumer(batch_sharding):
  loader = loader_lib.Loader({"broken": _BrokenSource()}, sharding=batch_sharding, seed=0)
  with pytest.raises(OSError, match="disk gone"):
    next(loader)
  with pytest.raises(OSError, match="disk gone"):
    next(loader)
  loader.close()


class _StuckSource:
  """A source whose reads never return (a hung file system) until `release` is set."""
  steps_per_epoch = 3

  def __init__(self):
    self.release = threading.Event()

  def batches(self, epoch, skip_batches=0):
    self.release.wait()
    return iter(())


def test_stop_ends_a_wait_on_a_stuck_producer(batch_sharding):
  source = _StuckSource()
  loader = loader_lib.Loader({"stuck": source}, sharding=batch_sharding, seed=0)
  stopper = threading.Timer(0.5, loader.stop)  # as the preemption handler would
  stopper.start()
  started = time.monotonic()
  with pytest.raises(StopIteration):
    next(loader)
  assert time.monotonic() - started < 5.0
  source.release.set()
  loader.close()
  assert not loader._thread.is_alive()


def test_close_stops_the_background_thread(demo_sources, batch_sharding):
  loader = loader_lib.Loader(demo_sources, sharding=batch_sharding, seed=0, prefetch=1)
  next(loader)
  loader.close()
  assert not loader._thread.is_alive()
