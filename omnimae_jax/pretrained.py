"""Checkpoints as (model, params), and fine-tuning models initialised from them.

    model, variables = pretrained.load("vitb_pretrain.torch")        # or a model dir / workdir
    model, variables = pretrained.load(workdir, expect="classifier")  # evaluation
    params, report = pretrained.init_from(path, classifier, fresh_params)  # SPEC §1.6
    print(report)

`load` is the one place that turns a path into a model: an official .torch file (pretrain or
fine-tuned, imported by omnimae_jax.convert), one of our model directories, or a training
workdir (its latest step); the last two through omnimae_jax.train.checkpoint.

`init_from` copies a checkpoint's trunk into a fresh fine-tuning Classifier. Parameters are
matched by path in our naming ('trunk/blocks_0/attn/qkv/kernel'); `exclude` holds shell-style
globs (fnmatch, case-sensitive, anchored at both ends; '*' also crosses '/', so 'decoder/*' is
everything under the decoder) over those paths. Globs rather than regexes: they read like the
paths, and anchoring means 'trunk/norm/*' cannot also catch 'trunk/blocks_0/norm1/scale'. An
excluded path is neither copied nor required, on either side. Everything else must match
exactly: a target parameter the source lacks, a source parameter the target lacks (another
depth, a decoder that was not excluded) or a shape that differs (another width, head count or
patch size) is an error that lists them, raised before anything is compiled. Position tables
are not parameters, so img_size and num_frames may differ freely.

A training loop that wants the error before it compiles its state does it in two steps:
`load`, then `plan(...)` against the abstract params (jax.eval_shape), then, once the fresh
state exists, `copy_params(source_params, state_params, report)`; `init_from` is the three in one.
"""
import collections
import dataclasses
import fnmatch
import os
import tempfile
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import flax.linen as nn
import jax
from etils import epath
import numpy as np
from flax import traverse_util

from omnimae_jax import convert, models, paths, torch_reader
from omnimae_jax.train import checkpoint

# What the fine-tuning configs drop from the pretraining checkpoint (SPEC §1.6), in our naming.
DEFAULT_EXCLUDE = (
    "trunk/norm/*",  # the post-pool norm starts fresh at 1/0
    "decoder/*",  # the decoder, and the mask token (official trunk.mask_token) that lives in it
    "head/*",  # the pixel head, or another task's classes
)
EXPECT = ("pretrain", "classifier", "any")
WHAT_LOADS = (f"an official OmniMAE .torch file, one of our model directories (with "
              f"{checkpoint.MODEL_JSON}) or a training workdir (with "
              f"{checkpoint.CHECKPOINTS_DIR}/)")
TRUNK_FIELDS = ("patch_size", "width", "depth", "num_heads", "mlp_ratio", "qkv_bias")
MAX_LISTED = 12  # problems listed one by one; the rest are counted


class PretrainedError(checkpoint.CheckpointError):
  """A path that is not a model we can load, or one that cannot initialise the model asked for."""


def kind_of(model: nn.Module) -> str:
  return checkpoint.model_description(model)["kind"]


def _check_expect(expect: str):
  if expect not in EXPECT:
    raise ValueError(f"expect={expect!r}; allowed: {EXPECT}")


# ----------------------------------------------------------------------------------- loading


def _load_official(path: str, overrides: dict):
  if paths.is_url(path):  # the reader seeks around a zip archive: read it from a local copy
    with tempfile.NamedTemporaryFile(suffix=".torch") as local:
      local.write(epath.Path(path).read_bytes())
      local.flush()
      return _load_official(local.name, overrides)
  try:
    return convert.load_official(path, **overrides)
  except torch_reader.UnsafeCheckpointError as e:
    raise PretrainedError(_named(e, path)) from e
  except torch_reader.TorchFileError as e:
    raise PretrainedError(f"{_named(e, path)}; a file is read as an official OmniMAE .torch "
                          f"checkpoint") from e
  except convert.ConversionError as e:
    raise PretrainedError(_named(e, path)) from e


