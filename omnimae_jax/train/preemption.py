"""SIGTERM (a preempted VM, `scancel`, the end of an allocation) or Ctrl-C -> save a checkpoint
and exit. A second Ctrl-C aborts at once (KeyboardInterrupt), without saving.

With several processes, signals reach the hosts at different moments, yet a save is collective:
every `sync_every_steps` steps the processes agree (any process signalled -> all stop at that
step), so they all save the same step.
"""
import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class PreemptionHandler:

  def __init__(self, sync_every_steps: int = 10):
    if sync_every_steps < 1:
      raise ValueError(f"checkpoint.preemption_sync_steps={sync_every_steps}; must be >= 1")
    self.sync_every_steps = sync_every_steps
    self.signalled = False  # this process got SIGTERM
    self.stopping = False  # every process agreed to stop
    self._on_signal = []
    self._previous = {signum: signal.signal(signum, self._handle)
                      for signum in (signal.SIGTERM, signal.SIGINT)}

  def on_signal(self, callback):
    """Calls `callback()` when a signal arrives (e.g. to stop a data loader that is waiting)."""
    self._on_signal.append(callback)

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signalled:
      raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
    logging.warning("%s received: saving a checkpoint and exiting", signal.Signals(signum).name)
    if signum == signal.SIGINT and jax.process_index() == 0:
      print("Ctrl-C: saving a checkpoint at the next step (Ctrl-C again to abort without saving)",
            flush=True)
    self.signalled = True
    for callback in self._on_signal:
      callback()

  def should_stop(self, done_steps: int) -> bool:
    """Whether to save and stop after `done_steps` steps; the same answer on every process."""
    if jax.process_count() == 1:
      self.stopping = self.signalled
    elif done_steps % self.sync_every_steps == 0:
      flags = multihost_utils.process_allgather(np.int32(self.signalled))
      self.stopping = bool(np.max(flags))
    return self.stopping

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
