"""Metrics on process 0: `metrics.jsonl`, TensorBoard events and a progress line with ETA."""
import json
import os
import time
from typing import Dict, List, Optional

import jax
import numpy as np
from absl import logging

from omnimae_jax import paths

METRICS_FILE = "metrics.jsonl"


def _tf_module():
  from omnimae_jax.data import _tf  # hides GPUs from TF before anything else touches it

  return _tf.tf


def _tf_summary():
  return _tf_module().summary


class MetricsWriter:
  """Writes one JSON object per logged step and mirrors scalars and images to TensorBoard.

  Only process 0 writes; on the others every call is a no-op. A run resumed at step k first
  drops every entry past k that a killed session wrote (in metrics.jsonl and in the TensorBoard
  event files, each rewritten atomically), so the history holds one value per step.
  """

  def __init__(self, workdir, resume_step: int = 0, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    workdir = paths.workdir_path(workdir)  # local or gs://
    self.path = workdir / METRICS_FILE
    self._summary = None
    if self.enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      tensorboard_dir = workdir / "tensorboard"
      dropped = truncate_jsonl(self.path, resume_step)
      dropped += truncate_event_files(tensorboard_dir, resume_step) if tensorboard else 0
      if dropped:
        logging.warning("Dropped %d metric entries past step %d, written before the run was "
                        "interrupted", dropped, resume_step)
      # On gs://, TensorFlow's file system (epath's backend) uploads the whole file at each
      # flush: cloud storage has no append, so every flush replaces the object.
      self._file = self.path.open("a")
      if tensorboard:
        summary = _tf_summary()
        self._summary = summary
        self._writer = summary.create_file_writer(tf_path(tensorboard_dir))

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
            self._summary.scalar(key, value)

  def write_encoded_image(self, step: int, tag: str, encoded: bytes, width: int, height: int,
                          description: str = ""):
    """An already encoded PNG, or an animated GIF, as a TensorBoard image.

    `summary.image` would re-encode frames as PNG, one still per frame. The image plugin instead
    serves the stored bytes with their own MIME type, so a GIF written as they are plays in the
    browser. The record is the one `summary.image` writes: [width, height, bytes].
    """
    if self.enabled and self._summary is not None:
      from tensorboard.plugins.image import metadata  # noqa: PLC0415  (a dependency of TF)

      tensor = _tf_module().constant([str(width).encode(), str(height).encode(), encoded])
      with self._writer.as_default(step=int(step)):
        self._summary.write(tag, tensor, metadata=metadata.create_summary_metadata(
            display_name=None, description=description))

  def close(self):
    if self.enabled:
      self._file.close()
      if self._summary is not None:
        self._writer.flush()


def tf_path(path) -> str:
  """The string TensorFlow's file system takes for an epath path (it reads gs:// itself)."""
  return os.fspath(path)


def read_lines(path) -> List[str]:
  path = paths.workdir_path(path)
  return path.read_text().splitlines() if path.exists() else []


def _text(lines) -> str:
  return "".join(line + "\n" for line in lines)


def _replace_atomically(path, write_fn):
  """Writes a sibling temporary file with `write_fn(tmp_path)`, then renames it over `path`
  (on GCS, a rename is a copy: readers still see either the old or the new whole file)."""
  path = paths.workdir_path(path)
  tmp = path.parent / (path.name + ".tmp-omnimae")
  try:
    write_fn(tmp)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def truncate_jsonl(path: str, last_step: int) -> int:
  """Keeps the entries of a metrics.jsonl up to `last_step`; returns how many were dropped.

  A line cut short by a kill is dropped too.
  """
  lines = read_lines(path)
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  dropped = len(lines) - len(kept)
  if dropped:
    _replace_atomically(path, lambda tmp: tmp.write_text(_text(kept)))
  return dropped


def truncate_event_files(directory: str, last_step: int) -> int:
  """Drops TensorBoard events past `last_step` from every event file in `directory`.

  TensorBoard would otherwise draw both the killed session's values and the resumed ones for the
  same steps. A record cut short by a kill ends the file's readable part.
  """
  directory = paths.workdir_path(directory)
  if not directory.is_dir():
    return 0
  tf = _tf_module()
  from tensorboard.compat.proto import event_pb2  # noqa: PLC0415  (TensorBoard is a dependency)

  dropped = 0
  for path in sorted(directory.iterdir()):
    if "tfevents" not in path.name or not path.is_file():
      continue
    records, readable = [], True
    try:
      for record in tf.data.TFRecordDataset(tf_path(path)).as_numpy_iterator():
        records.append(record)
    except tf.errors.DataLossError:
      readable = False
    kept = [r for r in records if event_pb2.Event.FromString(r).step <= last_step]
    if len(kept) == len(records) and readable:
      continue
    dropped += len(records) - len(kept)

    def write(tmp, kept=kept):
      with tf.io.TFRecordWriter(tf_path(tmp)) as writer:
        for record in kept:
          writer.write(record)
    _replace_atomically(path, write)
  return dropped


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "item"):
    value = np.asarray(value).item()
  if isinstance(value, float) and not np.isfinite(value):
    return None if np.isnan(value) else value
  return value


