"""Training-step speed at a config's sizes on the present devices: compile time, step time,
samples/s, achieved TFLOP/s and MFU of the image step and the video step.

  python -m omnimae_jax.benchmark step --config=configs/vitb_omni.py --batch_per_device=32

Batches are synthetic (random uint8 pixels, random masks with the configured visible count), so
this measures the device side only; `benchmark input` measures the host side.
"""
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


def synthetic_batch(batch_size, cfg, grid, num_visible, rng):
  """A batch with the pipeline's keys, shapes and dtypes."""
  frames = (cfg.num_frames,) if cfg.modality == "video" else ()
  num_tokens = int(np.prod(grid))
  order = np.argsort(rng.random((batch_size, num_tokens)), axis=1)
  keep_idx = np.sort(order[:, :num_visible], axis=1).astype(np.int32)
  mask = np.ones((batch_size, num_tokens), bool)
  np.put_along_axis(mask, keep_idx, False, axis=1)
  pixels = rng.integers(0, 256, (batch_size, *frames, cfg.image_size, cfg.image_size, 3),
                        dtype=np.uint8)
  return {"pixels": pixels, "mask": mask, "keep_idx": keep_idx,
          "label": np.zeros((batch_size,), np.int32)}


def _apply_overrides(config, args, device_count):
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
    if args.batch_per_device:
      for source in config.data.sources.values():
        source.batch_size = args.batch_per_device * device_count
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

  from omnimae_jax.config_file import load_config  # noqa: PLC0415
  from omnimae_jax.data import config as data_config, masking  # noqa: PLC0415
  from omnimae_jax.train import flops, optim, sharding, state as state_lib  # noqa: PLC0415
  from omnimae_jax.train import steps as steps_lib  # noqa: PLC0415

  config = _apply_overrides(load_config(args.config), args, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  model = state_lib.build_model(config.model)
  tx = optim.make_optimizer(config.optim, 1000)
  schedule = optim.learning_rate_schedule(config.optim, 1000)
  _, shardings = state_lib.state_shardings(model, tx, mesh, config.sharding)
  state = state_lib.create_state(model, tx, shardings, config.seed)
  peak = flops.peak_flops_per_device(args.peak_tflops * 1e12)
  device = jax.devices()[0]
  print(f"{config.model.size} ({config.model.compute_dtype}, {config.sharding}, attention "
        f"{model.config.attention}, remat {model.config.remat}) on "
        f"{jax.device_count()} x {device.device_kind}; "
        f"{state_lib.count_params(state['params']):,} parameters; peak "
        + (f"{peak / 1e12:.0f} TFLOP/s per device" if peak else "n/a (unknown device; MFU needs "
           "--peak_tflops)"))
  header = (f"{'source':8} {'batch':>6} {'tokens':>11} {'compile s':>9} {'step ms':>9} "
            f"{'samples/s':>10} {'TFLOP/s/dev':>11} {'MFU':>6}")
  print(header)
  names = [n for n in args.sources.split(",") if n] or list(config.data.sources)
  rng = np.random.default_rng(0)
  for name in names:
    cfg = config.data.sources[name]
    grid = data_config.token_grid(cfg, model.config.patch_size)
    num_visible = masking.num_visible(cfg.mask_kind, grid, cfg.mask_ratio)
    batch = jax.device_put(synthetic_batch(cfg.batch_size, cfg, grid, num_visible, rng),
                           sharding.batch_sharding(mesh))
    source_model = state_lib.model_for_step(model, cfg.modality, mesh)
    step_fn = steps_lib.make_train_step(
        steps_lib.reconstruction_objective(source_model, norm_pix=config.loss.norm_pix), tx,
        schedule, mesh=mesh, strategy=config.sharding, state_shardings=shardings,
        seed=config.seed)
    state, compile_seconds, step_seconds = time_steps(step_fn, state, batch, args.steps)
    step_flops = flops.train_step_flops(
        flops.pretrain_forward_flops(model.config, int(np.prod(grid)), num_visible),
        cfg.batch_size)
    achieved = step_flops / step_seconds / jax.device_count()
    mfu = f"{achieved / peak:6.1%}" if peak else "   n/a"
    print(f"{name:8} {cfg.batch_size:>6} {f'{num_visible}/{int(np.prod(grid))}':>11} "
          f"{compile_seconds:>9.1f} {step_seconds * 1e3:>9.1f} "
          f"{cfg.batch_size / step_seconds:>10.1f} {achieved / 1e12:>11.3f} {mfu}")