def _named(error: Exception, path: str) -> str:
  text = str(error)
  return text if text.startswith(path) else f"{path}: {text}"


def _with_overrides(model: nn.Module, variables, overrides: dict, path: str):
  """The saved model with non-architecture fields replaced (compute_dtype, remat, attention...)."""
  if not overrides:
    return model, variables
  if "patch_size" in overrides:
    overrides = {**overrides, "patch_size": tuple(overrides["patch_size"])}
  try:
    config = dataclasses.replace(model.config, **overrides)
  except (TypeError, ValueError) as e:
    raise PretrainedError(f"{path}: cannot apply {overrides}: {e}") from e
  rebuilt = type(model)(config)
  saved = checkpoint.architecture(checkpoint.model_description(model))
  wanted = checkpoint.architecture(checkpoint.model_description(rebuilt))
  changed = {k: (saved[k], wanted[k]) for k in saved if saved[k] != wanted[k]}
  if changed:
    raise PretrainedError(f"{path}: the overrides change the architecture the parameters were "
                          f"saved for (saved, asked): {changed}")
  return rebuilt, variables


def _check_kind(model: nn.Module, expect: str, path: str):
  kind = kind_of(model)
  if expect in ("any", kind):
    return
  if kind == "classifier":
    raise PretrainedError(f"{path}: a classifier checkpoint ({model.config.num_classes} classes; "
                          f"it has no decoder), but a pretraining checkpoint was expected")
  raise PretrainedError(f"{path}: a pretraining checkpoint (decoder and pixel head, no "
                        f"classification head), but a classifier (fine-tuned) checkpoint was "
                        f"expected")


def load(path: Union[str, os.PathLike], expect: str = "any", **overrides
         ) -> Tuple[nn.Module, Dict[str, Any]]:
  """(module, {'params': host NumPy tree}) from an official .torch file, a model directory or a
  training workdir (latest step).

  expect: 'pretrain' (MAEPretrain, with its decoder), 'classifier' or 'any'; another kind is a
  PretrainedError. overrides: ModelConfig fields. For a .torch file they go to the converter
  (e.g. img_size/num_frames when its position table is not the official 16-frame one); for our
  directories only fields that leave the parameter shapes alone may change (compute_dtype,
  remat='none'|'full'|'auto', attention, img_size, num_frames, drop_path, head_init_std, ...).
  """
  _check_expect(expect)
  where = paths.workdir_path(path)  # local, or on cloud storage (gs://...)
  path = os.fspath(where)
  if not where.exists():
    raise PretrainedError(f"{path}: no such file or directory; expected {WHAT_LOADS}")
  if where.is_file():
    model, variables = _load_official(path, overrides)
  elif checkpoint.is_model_dir(path) or (where / checkpoint.CHECKPOINTS_DIR).is_dir():
    model, variables = _with_overrides(*checkpoint.load_model(path), overrides, path)
  else:
    raise PretrainedError(f"{path}: a directory that is neither a model directory nor a "
                          f"training workdir; expected {WHAT_LOADS}")
  _check_kind(model, expect, path)
  return model, variables


# ------------------------------------------------------------------ initialising a classifier


@dataclasses.dataclass
class InitReport:
  """What `init_from` did; str(report) is a few lines for the log."""
  source: str
  source_kind: str
  loaded: List[str]  # target paths filled from the source
  num_loaded_values: int
  excluded: Dict[str, List[str]]  # pattern -> source paths it dropped
  reinitialised: Dict[str, List[str]]  # pattern -> target paths left at their fresh init
  unused_patterns: List[str]  # patterns that matched nothing on either side (a typo?)

  def summary(self) -> str:
    total = len(self.loaded) + sum(map(len, self.reinitialised.values()))
    lines = [f"initialised from {self.source} ({self.source_kind}): {len(self.loaded)} of "
             f"{total} parameters loaded ({self.num_loaded_values:,} values)",
             f"  excluded from the source: {_groups(self.excluded)}",
             f"  re-initialised: {_groups(self.reinitialised)}"]
    if self.unused_patterns:
      lines.append(f"  exclude patterns that matched nothing: {', '.join(self.unused_patterns)}")
    return "\n".join(lines)

  __str__ = summary


