"""All sources -> (step, source name, global batch), prefetched in a background thread.

A global step maps to (epoch, position) with steps_per_epoch = sum of the sources' steps per
epoch; the epoch's schedule up to `position` says how many batches of each source were consumed,
and each source's dataset resumes right after them. So starting at any step yields exactly what
an uninterrupted run would have yielded from that step on.

Batch values are global jax.Arrays made from this process's local batch with
jax.make_array_from_process_local_data(sharding, local) — `sharding` splits the leading (batch)
axis over the mesh's data axes, so the same object serves every key and every process.
"""
import queue
import threading
import time

import jax

from omnimae_jax.data import schedule as schedule_lib

_POLL_SECONDS = 0.1


class _ProducerFailure:
  def __init__(self, error):
    self.error = error


class Loader:
  """Iterate to get (step, source_name, batch) forever (the trainer decides when to stop)."""

  def __init__(self, sources, *, sharding, seed, start_step=0, prefetch=2):
    if not sources:
      raise ValueError("Loader needs at least one data source")
    if prefetch < 1:
      raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    self._sources = dict(sources)
    self._sharding = sharding
    self._seed = int(seed)
    self._steps_per_source = {name: source.steps_per_epoch
                              for name, source in self._sources.items()}
    self._queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self.last_wait_seconds = 0.0  # how long the consumer waited for the latest batch
    self.total_wait_seconds = 0.0
    self._thread = threading.Thread(target=self._produce, args=(int(start_step),),
                                    name="omnimae-data-loader", daemon=True)
    self._thread.start()

  @property
  def steps_per_epoch(self):
    return sum(self._steps_per_source.values())

  @property
  def steps_per_source(self):
    """{source name: steps per epoch}."""
    return dict(self._steps_per_source)

  @property
  def corrupt_records(self):
    """{source name: records skipped so far because they could not be decoded}."""
    return {name: source.corrupt_records for name, source in self._sources.items()}

  def epoch_and_position(self, step):
    return divmod(step, self.steps_per_epoch)

  def __iter__(self):
    return self

  def __next__(self):
    started = time.perf_counter()
    item = self._queue.get()
    self.last_wait_seconds = time.perf_counter() - started
    self.total_wait_seconds += self.last_wait_seconds
    if isinstance(item, _ProducerFailure):
      self._queue.put(item)  # keep failing on later calls instead of blocking forever
      raise item.error
    return item

  def close(self):
    """Stops the background thread and drops prefetched batches."""
    self._stop.set()
    while self._thread.is_alive():
      self._drain()
      self._thread.join(timeout=_POLL_SECONDS)
    self._drain()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _drain(self):
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def _put(self, item):
    """Blocks while the queue is full; gives up when the loader is closed."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self, start_step):
    try:
      step = start_step
      while not self._stop.is_set():
        step = self._produce_rest_of_epoch(step)
    except Exception as error:  # handed to the consumer, which re-raises it  # noqa: BLE001
      self._put(_ProducerFailure(error))

  def _produce_rest_of_epoch(self, step):
    """Produces from `step` to the end of its epoch; returns the first step of the next one."""
    epoch, position = self.epoch_and_position(step)
    order = schedule_lib.epoch_schedule(self._steps_per_source, self._seed, epoch)
    consumed = schedule_lib.consumed_batches(order, position)
    iterators = {
        name: source.dataset(epoch, skip_batches=consumed.get(name, 0)).as_numpy_iterator()
        for name, source in self._sources.items()
        if consumed.get(name, 0) < source.steps_per_epoch}
    for name in order[position:]:
      local_batch = next(iterators[name], None)
      if local_batch is None:
        raise RuntimeError(
            f"data source {name!r} ran out of batches in epoch {epoch} at step {step}; more "
            f"records were undecodable ({self._sources[name].corrupt_records} so far) than "
            "the pipeline reads in reserve")
      batch = {key: jax.make_array_from_process_local_data(self._sharding, value)
               for key, value in local_batch.items()}
      if not self._put((step, name, batch)):
        return step
      step += 1
    return step
