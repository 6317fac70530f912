"""Training-step speed at a config's sizes on the present devices: compile time, step time,
samples/s, achieved TFLOP/s and MFU of each source's step (pretraining or fine-tuning: the steps
the training loop runs).

  python -m omnimae_jax.benchmark step --config=configs/vitb_omni.py --batch_per_device=32
  python -m omnimae_jax.benchmark step --config=configs/finetune_in1k.py --batch_per_device=32

Batches are synthetic (random uint8 pixels, random masks with the configured visible count), so
this measures the device side only; `benchmark input` measures the host side.
"""
import sys
import time

import numpy as np

WARMUP_STEPS = 2


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config FILE[:ARG]")
  parser.add_argument("--sources", default="", help="comma-separated source names (default all)")
  parser.add_argument("--size", default="", help="override config.model.size")
  parser.add_argument("--batch_per_device", type=int, default=0,
                      help="samples per device per step (default: the config's global batch)")
  parser.add_argument("--compute_dtype", default="", help="override config.model.compute_dtype")
  parser.add_argument("--attention", default="", help="override config.model.attention "
                      "(auto | xla | explicit | cudnn | splash)")
  parser.add_argument("--remat", default="",
                      help="override config.model.remat (auto | none | full)")
  parser.add_argument("--sharding", default="", help="override config.sharding")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per source")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak TFLOP/s per device for MFU (default: looked up by device kind)")


def synthetic_batch(abstract_batch, num_classes, rng):
  """Random values for the step's abstract batch (aot.abstract_batch: the pipeline's keys, shapes,
  dtypes and sharding): pixels, labels in [0, num_classes), every sample valid and, for
  pretraining, random masks with keep_idx's number of visible tokens."""
  import jax  # noqa: PLC0415

  shapes = {key: spec.shape for key, spec in abstract_batch.items()}
  batch = {"pixels": rng.integers(0, 256, shapes["pixels"], dtype=np.uint8),
           "label": rng.integers(0, num_classes or 1, shapes["label"]),
           "valid": np.ones(shapes["valid"], bool)}
  if "keep_idx" in shapes:
    order = np.argsort(rng.random(shapes["mask"]), axis=1)
    batch["keep_idx"] = np.sort(order[:, :shapes["keep_idx"][1]], axis=1)
    batch["mask"] = np.ones(shapes["mask"], bool)
    np.put_along_axis(batch["mask"], batch["keep_idx"], False, axis=1)
  return {key: jax.device_put(value.astype(abstract_batch[key].dtype), abstract_batch[key].sharding)
          for key, value in batch.items()}


def _apply_overrides(config, args):
  with config.unlocked():
    if args.size:
      config.model.size = args.size
      config.model.patch_size = (2, 14, 14) if args.size == "huge" else (2, 16, 16)
    if args.compute_dtype:
      config.model.compute_dtype = args.compute_dtype
    if args.attention:
      config.model.attention = args.attention
    if args.remat:
      config.model.remat = args.remat
    if args.sharding:
      config.sharding = args.sharding
  return config


def time_steps(step_fn, state, batch, steps):
  """(state, seconds of the first call (compile + run), mean seconds per later step)."""
  import jax  # noqa: PLC0415

  started = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - started
  for _ in range(WARMUP_STEPS):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  return state, compile_seconds, (time.perf_counter() - started) / steps


def run(args):
  import jax  # noqa: PLC0415

  from omnimae_jax import aot  # noqa: PLC0415
  from omnimae_jax.config_file import load_config  # noqa: PLC0415
  from omnimae_jax.train import flops, state as state_lib  # noqa: PLC0415
  from omnimae_jax.train.config_checks import ConfigError  # noqa: PLC0415

  try:  # bad input is one line, before anything compiles
    config = aot.set_batch(_apply_overrides(load_config(args.config), args),
                           args.batch_per_device, jax.device_count())
    plan = aot.make_plan(config, jax.devices())  # the loop's model, optimizer and steps
    names = aot.selected_sources(plan, args.sources)
  except (aot.TargetError, ConfigError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  state = state_lib.create_state(plan.model, plan.tx, plan.shardings, config.seed)
  peak = flops.peak_flops_per_device(args.peak_tflops * 1e12)
  model_cfg = plan.model.config
  print(f"{config.mode} {config.model.size} ({config.model.compute_dtype}, {config.sharding}, "
        f"attention {model_cfg.attention}, remat {model_cfg.remat}) on "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}; "
        f"{state_lib.count_params(state['params']):,} parameters; peak "
        + (f"{peak / 1e12:.0f} TFLOP/s per device" if peak else "n/a (unknown device; MFU needs "
           "--peak_tflops)"))
  print(f"{'source':8} {'batch':>6} {'tokens':>11} {'compile s':>9} {'step ms':>9} "
        f"{'samples/s':>10} {'TFLOP/s/dev':>11} {'MFU':>6}")
  rng = np.random.default_rng(0)
  for name in names:
    source = plan.sources[name]
    batch_size = source.cfg.batch_size
    step_fn, abstract = aot.source_step(plan, name, batch_size)
    batch = synthetic_batch(abstract, config.model.get("num_classes"), rng)
    state, compile_seconds, step_seconds = time_steps(step_fn, state, batch, args.steps)
    step_flops = flops.train_step_flops(plan.mode.forward_flops(model_cfg, source), batch_size)
    achieved = step_flops / step_seconds / jax.device_count()
    mfu = f"{achieved / peak:6.1%}" if peak else "   n/a"
    num_tokens = int(np.prod(source.grid))
    tokens = f"{source.num_visible}/{num_tokens}" if source.num_visible else str(num_tokens)
    print(f"{name:8} {batch_size:>6} {tokens:>11} {compile_seconds:>9.1f} "
          f"{step_seconds * 1e3:>9.1f} {batch_size / step_seconds:>10.1f} "
          f"{achieved / 1e12:>11.3f} {mfu}")