def _groups(groups: Mapping[str, List[str]]) -> str:
  """'decoder/* (27), head/* [head/bias, head/kernel]': a few names are shown, many counted."""
  parts = [f"{p} [{', '.join(names)}]" if len(names) <= 3 else f"{p} ({len(names)})"
           for p, names in groups.items() if names]
  return ", ".join(parts) or "none"


def _flat(params) -> Dict[str, Any]:
  return traverse_util.flatten_dict(_unwrapped(nn.unbox(params)), sep="/")


def _unwrapped(tree):
  """The params tree, also when given as variables ({'params': tree})."""
  return tree["params"] if set(tree) == {"params"} else tree


def _patterns(exclude: Union[str, Sequence[str]]) -> Tuple[str, ...]:
  if isinstance(exclude, str):  # one pattern, not its characters
    return (exclude,)
  return tuple(exclude)


def _first_match(name: str, patterns: Sequence[str]):
  return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def _listed(problems: List[str]) -> List[str]:
  if len(problems) <= MAX_LISTED:
    return problems
  return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more"]


def _by_module(names: List[str]) -> List[str]:
  """Missing or extra parameters, one line per module ('trunk/blocks_5/*: 12 parameters')."""
  modules = collections.defaultdict(list)
  for name in names:
    modules["/".join(name.split("/")[:2])].append(name)
  return [f"{m}/*: {len(group)} parameters" if len(group) > 1 else group[0]
          for m, group in modules.items()]


def _trunk_differences(source_model: nn.Module, target_model: nn.Module) -> str:
  differing = [f"{f} {getattr(source_model.config, f)} (source) vs "
               f"{getattr(target_model.config, f)} (target)" for f in TRUNK_FIELDS
               if getattr(source_model.config, f) != getattr(target_model.config, f)]
  return "; the trunks differ: " + ", ".join(differing) if differing else ""


def _check_target(target_model: nn.Module, source: str):
  if not isinstance(target_model, models.Classifier):
    raise PretrainedError(f"init_from({source}): the target is a {type(target_model).__name__}; "
                          f"init_from initialises a fine-tuning Classifier (models.build(size, "
                          f"'classifier', ...)); a pretraining run resumes from its own workdir")


def _check_source_kind(source_model: nn.Module, expect: str, source: str):
  kind = kind_of(source_model)
  if expect == "pretrain" and kind == "classifier":
    raise PretrainedError(
        f"{source}: a classifier (fine-tuned, {source_model.config.num_classes} classes) "
        f"checkpoint, but a pretrained trunk was expected; to start from a fine-tuned trunk "
        f"(e.g. IN1K -> SSv2), ask for expect='classifier' or 'any'")
  if expect == "classifier" and kind == "pretrain":
    raise PretrainedError(f"{source}: a pretraining checkpoint, but a classifier (fine-tuned) "
                          f"checkpoint was expected; ask for expect='pretrain' or 'any'")


