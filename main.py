"""omnimae_jax's main job.

    python main.py --config=configs/vitb_omni.py --workdir=DIR [--config.optim.lr=8e-4 ...]

The config's `mode` picks the job. Rerunning the same command resumes from the workdir's latest
checkpoint. On a multi-host system (Cloud TPU pod, SLURM, or --coordinator_address), the same
command runs on every host.
"""
import os
import sys

# Before TF or JAX is imported anywhere: TF is quiet and never sees an accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, e.g. configs/vitb_omni.py or configs/vitb_omni.py:official.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, metrics and pictures go here (default: workdir/<config name>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run that JAX "
    "cannot detect by itself (Cloud TPU and SLURM are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")

MODES = ("pretrain",)


def is_multi_process(env, coordinator_address=None) -> bool:
  """True when the flags or the environment say this is one of several processes."""
  if coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  # Cloud TPU VM pods list every worker; a single-host TPU VM lists one.
  return len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize_distributed():
  import jax

  if not is_multi_process(os.environ, _COORDINATOR.value):
    return
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    jax.distributed.initialize()
  logging.info("Process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdir", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo_omni.py")
  if config.mode not in MODES:
    raise app.UsageError(f"config.mode={config.mode!r}; this version runs {MODES}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # progress goes to stdout; -v=0 for the full log
  initialize_distributed()
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)

  # Imported after jax.distributed.initialize(), which must precede any JAX computation.
  from omnimae_jax.data.errors import DatasetNotPreparedError
  from omnimae_jax.train import checkpoint, pretrain

  try:
    summary = pretrain.train(config, workdir)
  except (DatasetNotPreparedError, checkpoint.CheckpointError, pretrain.ConfigError,
          pretrain.NonFiniteLossError) as error:
    # Errors the user acts on: the message is the whole story, a traceback would bury it.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  import jax

  if jax.process_index() == 0:
    print_summary(summary)


def print_summary(summary):
  state = "preempted at" if summary["preempted"] else "finished at"
  losses = ", ".join(f"{name} {summary['first_losses'][name]:.4f} -> {loss:.4f}"
                     for name, loss in sorted(summary["losses"].items()))
  progress = (f"loss over this session, first step -> last step: {losses}" if losses
              else "nothing left to train in this workdir")
  print(f"\nTraining {state} step {summary['step']} of {summary['total_steps']} ({progress})")
  print(f"  checkpoints:     {summary['checkpoints']}")
  print(f"  metrics:         {summary['metrics']} (and TensorBoard events in "
        f"{os.path.join(summary['workdir'], 'tensorboard')})")
  print(f"  reconstructions: {summary['reconstructions']}")


if __name__ == "__main__":
  app.run(main)
