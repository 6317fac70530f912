"""The training loop of every mode, top to bottom: mesh, data, model, state (the workdir's own
checkpoint, else `init_from`, else scratch), steps, logging, evaluations, saves.

Pretraining and fine-tuning differ only in the entries of `MODES` (the model kind, the objective
inside the jitted step, the FLOP count) and in configuration values.
"""
import dataclasses
import os
import sys
import time
from typing import Callable, Dict

import jax
import numpy as np
from absl import logging

from omnimae_jax import models, paths, pretrained
from omnimae_jax.data import loader as loader_lib
from omnimae_jax.data import pipeline
from omnimae_jax.train import checkpoint as checkpoint_lib
from omnimae_jax.train import evaluators as evaluators_lib
from omnimae_jax.train import flops, metrics as metrics_lib, optim, run_config, sharding
from omnimae_jax.train import state as state_lib
from omnimae_jax.train import steps as steps_lib
from omnimae_jax.train.config_checks import ConfigError, check_config
from omnimae_jax.train.preemption import PreemptionHandler


RECONSTRUCTIONS_DIR = "reconstructions"  # in the workdir


class NonFiniteLossError(RuntimeError):
  """The loss or the updated state became NaN or inf; no such state was saved."""


@dataclasses.dataclass(frozen=True)
class Mode:
  """What a mode changes in the loop: the model kind and, per source, the step's objective and
  the analytic forward FLOPs of one sample."""
  model_kind: str
  objective: Callable  # (config, model, source, mesh) -> objective(params, batch, rng) -> loss
  forward_flops: Callable  # (model config, source) -> FLOPs per sample


def _reconstruction(config, model, source, mesh):
  del source, mesh
  return steps_lib.reconstruction_objective(model, norm_pix=config.loss.norm_pix)


def _pretrain_flops(model_cfg, source):
  return flops.pretrain_forward_flops(model_cfg, int(np.prod(source.grid)), source.num_visible)


def _classification(config, model, source, mesh):
  return steps_lib.classification_objective(
      model, augment=config.augment, num_classes=config.model.num_classes,
      video=source.modality == "video", mesh=mesh)


def _classifier_flops(model_cfg, source):
  return flops.classifier_forward_flops(model_cfg, int(np.prod(source.grid)))


MODES = {
    "pretrain": Mode("pretrain", _reconstruction, _pretrain_flops),
    "finetune": Mode("classifier", _classification, _classifier_flops),
}


def say(stream, text):
  """Important lines go to the log and, on process 0, to the console."""
  logging.info(text)
  if stream is not None and jax.process_index() == 0:
    print(text, file=stream, flush=True)


def validate(config, mesh):
  """Checks that need the mesh but no data and no compilation; each error names the field."""
  if config.mode not in MODES:
    raise ValueError(f"mode={config.mode!r}; the training loop runs {sorted(MODES)}")
  sharding.logical_rules(config.sharding)  # raises on an unknown strategy
  # On the mesh's platform, which the parse-time checks cannot know (no backend before
  # jax.distributed starts) and which may be a compile-only target.
  models.check_attention(state_lib.build_model(config.model).config, sharding.platform(mesh))
  if config.init_from.path and MODES[config.mode].model_kind != "classifier":
    raise ValueError(f"init_from.path={config.init_from.path!r} is for fine-tuning; "
                     f"mode={config.mode!r} starts from scratch or from its workdir")
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
  for field in ("log_every_steps", "checkpoint.every_steps", "checkpoint.keep",
                "optim.accum_steps"):
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
  lines = [f"{config.mode}: model {config.model.size} ({config.model.compute_dtype}), "
           f"{total_steps} steps = {total_steps / steps_per_epoch:.2f} epochs of "
           f"{steps_per_epoch} steps"]
  for name, source in sources.items():
    cfg = source.cfg
    line = (f"  {name}: {cfg.tfds_name}[{cfg.split}] {source.num_examples} examples, "
            f"{per_epoch[name]} steps/epoch ({per_epoch[name] / steps_per_epoch:.1%} of steps), "
            f"batch {cfg.batch_size} = {cfg.batch_size // cfg.num_replicas} x "
            f"{cfg.num_replicas} replicas")
    if source.num_visible:
      line += (f", {cfg.mask_kind} mask {cfg.mask_ratio:.0%} -> {source.num_visible} visible "
               f"of {int(np.prod(source.grid))} tokens")
    lines.append(line)
  o = config.optim
  lines.append(f"  AdamW lr {o.lr} betas ({o.b1}, {o.b2}) wd {o.weight_decay}, warmup "
               f"{o.warmup_fraction:.0%} then {o.schedule}, layer decay {o.layer_decay} "
               f"({o.layer_decay_convention}), clip {o.grad_clip_norm or 'none'}, accum "
               f"{o.accum_steps}; mesh {tuple(map(tuple, config.mesh))} {config.sharding}")
  if "augment" in config:
    a = config.augment
    lines.append(f"  batch augment: mixup {a.mixup_alpha} cutmix {a.cutmix_alpha} prob "
                 f"{a.mix_prob} switch {a.switch_prob}, label smoothing {a.label_smoothing}, "
                 f"erasing p {a.erase_prob} ({a.erase_mode}); drop path {config.model.drop_path}")
  for name, evaluator in (config.get("evals") or {}).items():
    when = (f"every {evaluator.every_steps} steps" if evaluator.every_steps
            else "off (every_steps=0)")
    lines.append(f"  eval {name}: {evaluator.kind} on {evaluator.source.tfds_name}"
                 f"[{evaluator.source.split}] {when}")
  return "\n".join(lines)


