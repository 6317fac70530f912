"""omnimae_jax's main job.

    python main.py --config=configs/vitb_omni.py --workdir=DIR [--config.optim.lr=8e-4 ...]

The config's `mode` picks the job. Rerunning the same command resumes from the workdir's latest
checkpoint. On a multi-host system (Cloud TPU pod, SLURM, or --coordinator_address), the same
command runs on every host.

A bad command line or config is one line on stderr (`error: ...`, exit code 2) before anything
runs; `--only_check_args` runs those checks on the whole config and exits (0 when it is fine).
"""
import os
import sys

# Before TF or JAX is imported anywhere: TF is quiet and never sees an accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import dataclasses  # noqa: E402
import traceback  # noqa: E402
from typing import List, Tuple  # noqa: E402

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Light modules (no JAX or TF at import): a bad flag or config file is reported at once.
from omnimae_jax import config_file  # noqa: E402
from omnimae_jax import paths  # noqa: E402
from omnimae_jax.train import config_checks  # noqa: E402
from omnimae_jax.train.config_checks import ConfigError  # noqa: E402

EXIT_CONFIG_ERROR = 2  # a bad command line or config; also the loop's errors the user acts on


def define_flags(flag_values, sys_argv=None):
  """This program's flags on `flag_values`. sys_argv: where the config flag finds its overrides
  (default sys.argv)."""
  config_flags.DEFINE_config_file(
      "config", None, "A config file, e.g. configs/vitb_omni.py or configs/vitb_omni.py:official.",
      flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  flags.DEFINE_string(
      "workdir", None, "Checkpoints, metrics and pictures go here (default: workdir/<config "
      "name>).", flag_values=flag_values)
  flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0, for a multi-process run that JAX "
      "cannot detect by itself (Cloud TPU and SLURM are detected).", flag_values=flag_values)
  flags.DEFINE_bool(
      "allow_config_change", False, "Resume even though the config changes the schedule or the "
      "data order (epochs, batch sizes, lr, seed, sources...); the old config is kept in the "
      "workdir.", flag_values=flag_values)
  flags.DEFINE_integer(
      "stop_at_step", None, "Save and exit once this many steps are done (a time-boxed "
      "session; rerunning resumes). The schedule still runs to the configured end.",
      flag_values=flag_values)
  flags.DEFINE_bool(
      "print_config", False, "Print the resolved config and the effective recipe, then exit "
      "without compiling or training.", flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "With --coordinator_address.",
                       flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "With --coordinator_address.",
                       flag_values=flag_values)
  flags.DEFINE_bool(
      "distributed", False, "Join the other hosts with jax.distributed.initialize() and let it "
      "find them (Cloud TPU pods and multi-slice; launch/tpu_pod.sh sets it). SLURM and "
      "--coordinator_address need no flag.", flag_values=flag_values)
  flags.DEFINE_enum(
      "require_backend", None, ["gpu", "tpu", "cpu"], "Stop before anything else runs unless "
      "JAX's default backend is this one (e.g. a GPU node whose CUDA JAX is missing would "
      "otherwise train on its CPUs).", flag_values=flag_values)


define_flags(flags.FLAGS)


@dataclasses.dataclass(frozen=True)
class Job:
  """What the command line asks for, checked: app.run hands it from parse_flags to main."""
  config: ml_collections.ConfigDict
  workdir: str


def distributed_arguments(env, *, distributed=False, coordinator_address=None,
                          num_processes=None, process_id=None):
  """The keyword arguments of jax.distributed.initialize() for this process, or None when it
  runs alone. A pure function of the environment and the flags, so launchers can be tested.

  Three ways in: --coordinator_address (any cluster), SLURM with several tasks (detected), and
  --distributed (Cloud TPU: JAX asks the VM's metadata server for the workers, which no
  environment variable on the VM reliably lists).
  """
  if coordinator_address:
    return {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id}
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    local_device_ids = slurm_local_device_ids(env)
    return {} if local_device_ids is None else {"local_device_ids": local_device_ids}
  if distributed or env.get("JAX_COORDINATOR_ADDRESS"):
    return {}
  return None


