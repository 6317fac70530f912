"""Every checkpoint read or written by omnimae_jax goes through this module (orbax behind it).

Two kinds of directory:
- a *model directory* (what `omnimae_jax.convert` writes, or `export_model`): `model.json` (the
  kind and every ModelConfig field) and `variables/` (an orbax checkpoint of {'params': ...});
- a *training workdir*: `checkpoints/<step>/` written by `TrainCheckpointer` (state + metadata).
`load_model(path)` reads either and returns (module, variables).
"""
import contextlib
import dataclasses
import functools
import json
import logging
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from omnimae_jax import models, paths
from omnimae_jax.models.vit import ModelConfig

MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"
CHECKPOINTS_DIR = "checkpoints"
REJECTED_DIR = "rejected_checkpoints"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or a write that would overwrite the user's files."""


def model_description(model: nn.Module) -> Dict[str, Any]:
  kind = {cls: name for name, cls in models.KINDS.items()}[type(model)]
  return {"kind": kind, "config": dataclasses.asdict(model.config)}


def model_from_description(description: Dict[str, Any], source: str) -> nn.Module:
  try:
    config = dict(description["config"])
    config["patch_size"] = tuple(config["patch_size"])
    return models.KINDS[description["kind"]](ModelConfig(**config))
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"{source}: not an omnimae_jax model description ({e!r})") from e


def is_model_dir(path) -> bool:
  return (paths.workdir_path(path) / MODEL_JSON).is_file()


def export_model(directory: str, model: nn.Module, variables, overwrite: bool = False) -> str:
  """Writes a model directory; refuses to replace an existing checkpoint unless overwrite=True.

  The write goes to a temporary sibling that is renamed into place, so a failure leaves nothing
  partial behind.
  """
  directory = paths.workdir_path(directory)  # local or gs://
  if directory.exists() and any(directory.iterdir()):
    if not overwrite:
      raise CheckpointError(f"{directory} already exists and is not empty; pass overwrite "
                            f"(--overwrite) to replace it")
  tmp = directory.parent / (directory.name + ".tmp-omnimae")
  _remove_tree(tmp)
  tmp.mkdir(parents=True)
  try:
    params = jax.device_get(nn.unbox(variables)["params"])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / VARIABLES_DIR, {"params": params})
    checkpointer.wait_until_finished()
    (tmp / MODEL_JSON).write_text(json.dumps(model_description(model), indent=2))
  except BaseException:
    _remove_tree(tmp)
    raise
  _remove_tree(directory)
  tmp.rename(directory)
  return str(directory)


def _remove_tree(path):
  if path.exists():
    path.rmtree()


def _restore_numpy(path) -> Any:
  """Restores an orbax pytree as host NumPy arrays, whatever mesh it was saved from."""
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree.tree if hasattr(tree, "tree")
                        else tree)
  return checkpointer.restore(path, target)


def load_model(path: str) -> Tuple[nn.Module, Dict[str, Any]]:
  """(module, {'params': ...}) from a model directory or a training workdir (latest step)."""
  path = paths.workdir_path(path)  # local or gs://
  if is_model_dir(path):
    model = model_from_description(json.loads((path / MODEL_JSON).read_text()), str(path))
    params = _restore_numpy(path / VARIABLES_DIR)["params"]
    return model, {"params": params}
  if (path / CHECKPOINTS_DIR).is_dir():
    return load_training_model(path)
  raise CheckpointError(f"{path}: neither a model directory (with {MODEL_JSON}) nor a training "
                        f"workdir (with {CHECKPOINTS_DIR}/)")


def load_training_model(workdir) -> Tuple[nn.Module, Dict[str, Any]]:
  """The model and params of the latest checkpoint in a training workdir."""
  workdir = paths.workdir_path(workdir)
  with _orbax_warnings_silenced():
    manager = ocp.CheckpointManager(workdir / CHECKPOINTS_DIR, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"{workdir}/{CHECKPOINTS_DIR}: no checkpoint saved yet")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  model = model_from_description(meta["model"], str(workdir))
  state_path = workdir / CHECKPOINTS_DIR / str(step) / "state"
  with _orbax_warnings_silenced():  # the item has no checkpoint metadata of its own
    params = _restore_numpy(state_path)["params"]
  return model, {"params": params}