def enabled_evals(config):
  """config.evals without the evaluators turned off (every_steps=0): those are never built, so
  their data is not opened and nothing of theirs compiles."""
  return {name: evaluator for name, evaluator in (config.get("evals") or {}).items()
          if evaluator.every_steps}


@dataclasses.dataclass
class StepRecord:
  """A dispatched step whose metrics are fetched one step late (keeps the device busy)."""
  step: int
  source: str
  metrics: Dict
  data_wait: float
  flops: float
  batch_size: int


def make_source_step(config, mode, model, tx, schedule, source, mesh, shardings):
  """The jitted train step of one source, as the loop runs it (also what `aot` compiles for a
  target). `source` needs only `modality`, `grid` and `num_visible`: no data is opened here."""
  source_model = state_lib.model_for_step(model, source.modality, mesh)
  return steps_lib.make_train_step(
      mode.objective(config, source_model, source, mesh), tx, schedule, mesh=mesh,
      strategy=config.sharding, state_shardings=shardings, seed=config.seed,
      accum_steps=config.optim.accum_steps)


def compile_steps(config, mode, model, tx, schedule, sources, mesh, shardings):
  """Per source: the jitted train step, and its FLOPs per step."""
  step_fns, step_flops = {}, {}
  for name, source in sources.items():
    step_fns[name] = make_source_step(config, mode, model, tx, schedule, source, mesh, shardings)
    step_flops[name] = flops.train_step_flops(mode.forward_flops(model.config, source),
                                              source.cfg.batch_size)
  return step_fns, step_flops


def restore_or_create(checkpoints, model, tx, mesh, config, stream):
  """The state to start from, its shardings and its metadata: the workdir's latest checkpoint on
  this mesh, else a fresh state with the parameters of `config.init_from`, else from scratch."""
  abstract, shardings = state_lib.state_shardings(model, tx, mesh, config.sharding)
  try:
    state = checkpoints.restore(state_lib.with_shardings(abstract, shardings))
  except ValueError as error:  # orbax: the saved tree does not match this optimizer's
    raise checkpoint_lib.CheckpointError(
        f"{checkpoints.directory}: the saved train state does not fit this config's optimizer "
        f"(did optim.grad_clip_norm, optim.accum_steps or optim.layer_decay change?): "
        f"{error}") from error
  if state is not None:
    return state, shardings, checkpoints.read_meta(int(state["step"]))
  initial = pretrained_parameters(config, model, abstract["params"])  # checked before compiling
  state = state_lib.create_state(model, tx, shardings, config.seed)
  if initial is not None:
    source_params, report = initial
    say(stream, str(report))
    state = {**state, "params": pretrained.copy_params(source_params, state["params"], report)}
  return state, shardings, {}


def pretrained_parameters(config, model, abstract_params):
  """(source parameters, report) of `config.init_from`, checked name by name and shape by shape
  against the model; None when the run starts from scratch."""
  if not config.init_from.path:
    return None
  path = os.path.expanduser(config.init_from.path)
  source_model, variables = pretrained.load(path)
  report = pretrained.plan(source_model, variables["params"], model, abstract_params,
                           exclude=tuple(config.init_from.exclude),
                           expect=config.init_from.expect, source=path)
  return variables["params"], report


