"""Every checkpoint read or written by omnimae_jax goes through this module (orbax behind it).

Two kinds of directory:
- a *model directory* (what `omnimae_jax.convert` writes, or `export_model`): `model.json` (the
  kind and every ModelConfig field) and `variables/` (an orbax checkpoint of {'params': ...});
- a *training workdir*: `checkpoints/<step>/` written by `TrainCheckpointer` (state + metadata).
`load_model(path)` reads either and returns (module, variables).
"""
import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from omnimae_jax import models
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


def is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL_JSON))


def export_model(directory: str, model: nn.Module, variables, overwrite: bool = False) -> str:
  """Writes a model directory; refuses to replace an existing checkpoint unless overwrite=True.

  The write goes to a temporary sibling that is renamed into place, so a failure leaves nothing
  partial behind.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    if not overwrite:
      raise CheckpointError(f"{directory} already exists and is not empty; pass overwrite "
                            f"(--overwrite) to replace it")
  tmp = directory + ".tmp-omnimae"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    params = jax.device_get(nn.unbox(variables)["params"])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, VARIABLES_DIR), {"params": params})
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, MODEL_JSON), "w") as f:
      json.dump(model_description(model), f, indent=2)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.rename(tmp, directory)
  return directory


def _restore_numpy(path: str) -> Any:
  """Restores an orbax pytree as host NumPy arrays, whatever mesh it was saved from."""
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree.tree if hasattr(tree, "tree")
                        else tree)
  return checkpointer.restore(path, target)


def load_model(path: str) -> Tuple[nn.Module, Dict[str, Any]]:
  """(module, {'params': ...}) from a model directory or a training workdir (latest step)."""
  path = os.path.abspath(path)
  if is_model_dir(path):
    with open(os.path.join(path, MODEL_JSON)) as f:
      model = model_from_description(json.load(f), path)
    params = _restore_numpy(os.path.join(path, VARIABLES_DIR))["params"]
    return model, {"params": params}
  if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
    return load_training_model(path)
  raise CheckpointError(f"{path}: neither a model directory (with {MODEL_JSON}) nor a training "
                        f"workdir (with {CHECKPOINTS_DIR}/)")


def load_training_model(workdir: str) -> Tuple[nn.Module, Dict[str, Any]]:
  """The model and params of the latest checkpoint in a training workdir."""
  manager = ocp.CheckpointManager(os.path.join(workdir, CHECKPOINTS_DIR),
                                  item_names=("state", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"{workdir}/{CHECKPOINTS_DIR}: no checkpoint saved yet")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  model = model_from_description(meta["model"], workdir)
  state_path = os.path.join(workdir, CHECKPOINTS_DIR, str(step), "state")
  params = _restore_numpy(state_path)["params"]
  return model, {"params": params}


# Fields that decide the parameter shapes; the others (dtype, remat, drop path, sizes of the
# inputs) may change when a run resumes.
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


class TrainCheckpointer:
  """Training checkpoints in `<workdir>/checkpoints/<step>/{state,meta}`.

  Saves are asynchronous (training goes on while the previous save is written); the last `keep`
  are kept. `meta` holds the step and the model description, so that a workdir of a different
  model is refused before anything is compiled, and `load_model` can rebuild the module.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    if keep < 1:  # orbax reads max_to_keep=0 as "keep none" and deletes every checkpoint
      raise ValueError(f"checkpoint.keep={keep}; must be >= 1")
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
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
    source = os.path.join(self.directory, str(step))
    rejected = os.path.join(os.path.dirname(self.directory), REJECTED_DIR)
    os.makedirs(rejected, exist_ok=True)
    target, copy = os.path.join(rejected, str(step)), 1
    while os.path.exists(target):  # a step rejected twice keeps both copies
      copy += 1
      target = os.path.join(rejected, f"{step}.{copy}")
    os.rename(source, target)
    self._manager.reload()
    return target

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
