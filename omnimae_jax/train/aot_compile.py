"""`benchmark compile`: a config's train steps compiled for a TPU/GPU target, from any machine.

  python -m omnimae_jax.benchmark compile --config=configs/vitb_omni.py --target=v5e:4x4 \
      --batch_per_device=32 [--find_max_batch] [--set model.compute_dtype=float32 ...]

Per source (each modality of a pretraining config, the classification step of a fine-tuning one)
it prints the per-device memory XLA plans for the target (arguments, outputs, temporaries, peak),
the compile time and whether the peak fits the device; --find_max_batch adds the largest batch per
device that fits. Targets and their needs: see omnimae_jax/aot.py.
Exit status: 0 every step fits, 1 some step does not, 2 bad flags (reported before compiling).
"""
import os
import sys

from omnimae_jax.aot import (ALLOWED_TARGETS, GIB, CompileResult, Target, TargetError,
                             apply_overrides, compile_source, largest_fitting, make_plan,
                             parse_target, selected_sources, set_batch, target_devices)


def device_memory_bytes(target: Target, device) -> int:
  """What the device reports as its memory limit, else the generation's HBM (compile-only
  devices report nothing)."""
  import jax  # noqa: PLC0415

  try:
    stats = device.memory_stats() or {}
  except (jax.errors.JaxRuntimeError, NotImplementedError):
    stats = {}
  return int(stats.get("bytes_limit") or target.hbm_bytes)


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config FILE[:ARG]")
  parser.add_argument("--target", required=True, help=ALLOWED_TARGETS)
  parser.add_argument("--batch_per_device", type=int, default=0,
                      help="samples per device per step (default: the config's global batch)")
  parser.add_argument("--find_max_batch", action="store_true",
                      help="also find the largest batch per device that fits (doubling, then "
                           "bisection; one compile per try)")
  parser.add_argument("--sources", default="", help="comma-separated source names (default all)")
  parser.add_argument("--set", action="append", default=[], dest="overrides",
                      metavar="FIELD=VALUE", help="config override, e.g. model.attention=cudnn")


def prepare(args):
  """(target, devices, plan, source names) from the flags; TargetError/ConfigError on bad input,
  all before anything compiles."""
  from omnimae_jax.config_file import load_config  # noqa: PLC0415

  target = parse_target(args.target)
  if args.batch_per_device < 0:
    raise TargetError(f"--batch_per_device={args.batch_per_device}; allowed: an integer >= 1 "
                      "(or 0: the config's global batch)")
  devices = target_devices(target)
  config = apply_overrides(load_config(args.config), args.overrides)
  plan = make_plan(set_batch(config, args.batch_per_device, len(devices)), devices)
  return target, devices, plan, selected_sources(plan, args.sources)


def run(args) -> int:
  # Compile-only: never claim (or wait for) an accelerator this host may have.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  from omnimae_jax.train.config_checks import ConfigError  # noqa: PLC0415

  try:
    target, devices, plan, names = prepare(args)
  except (TargetError, ConfigError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  limit = device_memory_bytes(target, devices[0])
  print(describe(target, devices, plan, limit))
  print(HEADER)
  all_fit = True
  for name in names:
    result = compile_source(plan, name, plan.config.data.sources[name].batch_size)
    print(format_row(name, result, len(devices), limit), flush=True)
    all_fit &= result.fits(limit)
  if args.find_max_batch:
    for name in names:
      report_max_batch(plan, name, len(devices), limit)
  return 0 if all_fit else 1


def describe(target, devices, plan, limit) -> str:
  config = plan.config
  return (f"{target.spec}: {len(devices)} x {devices[0].device_kind} "
          f"({limit / GIB:.1f} GiB per device), mesh {dict(plan.mesh.shape)}, "
          f"{config.sharding}; {config.mode} {config.model.size} ({config.model.compute_dtype})"
          f", attention {config.model.get('attention', 'xla')}")


HEADER = (f"{'source':10} {'batch':>8} {'/device':>7} {'args GiB':>9} {'out GiB':>8} "
          f"{'temp GiB':>9} {'peak GiB':>9} {'fits':>4} {'compile s':>9}")


def format_row(name, result: CompileResult, num_devices: int, limit: int) -> str:
  per_device = f"{result.batch_size / num_devices:g}"
  head = f"{name:10} {result.batch_size:>8} {per_device:>7}"
  if result.memory is None:
    return (f"{head} {'out of memory at compile time':>39} {'no':>4} {result.seconds:>9.1f}\n"
            f"  {result.error[:300]}")
  m = result.memory
  return (f"{head} {m.argument_size_in_bytes / GIB:>9.2f} {m.output_size_in_bytes / GIB:>8.2f} "
          f"{m.temp_size_in_bytes / GIB:>9.2f} {result.peak_bytes() / GIB:>9.2f} "
          f"{'yes' if result.fits(limit) else 'no':>4} {result.seconds:>9.1f}")


def report_max_batch(plan, name, num_devices, limit):
  """Prints each try and the largest batch per device of source `name` that fits."""
  tried = {}

  def fits(per_device):
    result = compile_source(plan, name, per_device * num_devices)
    tried[per_device] = result
    print(f"  {name}: {per_device}/device -> "
          f"{f'peak {result.peak_bytes() / GIB:.2f} GiB' if result.memory else 'compile OOM'}"
          f", {'fits' if result.fits(limit) else 'does not fit'} ({result.seconds:.0f} s)",
          flush=True)
    return result.fits(limit)

  start = max(plan.config.data.sources[name].batch_size // num_devices, 1)
  best = largest_fitting(fits, start)
  if best:
    print(f"{name}: largest batch that fits: {best} per device ({best * num_devices} global), "
          f"peak {tried[best].peak_bytes() / GIB:.2f} of {limit / GIB:.1f} GiB")
  else:
    print(f"{name}: not even 1 sample per device fits in {limit / GIB:.1f} GiB")