def check_classes(config, mode, sources):
  """A classifier's head must have as many outputs as the training data has classes."""
  if mode.model_kind != "classifier":
    return
  for name, source in sources.items():
    if source.num_classes is not None and source.num_classes != config.model.num_classes:
      raise ConfigError(
          f"model.num_classes={config.model.num_classes} but {source.cfg.tfds_name} "
          f"(data.sources.{name}) has {source.num_classes} classes")


def check_process_count(meta, config, stream):
  """A resume on another number of processes restores the state exactly, but each process reads
  its own part of every split with its own seeds: the data order changes from here on."""
  saved = meta.get("process_count")
  if saved is None or saved == jax.process_count():
    return
  text = (f"the checkpoint was written by {saved} process(es) and this run has "
          f"{jax.process_count()}: the state resumes exactly, but the data order from here on "
          f"differs from an uninterrupted run")
  if config.data.on_process_count_change == "error":
    raise checkpoint_lib.CheckpointError(
        text + " (data.on_process_count_change='error'; set it to 'warn' to go on)")
  say(stream, "Warning: " + text)


@dataclasses.dataclass
class RunPlan:
  """What a run is, decided from the config and the prepared data before anything compiles."""
  mesh: jax.sharding.Mesh
  mode: Mode
  model: object
  sources: Dict
  total_steps: int
  tx: object
  schedule: object


