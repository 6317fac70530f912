"""All sources -> (step, source name, global batch), prefetched in a background thread.

A global step maps to (epoch, position) with steps_per_epoch = sum of the sources' steps per
epoch; the epoch's schedule up to `position` says how many batches of each source were consumed,
and each source's dataset resumes right after them. Corrupt records keep their slot (valid=False),
so starting at any step yields exactly what an uninterrupted run would have yielded from that step
on.

Batch values are global jax.Arrays made from this process's local batch with
jax.make_array_from_process_local_data(sharding, local) — `sharding` splits the leading (batch)
axis over the mesh's data axes, so the same object serves every key and every process.
"""
import queue
import threading
import time

from absl import logging
import jax

from omnimae_jax.data import schedule as schedule_lib

_POLL_SECONDS = 0.1
# A consumer that waited this long for a batch says so (and again after as long once more).
_SLOW_WAIT_WARNING_SECONDS = 300.0
# close() waits this long for the producer; one stuck in a read is left behind (a daemon).
_CLOSE_TIMEOUT_SECONDS = 10.0


class _ProducerFailure:
  def __init__(self, error):
    self.error = error


class Loader:
  """Iterate to get (step, source_name, batch) until `stop()` or `close()` (the trainer decides
  when to stop); an error of the producer thread is raised by `next()`."""

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
    self._corrupt_ids = queue.SimpleQueue()  # (source name, record id), filled by the producer
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

  def epoch_and_position(self, step):
    return divmod(step, self.steps_per_epoch)

  def take_corrupt_record_ids(self):
    """[(source name, TFDS record id)] of the corrupt records logged since the last call (the
    first few per source and epoch; all of them are counted through the batches' `valid`)."""
    taken = []
    while True:
      try:
        taken.append(self._corrupt_ids.get_nowait())
      except queue.Empty:
        return taken

  def __iter__(self):
    return self

  def __next__(self):
    started = time.perf_counter()
    item = self._wait_for_item()
    self.last_wait_seconds = time.perf_counter() - started
    self.total_wait_seconds += self.last_wait_seconds
    if isinstance(item, _ProducerFailure):
      self._queue.put(item)  # keep failing on later calls instead of blocking forever
      raise item.error
    return item

  def stop(self):
    """Ends the iteration: a waiting or later next() raises StopIteration. Only sets a flag, so
    a signal handler (preemption) or another thread may call it."""
    self._stop.set()

  def close(self):
    """Stops the background thread (waiting a bounded time) and drops prefetched batches."""
    self.stop()
    deadline = time.monotonic() + _CLOSE_TIMEOUT_SECONDS
    while self._thread.is_alive() and time.monotonic() < deadline:
      self._drain()
      self._thread.join(timeout=_POLL_SECONDS)
    if self._thread.is_alive():
      logging.warning("the data loader thread is still inside a read after %.0f s; leaving it",
                      _CLOSE_TIMEOUT_SECONDS)
    self._drain()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _wait_for_item(self):
    """The next queued item; polls so that stop() ends a wait on a stuck producer."""
    waited_since_warning = time.monotonic()
    while not self._stop.is_set():
      try:
        return self._queue.get(timeout=_POLL_SECONDS)
      except queue.Empty:
        pass
      if time.monotonic() - waited_since_warning > _SLOW_WAIT_WARNING_SECONDS:
        logging.warning("waited over %.0f s for the next batch: the input pipeline is stalled "
                        "(slow or unreachable storage?)", _SLOW_WAIT_WARNING_SECONDS)
        waited_since_warning = time.monotonic()
    raise StopIteration

  def _drain(self):
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def _put(self, item):
    """Blocks while the queue is full; gives up when the loader is stopped."""
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
        name: source.batches(epoch, skip_batches=consumed.get(name, 0))
        for name, source in self._sources.items()
        if consumed.get(name, 0) < source.steps_per_epoch}
    for name in order[position:]:
      produced = next(iterators[name], None)
      if produced is None:  # every record yields a sample, so this is a bug
        raise RuntimeError(f"data source {name!r} yielded fewer than its "
                           f"{self._steps_per_source[name]} batches in epoch {epoch}")
      local_batch, corrupt_ids = produced
      for record_id in corrupt_ids:
        self._corrupt_ids.put((name, record_id))
      batch = {key: jax.make_array_from_process_local_data(self._sharding, value)
               for key, value in local_batch.items()}
      if not self._put((step, name, batch)):
        return step
      step += 1
    return step
