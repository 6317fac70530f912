"""The pretraining loop, top to bottom: mesh, data, model, state, resume, steps, logging, saves."""
import dataclasses
import os
import signal
import sys
import time
from typing import Dict

import jax
import numpy as np
from absl import logging

from omnimae_jax.data import loader as loader_lib
from omnimae_jax.data import pipeline
from omnimae_jax.train import checkpoint as checkpoint_lib
from omnimae_jax.train import flops, metrics as metrics_lib, optim, sharding, state as state_lib
from omnimae_jax.train import steps as steps_lib


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint was left as it was."""


class ConfigError(ValueError):
  """A configuration the run cannot start with (raised before anything compiles)."""


class PreemptionHandler:
  """SIGTERM (a preempted VM, `scancel`, `kill`) asks the loop to save and exit at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and exiting after this step")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def say(stream, text):
  """Important lines go to the log and, on process 0, to the console."""
  logging.info(text)
  if stream is not None and jax.process_index() == 0:
    print(text, file=stream, flush=True)


def validate(config, mesh):
  """Checks that need no data and no compilation; each error names the field."""
  sharding.logical_rules(config.sharding)  # raises on an unknown strategy
  data_parallel = sharding.data_parallel_size(mesh)
  for name, source in config.data.sources.items():
    if source.batch_size % data_parallel:
      raise ValueError(f"data.sources.{name}.batch_size={source.batch_size} is not divisible by "
                       f"the data-parallel size {data_parallel} (mesh {dict(mesh.shape)})")
  if config.optim.accum_steps < 1:
    raise ValueError(f"optim.accum_steps={config.optim.accum_steps}; must be >= 1")
  if not config.data.sources:
    raise ValueError("data.sources is empty; configure at least one source")


def open_sources(config, patch_size):
  return {name: pipeline.make_source(name, source, data_dir=os.path.expanduser(
      config.data.data_dir), patch_size=patch_size, seed=config.seed)
          for name, source in config.data.sources.items()}


def recipe_summary(config, sources, total_steps) -> str:
  per_epoch = {name: s.steps_per_epoch for name, s in sources.items()}
  steps_per_epoch = sum(per_epoch.values())
  lines = [f"model {config.model.size} ({config.model.compute_dtype}), {total_steps} steps = "
           f"{total_steps / steps_per_epoch:.2f} epochs of {steps_per_epoch} steps"]
  for name, source in sources.items():
    cfg = source.cfg
    lines.append(
        f"  {name}: {cfg.tfds_name}[{cfg.split}] {source.num_examples} examples, "
        f"{per_epoch[name]} steps/epoch ({per_epoch[name] / steps_per_epoch:.1%} of steps), "
        f"batch {cfg.batch_size} = {cfg.batch_size // cfg.num_replicas} x {cfg.num_replicas} "
        f"replicas, {cfg.mask_kind} mask {cfg.mask_ratio:.0%} -> {source.num_visible} visible "
        f"of {int(np.prod(source.grid))} tokens")
  o = config.optim
  lines.append(f"  AdamW lr {o.lr} betas ({o.b1}, {o.b2}) wd {o.weight_decay}, warmup "
               f"{o.warmup_fraction:.0%} then {o.schedule}, clip {o.grad_clip_norm or 'none'}, "
               f"accum {o.accum_steps}; mesh {tuple(map(tuple, config.mesh))} {config.sharding}")
  return "\n".join(lines)


@dataclasses.dataclass
class StepRecord:
  """A dispatched step whose metrics are fetched one step late (keeps the device busy)."""
  step: int
  source: str
  metrics: Dict
  data_wait: float
  flops: float
  batch_size: int