def slurm_local_device_ids(env):
  """The GPUs this SLURM task drives, or None to keep JAX's choice.

  JAX's SLURM detection gives each process the single GPU numbered SLURM_LOCALID (one task per
  GPU). Our launcher runs one task per node instead (one input pipeline per host, one process
  to watch), so when the node holds a single task it must drive every GPU the task can see.
  With CUDA_VISIBLE_DEVICES set (SLURM sets it for GPU allocations) CUDA renumbers the visible
  GPUs 0..n-1; without it the process sees the whole node, and SLURM_STEP_GPUS names ours.
  """
  if env.get("JAX_LOCAL_DEVICE_IDS"):  # the user's explicit choice; JAX reads it itself
    return None
  nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get(
      "SLURM_NNODES")
  if nodes is None or int(nodes) != int(env["SLURM_NTASKS"]):  # several tasks on a node
    return None
  visible = env.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return list(range(len([d for d in visible.split(",") if d.strip()]))) or None
  allocated = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS")
  if allocated:
    return [int(d) for d in allocated.split(",")]
  on_node = env.get("SLURM_GPUS_ON_NODE")
  return list(range(int(on_node))) if on_node and int(on_node) > 0 else None


# Set once jax.distributed.initialize() joined this process to others (see leave).
_JOINED_OTHER_PROCESSES = False