def plan(source_model: nn.Module, source_params, target_model: nn.Module, target_params, *,
         exclude: Union[str, Sequence[str]] = DEFAULT_EXCLUDE, expect: str = "pretrain",
         source: str = "source") -> InitReport:
  """Which target parameters come from the source, checked by name and shape only.

  The leaves need only `.shape`, so abstract params (jax.ShapeDtypeStruct, e.g. from
  jax.eval_shape) can be checked before any state is created or compiled. Raises
  PretrainedError with the problems: shape mismatches one per line, missing or extra parameters
  one line per module, the first MAX_LISTED shown and the rest counted.
  """
  _check_expect(expect)
  _check_target(target_model, source)
  _check_source_kind(source_model, expect, source)
  patterns = _patterns(exclude)
  source_flat, target_flat = _flat(source_params), _flat(target_params)
  excluded = {p: [] for p in patterns}
  reinitialised = {p: [] for p in patterns}
  loaded, mismatched, missing, extra = [], [], [], []
  for name in sorted(target_flat):
    pattern = _first_match(name, patterns)
    if pattern is not None:
      reinitialised[pattern].append(name)
    elif name not in source_flat:
      missing.append(name)
    elif tuple(source_flat[name].shape) != tuple(target_flat[name].shape):
      mismatched.append(f"{name}: shape {tuple(source_flat[name].shape)} in the source, "
                        f"{tuple(target_flat[name].shape)} in the target")
    else:
      loaded.append(name)
  for name in sorted(source_flat):
    pattern = _first_match(name, patterns)
    if pattern is not None:
      excluded[pattern].append(name)
    elif name not in target_flat:
      extra.append(name)
  problems = (mismatched + [f"not in the source: {m}" for m in _by_module(missing)]
              + [f"in the source, not in the target: {m}" for m in _by_module(extra)])
  if problems:
    hint = ("\n  (a parameter may be left out with an exclude pattern, e.g. 'head/*')"
            if any(p.startswith("head/") for p in mismatched + extra) else "")
    raise PretrainedError(
        f"{source}: cannot initialise the {target_model.config.width}-wide classifier from "
        f"this {kind_of(source_model)} checkpoint{_trunk_differences(source_model, target_model)}"
        f" ({len(problems)} problem(s), exclude={list(patterns)}):\n  "
        + "\n  ".join(_listed(problems)) + hint)
  return InitReport(
      source=source, source_kind=kind_of(source_model), loaded=loaded,
      num_loaded_values=int(sum(np.prod(target_flat[n].shape) for n in loaded)),
      excluded=excluded, reinitialised=reinitialised,
      unused_patterns=[p for p in patterns if not excluded[p] and not reinitialised[p]])


def _placed_like(value, leaf):
  """The source value in the target leaf's dtype, and on its sharding if it is a jax.Array."""
  value = np.asarray(value, dtype=leaf.dtype)
  if isinstance(leaf, jax.Array):
    # Every process holds the whole value, so each fills its own shards (multi-host safe).
    return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])
  return value


def copy_params(source_params, target_params, report: InitReport):
  """target_params with the report's `loaded` paths replaced by the source's values."""
  source_flat, target_flat = _flat(source_params), _flat(target_params)
  for name in report.loaded:
    target_flat[name] = _placed_like(source_flat[name], target_flat[name])
  params = traverse_util.unflatten_dict(target_flat, sep="/")
  return {"params": params} if set(target_params) == {"params"} else params


def init_from(path: Union[str, os.PathLike], target_model: nn.Module, target_params, *,
              exclude: Union[str, Sequence[str]] = DEFAULT_EXCLUDE, expect: str = "pretrain",
              **load_overrides) -> Tuple[Any, InitReport]:
  """(params, report): target_params (a fresh Classifier's params tree, unboxed NumPy or
  jax.Array leaves) with every non-excluded parameter copied from the checkpoint at `path`.

  expect: the source kind, 'pretrain' (default; a classifier source is an error), 'classifier'
  (e.g. an IN1K-fine-tuned trunk for SSv2) or 'any'. Loaded leaves take the target leaf's dtype
  and sharding; the excluded ones (by default the post-pool norm and the head) are the target's
  own fresh values. load_overrides go to `load` (e.g. img_size/num_frames for a .torch file whose
  position table is not the official 16-frame one).
  """
  source = os.fspath(paths.workdir_path(path))
  _check_expect(expect)
  _check_target(target_model, source)  # before reading a file of up to 2.6 GB
  source_model, source_variables = load(source, **load_overrides)
  report = plan(source_model, source_variables["params"], target_model, target_params,
                exclude=exclude, expect=expect, source=source)
  return copy_params(source_variables["params"], target_params, report), report
