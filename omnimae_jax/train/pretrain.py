"""The pretraining loop, top to bottom: mesh, data, model, state, resume, steps, logging, saves."""
import dataclasses
import os
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
from omnimae_jax.train.preemption import PreemptionHandler


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint was left as it was."""


class ConfigError(ValueError):
  """A configuration the run cannot start with (raised before anything compiles)."""


def say(stream, text):
  """Important lines go to the log and, on process 0, to the console."""
  logging.info(text)
  if stream is not None and jax.process_index() == 0:
    print(text, file=stream, flush=True)


def validate(config, mesh):
  """Checks that need no data and no compilation; each error names the field."""
  sharding.logical_rules(config.sharding)  # raises on an unknown strategy
  if not config.data.sources:
    raise ValueError("data.sources is empty; configure at least one source")
  data_parallel = sharding.data_parallel_size(mesh)
  for name, source in config.data.sources.items():
    if source.batch_size % data_parallel:
      raise ValueError(f"data.sources.{name}.batch_size={source.batch_size} is not divisible by "
                       f"the data-parallel size {data_parallel} (mesh {dict(mesh.shape)})")
    if source.modality == "video" and source.num_frames > config.model.num_frames:
      raise ValueError(f"data.sources.{name}.num_frames={source.num_frames} exceeds "
                       f"model.num_frames={config.model.num_frames} (the position table's length)")
    if source.image_size != config.model.img_size:
      logging.warning("data.sources.%s.image_size=%d differs from model.img_size=%d: the "
                      "position table is resized", name, source.image_size, config.model.img_size)
  for field in ("log_every_steps", "checkpoint.every_steps", "optim.accum_steps"):
    value = config
    for key in field.split("."):
      value = value[key]
    if value < 1:
      raise ValueError(f"{field}={value}; must be >= 1")
  # Each process feeds its own samples: a 'model' axis spanning processes would hand one data
  # shard two different halves of a batch.
  if jax.process_count() > 1 and jax.local_device_count() % mesh.shape[sharding.MODEL]:
    raise ValueError(f"mesh: the 'model' axis ({mesh.shape[sharding.MODEL]}) must fit within one "
                     f"process's {jax.local_device_count()} devices")


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


def compile_steps(config, model, tx, schedule, sources, mesh, shardings):
  """Per source: the jitted train step, the predict function for pictures, FLOPs per step."""
  step_fns, predict_fns, step_flops = {}, {}, {}
  for name, source in sources.items():
    remat = source.modality == "video" and config.model.remat_video
    source_model = model.clone(config=dataclasses.replace(model.config, remat=remat))
    step_fns[name] = steps_lib.make_pretrain_step(
        source_model, tx, schedule, mesh=mesh, strategy=config.sharding,
        state_shardings=shardings, norm_pix=config.loss.norm_pix, seed=config.seed,
        accum_steps=config.optim.accum_steps)
    predict_fns[name] = steps_lib.make_predict(model, mesh=mesh, strategy=config.sharding,
                                               param_shardings=shardings["params"])
    step_flops[name] = flops.train_step_flops(
        flops.pretrain_forward_flops(model.config, int(np.prod(source.grid)), source.num_visible),
        source.cfg.batch_size)
  return step_fns, predict_fns, step_flops


def restore_or_create(checkpoints, model, tx, mesh, config):
  """The latest state of the workdir on this mesh, or a fresh one; and its shardings."""
  abstract, shardings = state_lib.state_shardings(model, tx, mesh, config.sharding)
  try:
    state = checkpoints.restore(state_lib.with_shardings(abstract, shardings))
  except ValueError as error:  # orbax: the saved tree does not match this optimizer's
    raise checkpoint_lib.CheckpointError(
        f"{checkpoints.directory}: the saved train state does not fit this config's optimizer "
        f"(did optim.grad_clip_norm or optim.accum_steps change?): {error}") from error
  if state is None:
    state = state_lib.create_state(model, tx, shardings, config.seed)
  return state, shardings


def train(config, workdir: str, *, stream=sys.stdout, devices=None, stop_at_step=None) -> Dict:
  """Pretrains; returns a summary (final step and state, losses per modality, paths).

  devices: the devices of the mesh (default all). stop_at_step: save and return once this many
  steps are done (a time-boxed session; rerunning resumes).
  """
  workdir = os.path.abspath(workdir)
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
    validate(config, mesh)
    model = state_lib.build_model(config.model)
    sources = open_sources(config, model.config.patch_size)
    total_steps = config.total_steps or config.epochs * sum(
        s.steps_per_epoch for s in sources.values())
    optimizer_steps = max(total_steps // config.optim.accum_steps, 1)
    tx = optim.make_optimizer(config.optim, optimizer_steps)
    schedule = optim.learning_rate_schedule(config.optim, optimizer_steps)
    preemption = PreemptionHandler(config.checkpoint.preemption_sync_steps)
  except ValueError as error:
    raise ConfigError(str(error)) from error
  last_step = min(total_steps, stop_at_step or total_steps)
  say(stream, "Effective recipe:\n" + recipe_summary(config, sources, total_steps))

  checkpoints = checkpoint_lib.TrainCheckpointer(
      workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  checkpoints.check_model(model)  # before anything compiles
  state, shardings = restore_or_create(checkpoints, model, tx, mesh, config)
  start_step = int(state["step"])
  say(stream, f"{'Resumed' if start_step else 'Starting'} at step {start_step} in {workdir}; "
             f"{state_lib.count_params(state['params']):,} parameters on {mesh.devices.size} "
             f"device(s)")
  summary = {"step": start_step, "total_steps": total_steps, "losses": {}, "first_losses": {},
             "state": state, "workdir": workdir, "preempted": False,
             "checkpoints": checkpoints.directory,
             "metrics": os.path.join(workdir, metrics_lib.METRICS_FILE),
             "reconstructions": os.path.join(workdir, "reconstructions")}
  if start_step >= last_step:
    checkpoints.close()
    preemption.restore()
    return summary

  step_fns, predict_fns, step_flops = compile_steps(config, model, tx, schedule, sources, mesh,
                                                    shardings)
  peak = flops.peak_flops_per_device(config.peak_flops_per_device)
  writer = metrics_lib.MetricsWriter(workdir)
  interval = metrics_lib.Interval(start_step, total_steps,
                                  peak * mesh.devices.size if peak else None)
  loader = loader_lib.Loader(sources, sharding=sharding.batch_sharding(mesh), seed=config.seed,
                             start_step=start_step, prefetch=config.data.prefetch)
  first_losses, last_losses = summary["first_losses"], summary["losses"]

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

  pending, latest_batches = None, {}
  try:
    for step, name, batch in loader:
      state, step_metrics = step_fns[name](state, batch)
      if pending is not None:
        finish(pending)
      pending = StepRecord(step, name, step_metrics, loader.last_wait_seconds, step_flops[name],
                           sources[name].cfg.batch_size)
      latest_batches[name] = batch
      done = step + 1
      if config.recon_every_steps and done % config.recon_every_steps == 0:
        for source_name, source_batch in latest_batches.items():  # one picture per modality
          write_reconstruction(workdir, writer, done, source_name,
                               predict_fns[source_name](state["params"], source_batch),
                               model.config, config.loss.norm_pix)
      preempted = preemption.should_stop(done)
      if done % config.checkpoint.every_steps == 0 or done >= last_step or preempted:
        finish(pending)  # never save a state whose loss was not finite
        pending = None
        checkpoints.save(done, state, model)
      if preempted:
        say(stream, f"Preempted: saved step {done}; rerun the same command to resume")
        break
      if done >= last_step:
        break
    if pending is not None:
      finish(pending)
  finally:
    loader.close()
    checkpoints.close()
    writer.close()
    preemption.restore()
  summary.update(step=int(state["step"]), state=state, preempted=preemption.stopping)
  return summary


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