def train(config, workdir: str, *, stream=sys.stdout, devices=None, stop_at_step=None) -> Dict:
  """Pretrains; returns a summary (final step and state, last losses per modality, paths).

  devices: the devices of the mesh (default all). stop_at_step: save and return once this many
  steps are done (a time-boxed session; rerunning resumes).
  """
  workdir = os.path.abspath(workdir)
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
    validate(config, mesh)
    model = state_lib.build_model(config.model)
    sources = open_sources(config, model.config.patch_size)
  except ValueError as error:
    raise ConfigError(str(error)) from error
  steps_per_epoch = sum(s.steps_per_epoch for s in sources.values())
  total_steps = config.total_steps or config.epochs * steps_per_epoch
  accum = config.optim.accum_steps
  tx = optim.make_optimizer(config.optim, total_steps // accum)
  schedule = optim.learning_rate_schedule(config.optim, max(total_steps // accum, 1))
  say(stream, "Effective recipe:\n" + recipe_summary(config, sources, total_steps))

  checkpoints = checkpoint_lib.TrainCheckpointer(
      workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  checkpoints.check_model(model)  # before anything compiles
  abstract, shardings = state_lib.state_shardings(model, tx, mesh, config.sharding)
  state = checkpoints.restore(state_lib.with_shardings(abstract, shardings))
  if state is None:
    state = state_lib.create_state(model, tx, shardings, config.seed)
  start_step = int(state["step"])
  say(stream, f"{'Resumed' if start_step else 'Starting'} at step {start_step} in {workdir}; "
             f"{state_lib.count_params(state['params']):,} parameters on {jax.device_count()} "
             f"device(s)")

  step_fns, predict_fns, step_flops = {}, {}, {}
  for name, source in sources.items():
    remat = source.modality == "video" and config.model.remat_video
    source_model = model.clone(config=dataclasses.replace(model.config, remat=remat))
    step_fns[name] = steps_lib.make_pretrain_step(
        source_model, tx, schedule, mesh=mesh, strategy=config.sharding,
        state_shardings=shardings, norm_pix=config.loss.norm_pix, seed=config.seed,
        accum_steps=accum)
    predict_fns[name] = steps_lib.make_predict(model, mesh=mesh, strategy=config.sharding,
                                               param_shardings=shardings["params"])
    step_flops[name] = flops.train_step_flops(
        flops.pretrain_forward_flops(model.config, int(np.prod(source.grid)), source.num_visible),
        source.cfg.batch_size)
  peak = flops.peak_flops_per_device(config.peak_flops_per_device)

  writer = metrics_lib.MetricsWriter(workdir)
  interval = metrics_lib.Interval(start_step, total_steps,
                                  peak * jax.device_count() if peak else None)
  preemption = PreemptionHandler()
  first_losses, last_losses, pending = {}, {}, None
  loader = loader_lib.Loader(sources, sharding=sharding.batch_sharding(mesh), seed=config.seed,
                             start_step=start_step, prefetch=config.data.prefetch)

  def finish(record: StepRecord):
    """Fetches a step's metrics, stops on a non-finite loss, logs every log_every_steps."""
    values = jax.device_get(record.metrics)
    loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):  # either poisons the parameters
      raise NonFiniteLossError(
          f"non-finite loss ({loss}, gradient norm {grad_norm}) at step {record.step + 1} on "
          f"{record.source!r}; the run stopped without saving, the last good checkpoint in "
          f"{checkpoints.directory} (step {checkpoints.latest_step()}) is intact")
    first_losses.setdefault(record.source, loss)
    last_losses[record.source] = loss
    interval.add(record.source, loss, record.batch_size, record.flops, record.data_wait)
    done = record.step + 1
    # The session's first step is logged too: it shows the starting loss once compiled.
    if done % config.log_every_steps and done not in (total_steps, start_step + 1):
      return
    entry = {"modality": record.source, "loss": loss, "lr": float(values["lr"]),
             "grad_norm": grad_norm, **interval.summary(done)}
    writer.write(done, entry)
    metrics_lib.log_progress(done, total_steps, entry, stream)

  try:
    step = start_step
    for step, name, batch in loader:
      if step >= total_steps:
        break
      state, step_metrics = step_fns[name](state, batch)
      if pending is not None:
        finish(pending)
      pending = StepRecord(step, name, step_metrics, loader.last_wait_seconds, step_flops[name],
                           sources[name].cfg.batch_size)
      done = step + 1
      if config.recon_every_steps and done % config.recon_every_steps == 0:
        write_reconstruction(workdir, writer, done, name, predict_fns[name](state["params"], batch),
                             model.config, config.loss.norm_pix)
      stop_now = done == stop_at_step
      save_now = done % config.checkpoint.every_steps == 0 or done in (total_steps, stop_at_step)
      if save_now or preemption.requested:
        finish(pending)  # never save a state whose loss was not finite
        pending = None
        checkpoints.save(done, state, model)
      if preemption.requested:
        say(stream, f"Preempted: saved step {done}; rerun the same command to resume")
        break
      if stop_now:
        break
    if pending is not None:
      finish(pending)
  finally:
    loader.close()
    checkpoints.close()
    writer.close()
    preemption.restore()
  return {"step": int(state["step"]), "total_steps": total_steps, "losses": last_losses,
          "first_losses": first_losses,
          "state": state,
          "workdir": workdir, "preempted": preemption.requested,
          "checkpoints": checkpoints.directory, "metrics": writer.path,
          "reconstructions": os.path.join(workdir, "reconstructions")}


def write_reconstruction(workdir, writer, step, source, predicted, model_cfg, norm_pix):
  """original | masked | reconstruction for the batch's first sample: files and TensorBoard."""
  if jax.process_index() != 0:
    return
  from omnimae_jax import visualize  # Pillow, only when pictures are due

  pixels, mask, pred = (np.asarray(x) for x in jax.device_get(predicted))
  out_dir = os.path.join(workdir, "reconstructions")
  os.makedirs(out_dir, exist_ok=True)
  prefix = os.path.join(out_dir, f"step{step:08d}_{source}")
  visualize.write_reconstruction(prefix, pixels, mask, pred, model_cfg.patch_size,
                                 norm_pix=norm_pix)
  frames = visualize.comparison_frames(pixels, mask, pred, model_cfg.patch_size, norm_pix=norm_pix)
  writer.write_image(step, f"reconstruction/{source}", np.concatenate(list(frames[:8]), axis=0))