# Fields that decide the parameter shapes; the others (dtype, remat, attention, drop path, sizes of
# the inputs) may change when a run resumes. A description saved with remat as a bool still loads:
# ModelConfig reads True/False as 'full'/'none'.
ARCHITECTURE_FIELDS = ("patch_size", "width", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                       "decoder_width", "decoder_depth", "decoder_heads", "decoder_qkv_bias",
                       "num_classes")


def architecture(description: Dict[str, Any]) -> Dict[str, Any]:
  config = description["config"]
  arch = {"kind": description["kind"]}
  arch.update({field: config.get(field) for field in ARCHITECTURE_FIELDS})
  if description["kind"] == "pretrain":
    arch.pop("num_classes")
  arch["patch_size"] = list(arch["patch_size"])
  return arch


@contextlib.contextmanager
def _orbax_warnings_silenced():
  """For calls whose orbax WARNINGs describe what we do on purpose (a read-only manager, one item
  of a checkpoint restored on its own, a type handler replaced): noise in every run's output."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


@functools.cache
def _one_writer_per_array_on_cpu():
  """On CPU, orbax writes each replicated array whole, from one device.

  By default orbax splits the write of a replicated array into one slice per replica (it already
  does not on GPU). CPU devices share one host memory, so there the split buys nothing and costs a
  compiled slice program per array shape and replica (144 compiles, ~12 s, for the first save of
  the demo model on 8 CPU devices; 0.5-1 s more per save after that). The registration is
  orbax's process-wide one; it changes how arrays are written, not what is written, so
  checkpoints read the same either way.
  """
  if jax.default_backend() != "cpu":
    return
  with _orbax_warnings_silenced():  # that a handler is replaced: we mean to
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class TrainCheckpointer:
  """Training checkpoints in `<workdir>/checkpoints/<step>/{state,meta}`.

  Saves are asynchronous (training goes on while the previous save is written); the last `keep`
  are kept. `meta` holds the step and the model description, so that a workdir of a different
  model is refused before anything is compiled, and `load_model` can rebuild the module.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    if keep < 1:  # orbax reads max_to_keep=0 as "keep none" and deletes every checkpoint
      raise ValueError(f"checkpoint.keep={keep}; must be >= 1")
    self.directory = paths.workdir_path(workdir) / CHECKPOINTS_DIR  # local or gs://
    _one_writer_per_array_on_cpu()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"),
                                          options=options)

  def latest_step(self):
    return self._manager.latest_step()

  def read_meta(self, step: int) -> Dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def check_model(self, model: nn.Module):
    """Raises CheckpointError when the workdir holds a checkpoint of another architecture."""
    step = self.latest_step()
    if step is None:
      return
    saved = architecture(self.read_meta(step)["model"])
    wanted = architecture(model_description(model))
    if saved != wanted:
      diff = {k: (saved.get(k), wanted.get(k)) for k in wanted if saved.get(k) != wanted.get(k)}
      raise CheckpointError(
          f"{self.directory} holds a checkpoint (step {step}) of a different model; differing "
          f"fields (saved, configured): {diff}. Use another --workdir, or the config that "
          f"wrote it.")

  def restore(self, abstract_state):
    """The latest state, placed on the shardings of `abstract_state`; None if there is none."""
    step = self.latest_step()
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def save(self, step: int, state, model: nn.Module, extra: Dict[str, Any] = None):
    meta = {"step": int(step), "model": model_description(model), **(extra or {})}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self):
    self._manager.wait_until_finished()

  def reject(self, step: int) -> str:
    """Moves checkpoint `step` out of the way (to <workdir>/rejected_checkpoints/<step>), so
    that a resume does not start from it again; nothing is deleted. Returns the new path."""
    self.wait()
    rejected = self.directory.parent / REJECTED_DIR
    rejected.mkdir(parents=True, exist_ok=True)
    target, copy = rejected / str(step), 1
    while target.exists():  # a step rejected twice keeps both copies
      copy += 1
      target = rejected / f"{step}.{copy}"
    (self.directory / str(step)).rename(target)
    self._manager.reload()
    return str(target)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