def plan_run(config, devices=None) -> RunPlan:
  """Checks the config against the devices and the prepared data, and sizes the schedule; every
  problem is a ConfigError naming the field."""
  check_config(config)  # what main.py checks too, for callers that come straight here
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
    validate(config, mesh)
    mode = MODES[config.mode]
    model = state_lib.build_model(config.model, mode.model_kind)
    sources = open_sources(config, model.config.patch_size)
    check_classes(config, mode, sources)
    total_steps = config.total_steps or config.epochs * sum(
        s.steps_per_epoch for s in sources.values())
    optimizer_steps = max(total_steps // config.optim.accum_steps, 1)
    return RunPlan(mesh, mode, model, sources, total_steps,
                   optim.make_optimizer(config.optim, optimizer_steps),
                   optim.learning_rate_schedule(config.optim, optimizer_steps))
  except ValueError as error:
    raise ConfigError(str(error)) from error


def describe(config, devices=None) -> str:
  """The effective recipe of a run (what `main.py --print_config` shows): nothing compiles."""
  run = plan_run(config, devices)
  return recipe_summary(config, run.sources, run.total_steps)


def train(config, workdir: str, *, stream=sys.stdout, devices=None, stop_at_step=None,
          allow_config_change=False) -> Dict:
  """Trains in `config.mode`; returns a summary (final step and state, losses per source, skipped
  records per source, paths).

  devices: the devices of the mesh (default all). stop_at_step: save and return once this many
  steps are done (a time-boxed session; rerunning resumes). allow_config_change: resume even
  when the schedule or data order changed (see run_config).
  """
  workdir = paths.workdir_path(workdir)  # a local directory or a gs:// URL
  session_started = time.perf_counter()
  run = plan_run(config, devices)
  mesh, mode, model, sources = run.mesh, run.mode, run.model, run.sources
  total_steps, tx, schedule = run.total_steps, run.tx, run.schedule
  preemption = PreemptionHandler()
  last_step = min(total_steps, stop_at_step or total_steps)
  say(stream, "Effective recipe:\n" + recipe_summary(config, sources, total_steps))

  checkpoints = checkpoint_lib.TrainCheckpointer(
      workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  checkpoints.check_model(model)  # before anything compiles
  state, shardings, meta = restore_or_create(checkpoints, model, tx, mesh, config, stream)
  check_process_count(meta, config, stream)
  start_step = int(state["step"])
  schedule_changes, other_changes = run_config.record(
      config, workdir, resume_step=start_step, allow_change=allow_config_change)
  if schedule_changes:
    say(stream, "Resuming with changed settings (--allow_config_change): "
        + run_config.describe(schedule_changes))
  if other_changes:
    say(stream, "Resuming with changed settings (not the schedule or data): "
        + run_config.describe(other_changes))
  skipped = {name: int(meta.get("skipped", {}).get(name, 0)) for name in sources}
  say(stream, f"{'Resumed' if start_step else 'Starting'} at step {start_step} in {workdir}; "
             f"{state_lib.count_params(state['params']):,} parameters on {mesh.devices.size} "
             f"device(s)")
  summary = {"step": start_step, "total_steps": total_steps, "losses": {}, "first_losses": {},
             "skipped": skipped, "state": state, "workdir": str(workdir), "preempted": False,
             "checkpoints": str(checkpoints.directory),
             "metrics": str(workdir / metrics_lib.METRICS_FILE),
             "reconstructions": str(workdir / RECONSTRUCTIONS_DIR)}
  if start_step >= last_step:
    checkpoints.close()
    preemption.restore()
    return summary

  try:  # opens every evaluation split (labels, preparation) before anything compiles
    evaluators = evaluators_lib.build_evaluators(
        enabled_evals(config), model=model, mesh=mesh, strategy=config.sharding,
        param_shardings=shardings["params"], data_dir=os.path.expanduser(config.data.data_dir))
  except ValueError as error:
    raise ConfigError(str(error)) from error
  step_fns, step_flops = compile_steps(config, mode, model, tx, schedule, sources, mesh,
                                       shardings)
  predict_fns = ({name: steps_lib.make_predict(model, mesh=mesh, strategy=config.sharding,
                                               param_shardings=shardings["params"])
                  for name in sources} if mode.model_kind == "pretrain" else {})
  peak = flops.peak_flops_per_device(config.peak_flops_per_device)
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start_step)
  interval = metrics_lib.Interval(start_step, total_steps,
                                  peak * mesh.devices.size if peak else None)
  loader = loader_lib.Loader(sources, sharding=sharding.batch_sharding(mesh), seed=config.seed,
                             start_step=start_step, prefetch=config.data.prefetch)
  # A signal also ends a wait on the loader (data that stopped coming): the loop then saves.
  # Several processes must instead stop together at the step they agree on.
  if jax.process_count() == 1:
    preemption.on_signal(loader.stop)
  first_losses, last_losses = summary["first_losses"], summary["losses"]
  summary.update(evals={}, compile_seconds={})

  def evals_due(done):
    """The evaluators due after `done` steps (all of them at the start and at the end)."""
    return {name: evaluator for name, evaluator in evaluators.items()
            if done in (0, total_steps) or done % evaluator.every_steps == 0}

  def evaluate(done):
    started = time.perf_counter()
    for name, evaluator in evals_due(done).items():
      results = evaluator.run(state["params"])
      summary["evals"].setdefault(name, {})[done] = results
      writer.write(done, {"eval": name, **{f"{name}/{k}": v for k, v in results.items()}})
      say(stream, f"eval {name} at step {done}: " + metrics_lib.format_results(results))
    interval.exclude(time.perf_counter() - started)

  def run_step(name, batch):
    """The step of source `name`; its first call compiles (seconds to minutes): said and timed
    apart, so that step time and ETA are training only."""
    if name in summary["compile_seconds"]:
      return step_fns[name](state, batch)
    modality = sources[name].cfg.modality
    say(stream, f"Compiling the {name} step" + ("" if modality in name else f" ({modality})")
        + " (the first step of each source; seconds to minutes)...")
    started = time.perf_counter()
    result = step_fns[name](state, batch)  # returns once compiled; the step runs on
    seconds = summary["compile_seconds"][name] = time.perf_counter() - started
    interval.exclude(seconds)
    say(stream, f"Compiled the {name} step in {seconds:.1f} s")
    return result

  def checkpoint_meta():
    return {"process_count": jax.process_count(), "skipped": dict(skipped)}

  def finish(record: StepRecord):
    """Fetches a step's metrics, stops on a non-finite value, logs every log_every_steps."""
    values = jax.device_get(record.metrics)
    loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
    if not (np.isfinite(loss) and np.isfinite(grad_norm) and bool(values["state_finite"])):
      raise NonFiniteLossError(non_finite_message(record, values, checkpoints))
    skipped[record.source] += int(values["skipped"])
    first_losses.setdefault(record.source, loss)
    last_losses[record.source] = loss
    interval.add(record.source, loss, record.batch_size, record.flops, record.data_wait)
    done = record.step + 1
    # The session's first step is logged too: it shows the starting loss once compiled.
    if done % config.log_every_steps and done not in (total_steps, start_step + 1):
      return
    for source, record_id in loader.take_corrupt_record_ids():
      say(stream, f"Skipped an undecodable record of {source!r}: {record_id}")
    entry = {"modality": record.source, "loss": loss, "lr": float(values["lr"]),
             "grad_norm": grad_norm, **interval.summary(done),
             **{f"skipped_{name}": count for name, count in skipped.items()}}
    writer.write(done, entry)
    metrics_lib.log_progress(done, total_steps, entry, stream)

  pending, latest_batches = None, {}
  try:
    if start_step == 0:
      evaluate(0)
    for step, name, batch in loader:
      state, step_metrics = run_step(name, batch)
      if pending is not None:
        finish(pending)
      pending = StepRecord(step, name, step_metrics, loader.last_wait_seconds, step_flops[name],
                           sources[name].cfg.batch_size)
      latest_batches[name] = batch
      done = step + 1
      # Pictures every recon_every_steps (0 = none) and after the session's last step.
      if predict_fns and config.recon_every_steps and (
          done % config.recon_every_steps == 0 or done >= last_step):
        for source_name, source_batch in latest_batches.items():  # one picture per modality
          write_reconstruction(workdir, writer, done, source_name,
                               predict_fns[source_name](state["params"], source_batch),
                               model.config, config.loss.norm_pix)
      if evals_due(done):
        finish(pending)  # the evaluated parameters are known to be finite
        pending = None
        evaluate(done)
      preempted = preemption.should_stop(done)
      if done % config.checkpoint.every_steps == 0 or done >= last_step or preempted:
        if pending is not None:
          finish(pending)  # never save a state that is not known to be finite
        pending = None
        checkpoints.save(done, state, model, extra=checkpoint_meta())
      if preempted:
        say(stream, f"Preempted: saved step {done}; rerun the same command to resume")
        break
      if done >= last_step:
        break
    if pending is not None:
      finish(pending)
    if preemption.signalled and not preemption.stopping:  # the loader stopped while waiting
      done = int(state["step"])
      checkpoints.save(done, state, model, extra=checkpoint_meta())
      say(stream, f"Stopped while waiting for data: saved step {done}; rerun to resume")
      preemption.stopping = True
  finally:
    loader.close()
    checkpoints.close()
    writer.close()
    preemption.restore()
  summary.update(step=int(state["step"]), state=state, preempted=preemption.stopping,
                 wall_seconds=time.perf_counter() - session_started)
  return summary


def non_finite_message(record: StepRecord, values, checkpoints) -> str:
  """Explains a non-finite step and leaves only checkpoints that can train on.

  The loss and gradient of step k+1 are computed from the state saved at step k: when they are
  not finite, that checkpoint is moved aside (it would stop every resume at once). A step whose
  own update is not finite was never saved.
  """
  step = record.step + 1
  loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
  text = (f"non-finite training state at step {step} on {record.source!r} (loss {loss}, "
          f"gradient norm {grad_norm}, updated parameters and optimizer state "
          f"{'finite' if values['state_finite'] else 'NOT finite'}); it was not saved.")
  checkpoints.wait()
  if not (np.isfinite(loss) and np.isfinite(grad_norm)) and checkpoints.latest_step() == record.step:
    moved = checkpoints.reject(record.step)
    text += (f" The checkpoint of step {record.step}, whose parameters gave this loss, was "
             f"moved to {moved}.")
  good = checkpoints.latest_step()
  if good is None:
    return text + " No good checkpoint is left: a rerun starts afresh."
  return (text + f" The last good checkpoint is step {good} in {checkpoints.directory}: lower "
          "optim.lr (or set optim.grad_clip_norm) and rerun to resume from it.")


def write_reconstruction(workdir, writer, step, source, predicted, model_cfg, norm_pix):
  """The labelled picture of the predicted samples (see visualize.py), drawn for the run's own
  target kind (norm_pix): a file in reconstructions/ and a TensorBoard image (for videos an
  animated GIF)."""
  if jax.process_index() != 0:
    return
  from omnimae_jax import visualize  # Pillow, only when pictures are due

  pixels, mask, pred = (np.asarray(x) for x in jax.device_get(predicted))
  picture = visualize.draw(pixels, mask, pred, model_cfg.patch_size, norm_pix=norm_pix,
                           pad_type=model_cfg.pad_type)
  visualize.save(picture, paths.workdir_path(workdir) / RECONSTRUCTIONS_DIR
                 / f"step{step:08d}_{source}")
  height, width = picture.frames.shape[1:3]
  writer.write_encoded_image(step, f"reconstruction/{source}", picture.encoded, width, height,
                             description="; ".join(picture.labels))