class Interval:
  """Accumulates the steps between two log lines: losses per modality, samples, FLOPs, data wait.

  Throughput and MFU come from the wall time of the whole interval, so they include everything
  the loop does (host work, saves), not just device time.
  """

  def __init__(self, start_step: int, total_steps: int, peak_flops_total=None):
    self.total_steps = total_steps
    self.peak_flops_total = peak_flops_total
    self._last_step, self._last_time = start_step, time.perf_counter()
    self._reset()

  def _reset(self):
    self.losses, self.samples, self.flops, self.data_wait = {}, 0, 0.0, 0.0
    self.excluded = 0.0

  def exclude(self, seconds: float):
    """Leaves time that is not training (compiling, evaluating) out of step time and the ETA."""
    self.excluded += seconds

  def add(self, source: str, loss: float, samples: int, flops: float, data_wait: float):
    self.losses.setdefault(source, []).append(loss)
    self.samples += samples
    self.flops += flops
    self.data_wait += data_wait

  def summary(self, step: int) -> Dict:
    """Metrics of the interval that ends after `step` steps; starts the next interval."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds = max(now - self._last_time - self.excluded, 1e-9)
    entry = {f"loss_{name}": float(np.mean(values)) for name, values in self.losses.items()}
    entry.update(
        samples_per_sec=self.samples / seconds, step_time=seconds / steps,
        data_wait_time=self.data_wait / steps,
        mfu=self.flops / seconds / self.peak_flops_total if self.peak_flops_total else None,
        eta_hours=seconds / steps * (self.total_steps - step) / 3600)
    self._last_step, self._last_time = step, now
    self._reset()
    return entry


def format_results(results: Dict) -> str:
  """'top1 71.20% top5 90.10% examples 50000 ...': fractions as percentages."""
  parts = []
  for key, value in results.items():
    if "top" in key:
      parts.append(f"{key} {value:.2%}")
    elif isinstance(value, float):
      parts.append(f"{key} {value:.1f}")
    else:
      parts.append(f"{key} {value}")
  return " ".join(parts)


def progress_line(step: int, total: int, metrics: Dict) -> str:
  """The console line: losses are means over the steps since the previous line (per source),
  throughput and ETA leave out compiling and evaluating."""
  mfu = metrics.get("mfu")
  losses = " ".join(f"{key[5:]} {value:.4f}" for key, value in sorted(metrics.items())
                    if key.startswith("loss_"))
  skipped = sum(value for key, value in metrics.items() if key.startswith("skipped_"))
  return (f"step {step}/{total} mean loss {losses} "
          + (f"(skipped {skipped} corrupt samples) " if skipped else "")
          + f"lr {metrics['lr']:.2e} {metrics['samples_per_sec']:.1f} samples/s "
          f"data wait {metrics['data_wait_time'] * 1e3:.0f} ms "
          + (f"MFU {mfu:.1%} " if mfu is not None else "")
          + f"ETA {metrics['eta_hours']:.2f} h")


def log_progress(step: int, total: int, metrics: Dict, stream: Optional[object] = None):
  line = progress_line(step, total, metrics)
  logging.info(line)
  if stream is not None and jax.process_index() == 0:
    print(line, file=stream, flush=True)
