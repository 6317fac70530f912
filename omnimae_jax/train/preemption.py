"""SIGTERM (a preempted VM, `scancel`, the end of an allocation) or Ctrl-C -> save a checkpoint
and exit. A second Ctrl-C aborts at once (KeyboardInterrupt), without saving.

One process: a Python signal handler notes the signal and the loop stops after the next step.

Several processes (jax.distributed is up): signals reach the hosts at different moments, yet a
save is collective, so they must agree on the step. JAX's preemption service does that: its
own SIGTERM handler (installed by jax.distributed.initialize) tells every host, and
`reached_preemption_sync_point(step)` turns True on all of them at the same step. Python must
then leave SIGTERM alone (a Python handler would replace JAX's); Ctrl-C becomes a SIGTERM to
this process, so that it goes through the same agreement.
"""
import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionHandler:

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.signalled = False  # this process got a signal (single process: what stops the loop)
    self.stopping = False  # every process agreed to stop
    self._on_signal = []
    signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
    self._previous = {signum: signal.signal(signum, self._handle) for signum in signals}

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
    if self.multi_process:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler starts the hosts' agreement
      return
    for callback in self._on_signal:
      callback()

  def should_stop(self, done_steps: int) -> bool:
    """Whether to save and stop after `done_steps` steps; the same answer on every process.

    With several processes this must be called after every step (JAX's sync point counts on
    seeing each step id), and by every process.
    """
    if not self.multi_process:
      self.stopping = self.signalled
    elif multihost_utils.reached_preemption_sync_point(done_steps):
      self.stopping = True
    return self.stopping

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
