"""Metrics on process 0: `metrics.jsonl`, TensorBoard events and a progress line with ETA."""
import json
import os
import time
from typing import Dict, Optional

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"


def _tf_summary():
  from omnimae_jax.data import _tf  # hides GPUs from TF before anything else touches it

  return _tf.tf.summary


class MetricsWriter:
  """Appends one JSON object per logged step, mirrors scalars and images to TensorBoard.

  Only process 0 writes; on the others every call is a no-op. Appending (never truncating) keeps
  the history of a resumed run; entries after the resumed step are duplicates the reader can drop
  by step.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._summary = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self.path, "a")
      if tensorboard:
        summary = _tf_summary()
        self._summary = summary
        self._writer = summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._summary is not None:
      with self._writer.as_default(step=int(step)):
        for key, value in record.items():
          if isinstance(value, (int, float)) and key != "step" and value is not None:
            tag = f"{record['modality']}/{key}" if key == "loss" and "modality" in record else key
            self._summary.scalar(tag, value)

  def write_image(self, step: int, tag: str, image: np.ndarray):
    """image: uint8 [H, W, 3]."""
    if self.enabled and self._summary is not None:
      with self._writer.as_default(step=int(step)):
        self._summary.image(tag, image[None], max_outputs=1)

  def close(self):
    if self.enabled:
      self._file.close()
      if self._summary is not None:
        self._writer.flush()


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "item"):
    value = np.asarray(value).item()
  if isinstance(value, float) and not np.isfinite(value):
    return None if np.isnan(value) else value
  return value


class Progress:
  """Throughput and ETA from the wall time between logged steps."""

  def __init__(self, start_step: int, total_steps: int):
    self.total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def update(self, step: int) -> Dict[str, float]:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    step_time = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    return {"step_time": step_time, "eta_hours": step_time * (self.total_steps - step) / 3600}


def progress_line(step: int, total: int, metrics: Dict) -> str:
  mfu = metrics.get("mfu")
  return (f"step {step}/{total} [{metrics['modality']}] loss {metrics['loss']:.4f} "
          f"lr {metrics['lr']:.2e} {metrics['samples_per_sec']:.1f} samples/s "
          f"data wait {metrics['data_wait_time'] * 1e3:.0f} ms "
          + (f"MFU {mfu:.1%} " if mfu is not None else "")
          + f"ETA {metrics['eta_hours']:.2f} h")


def log_progress(step: int, total: int, metrics: Dict, stream: Optional[object] = None):
  line = progress_line(step, total, metrics)
  logging.info(line)
  if stream is not None and jax.process_index() == 0:
    print(line, file=stream, flush=True)
