"""Which source each step of an epoch reads (SPEC §3.4: one dataset per step, "use_one").

The per-epoch step list is every source name repeated by its steps per epoch, shuffled from
(seed, epoch) with NumPy: a pure function of its arguments, so every host computes the same list
and every global batch is homogeneous.
"""
import numpy as np


def epoch_schedule(steps_per_source, seed, epoch):
  """list[str] of length sum(steps_per_source.values()): the source of each step of `epoch`."""
  # Sorted names: the order of the dict must not change the schedule.
  names = sorted(steps_per_source)
  steps = [name for name in names for _ in range(int(steps_per_source[name]))]
  rng = np.random.default_rng([int(seed), int(epoch)])
  order = rng.permutation(len(steps))
  return [steps[i] for i in order]


def consumed_batches(schedule, position):
  """{source: batches of it among the first `position` steps}: where each source resumes."""
  consumed = {name: 0 for name in set(schedule)}
  for name in schedule[:position]:
    consumed[name] += 1
  return consumed