def initialize_distributed():
  """jax.distributed.initialize() when this is one of several processes; a no-op otherwise."""
  import jax

  arguments = distributed_arguments(
      os.environ, distributed=flags.FLAGS.distributed,
      coordinator_address=flags.FLAGS.coordinator_address,
      num_processes=flags.FLAGS.num_processes, process_id=flags.FLAGS.process_id)
  if arguments is None:
    return
  jax.distributed.initialize(**arguments)
  global _JOINED_OTHER_PROCESSES
  _JOINED_OTHER_PROCESSES = True
  logging.info("Process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def backend_error(required, actual: str, devices) -> str:
  """'' when --require_backend is unset or met, else the message that stops the run."""
  if not required or required == actual:
    return ""
  return (f"--require_backend={required} but JAX runs on {actual!r} (devices: {devices}); "
          f"install the {required.upper()} build of jax 0.10.2 (e.g. 'jax[cuda12]==0.10.2') or "
          f"check the node's drivers")


def compilation_cache_dir(setting: str, workdir: str, env) -> str:
  """Where compiled steps are kept between runs ('' = nowhere) for config.compilation_cache.

  'auto': JAX_COMPILATION_CACHE_DIR when the environment sets it, else <workdir>/compile_cache,
  on every backend: a resumed or requeued run then skips minutes of compilation (XLA:CPU
  executables are cached too, and JAX only stores compiles that took over a second). 'off' or
  '': none. Anything else: that directory (a local path or a gs:// URL).
  """
  if setting == "auto":
    return env.get("JAX_COMPILATION_CACHE_DIR") or str(
        paths.workdir_path(workdir) / "compile_cache")
  return "" if setting in ("", "off") else setting


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdir", name)


def parse_command_line(argv: List[str], flag_values=flags.FLAGS) -> Job:
  """Parses argv into `flag_values` and checks the config; raises ConfigError (one line naming
  the flag, file or field) for anything main could not start with. Runs nothing."""
  spec = config_spec(argv)
  if spec is not None:  # before absl: its errors for a bad file or key are tracebacks
    config_file.check_overrides(config_file.load_config(spec), argv)
  try:
    rest = flag_values(argv)
  except Exception as error:  # noqa: BLE001 (absl and ml_collections raise many kinds)
    raise ConfigError(config_file.one_line(error).removeprefix("flag ")) from error
  if len(rest) > 1:
    raise ConfigError(f"unexpected arguments: {rest[1:]}; flags look like --name=value")
  config = flag_values["config"].value
  if config is None:
    raise ConfigError("--config is required, e.g. --config=configs/demo_omni.py")
  workdir = flag_values["workdir"].value or default_workdir(flag_values["config"].config_filename)
  config_checks.check_config(config)
  config_checks.check_paths(config, workdir)
  return Job(config, workdir)


def config_spec(argv: List[str]):
  """The last --config value in argv (`--config=X` or `--config X`), or None."""
  spec = None
  for index, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    if arg.startswith(("--config=", "-config=")):
      spec = arg.split("=", 1)[1]
    elif arg in ("--config", "-config") and index + 1 < len(argv):
      spec = argv[index + 1]
  return spec


def check_command_line(argv: List[str]) -> Tuple[int, str]:
  """(0, "") when main.py would start with these arguments, else (2, the line it prints after
  'error: '). Nothing runs; the process's own flags are untouched (tests, scripts)."""
  flag_values = flags.FlagValues()
  define_flags(flag_values, sys_argv=argv)
  try:
    parse_command_line(argv, flag_values)
  except ConfigError as error:
    return EXIT_CONFIG_ERROR, config_file.one_line(error)
  return 0, ""


def exit_with_error(message: str):
  # The message is the whole story for the user; a traceback would bury it.
  print(f"error: {message}", file=sys.stderr)
  leave(EXIT_CONFIG_ERROR)


def leave(status: int):
  """sys.exit(status); a process joined to others leaves at once instead.

  jax.distributed's shutdown at exit waits at a barrier for every process, and when this one
  fails the others are blocked in a step's collectives and never reach it: measured with one of
  two processes reading a damaged file, 5 minutes, then every process aborted by the coordination
  service with a core dump. Leaving at once closes this process's connections, so the others'
  collectives fail now.
  """
  if _JOINED_OTHER_PROCESSES:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  sys.exit(status)


def parse_flags(argv: List[str]) -> Job:
  """app.run's flags_parser: a bad command line or config is one line on stderr, exit code 2."""
  try:
    return parse_command_line(argv)
  except ConfigError as error:
    exit_with_error(config_file.one_line(error))


def main(job: Job):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # progress goes to stdout; -v=0 for the full log
  initialize_distributed()
  import jax

  error = backend_error(flags.FLAGS.require_backend, jax.default_backend(), jax.devices())
  if error:
    exit_with_error(error)
  # Before the first compilation; the field is optional in a config (default 'auto').
  cache_dir = compilation_cache_dir(job.config.get("compilation_cache", "auto"), job.workdir,
                                    os.environ)
  jax.config.update("jax_compilation_cache_dir", cache_dir or None)

  # Imported after jax.distributed.initialize(), which must precede any JAX computation.
  from omnimae_jax.data.errors import CorruptDataError, DatasetNotPreparedError
  from omnimae_jax.train import checkpoint, evaluate, loop

  try:
    if flags.FLAGS.print_config:
      print_config(job.config, loop)
      return
    if job.config.mode == "evaluate":
      evaluate.evaluate(job.config, job.workdir)
      return
    summary = loop.train(job.config, job.workdir, stop_at_step=flags.FLAGS.stop_at_step,
                         allow_config_change=flags.FLAGS.allow_config_change)
  except (DatasetNotPreparedError, CorruptDataError, checkpoint.CheckpointError, ConfigError,
          loop.NonFiniteLossError) as error:
    exit_with_error(str(error))
  except Exception as error:  # a bug, or another process's failure: the traceback helps
    if not _JOINED_OTHER_PROCESSES:
      raise
    traceback.print_exc()
    if isinstance(error, jax.errors.JaxRuntimeError):
      print("error: a step across processes failed; if another process stopped first, its "
            "output says why", file=sys.stderr)
    leave(1)
  if jax.process_index() == 0:
    print_summary(summary)


def print_config(config, loop):
  """--print_config: the config as resolved from the file, its arg and the overrides, and for a
  training run the effective recipe (which needs the prepared data, but compiles nothing)."""
  print(config)
  if config.mode != "evaluate":
    print("Effective recipe:\n" + loop.describe(config))


def print_summary(summary):
  from omnimae_jax.train.metrics import format_results
  state = ("preempted at" if summary["preempted"] else "finished at"
           if summary["step"] >= summary["total_steps"] else "stopped (--stop_at_step) at")
  losses = ", ".join(f"{name} {summary['first_losses'][name]:.4f} -> {loss:.4f}"
                     for name, loss in sorted(summary["losses"].items()))
  progress = (f"loss of this session's first step -> of its last step: {losses}" if losses
              else "nothing left to train in this workdir")
  print(f"\nTraining {state} step {summary['step']} of {summary['total_steps']} ({progress})")
  skipped = {name: count for name, count in summary["skipped"].items() if count}
  if "wall_seconds" in summary:
    compiling = sum(summary["compile_seconds"].values())
    print(f"  wall time:       {summary['wall_seconds'] / 60:.1f} min, of which compiling "
          f"{compiling:.0f} s")
  print("  corrupt records: " + (", ".join(f"{name} {count} samples skipped"
                                          for name, count in skipped.items()) or "none"))
  for name, by_step in summary.get("evals", {}).items():
    first, last = min(by_step), max(by_step)
    print(f"  eval {name}: step {first}: {format_results(by_step[first])}")
    if last != first:
      print(f"  eval {name}: step {last}: {format_results(by_step[last])}")
  print(f"  checkpoints:     {summary['checkpoints']}")
  print(f"  metrics:         {summary['metrics']} (and TensorBoard events in "
        f"{paths.workdir_path(summary['workdir']) / 'tensorboard'})")
  if paths.workdir_path(summary["reconstructions"]).is_dir():
    print(f"  reconstructions: {summary['reconstructions']}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
