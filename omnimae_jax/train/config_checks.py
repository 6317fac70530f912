"""Checks a whole config before anything runs: each error is one line naming the dotted field, its
value and what is allowed (DESIGN §4).

No JAX computation, no data, no compilation. The plain-number checks import nothing and run
first, so the common mistakes are reported at once; the enum, model and data-source checks import
the modules that own the allowed values (JAX, Flax, and TensorFlow for the mask counts).

Extending: add `Rule`s to a mode's table, or write a `_check(config, "optim.lr", ...)` line.
"""
import dataclasses
import math
import numbers
import os
from typing import Any, Callable

from omnimae_jax import paths

MODES = ("pretrain", "finetune", "evaluate")
TRAINING_MODES = ("pretrain", "finetune")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")  # what models.vit.ModelConfig accepts
MESH_EXAMPLE = "--config.mesh=\"(('data', -1), ('model', 1))\""


class ConfigError(ValueError):
  """A configuration the run cannot start with; the message is one line naming the field."""


def field_value(config, field: str):
  """config['a']['b'] for field 'a.b'; a missing field is a ConfigError naming it."""
  value = config
  for depth, key in enumerate(field.split(".")):
    if not hasattr(value, "keys") or key not in value:
      parent = ".".join(field.split(".")[:depth]) or "the config"
      raise ConfigError(f"{field} is missing ({parent} has no {key!r}); this mode needs it")
    value = value[key]
  return value


@dataclasses.dataclass(frozen=True)
class Rule:
  """A predicate on one value and the words that say what it accepts."""
  ok: Callable[[Any], bool]
  allowed: str


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def integer(minimum=None, meaning="") -> Rule:
  """An integer (>= minimum); `meaning` says what a special value does, e.g. '0: off'."""
  if minimum is None:
    return Rule(_is_int, "an integer")
  note = f" ({meaning})" if meaning else ""
  return Rule(lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}{note}")


def number(low, high=math.inf, *, low_open=False, high_open=True) -> Rule:
  """A finite number in the interval; the brackets say which ends are included."""
  def ok(value):
    return (_is_finite(value) and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high))

  if high == math.inf:
    return Rule(ok, f"a number {'>' if low_open else '>='} {low}")
  return Rule(ok, f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def one_of(values) -> Rule:
  values = tuple(values)
  return Rule(lambda v: isinstance(v, str) and v in values, f"one of {values}")


def non_empty_string(what: str) -> Rule:
  return Rule(lambda v: isinstance(v, str) and bool(v), f"a non-empty string ({what})")


def _check(config, field: str, ok: Callable[[Any], bool], allowed: str):
  value = field_value(config, field)
  if not ok(value):
    raise ConfigError(f"{field}={value!r}; allowed: {allowed}")


def _check_rule(config, field: str, rule: Rule):
  _check(config, field, rule.ok, rule.allowed)


# Fields of every training mode that need nothing but their own value.
TRAINING_RULES = (
    ("seed", integer()),
    ("total_steps", integer(0)),
    ("optim.lr", number(0, low_open=True)),
    ("optim.init_lr", number(0)),
    ("optim.end_lr", number(0)),
    ("optim.warmup_fraction", number(0, 1)),
    ("optim.b1", number(0, 1)),
    ("optim.b2", number(0, 1)),
    ("optim.eps", number(0, low_open=True)),
    ("optim.weight_decay", number(0)),
    ("optim.grad_clip_norm", number(0)),  # 0: no clipping
    ("optim.accum_steps", integer(1)),
    ("optim.layer_decay", number(0, 1, low_open=True, high_open=False)),  # 1.0: off
    ("checkpoint.keep", integer(1)),
    ("checkpoint.every_steps", integer(1)),
    ("log_every_steps", integer(1)),
    ("data.prefetch", integer(1)),
    ("data.data_dir", non_empty_string("a directory")),
    ("model.compute_dtype", one_of(COMPUTE_DTYPES)),
    ("model.drop_path", number(0, 1)),
    ("model.img_size", integer(1)),
    ("model.num_frames", integer(1)),
)
PRETRAIN_RULES = (
    ("recon_every_steps", integer(0, "0: no reconstruction pictures")),
)
FINETUNE_RULES = (
    ("model.num_classes", integer(1)),
    ("model.head_init_std", number(0)),
    ("augment.mixup_alpha", number(0)),  # 0: off
    ("augment.cutmix_alpha", number(0)),  # 0: off
    ("augment.mix_prob", number(0, 1, high_open=False)),
    ("augment.switch_prob", number(0, 1, high_open=False)),
    ("augment.label_smoothing", number(0, 1)),
    ("augment.erase_prob", number(0, 1, high_open=False)),
    ("augment.erase_max_area", number(0, 1, low_open=True, high_open=False)),
    ("augment.erase_max_aspect", number(0)),  # 0: 1 / min_aspect (timm)
)
EVALUATE_RULES = (
    ("checkpoint", non_empty_string("an official .torch file, a model directory or a workdir")),
    ("compute_dtype", one_of(COMPUTE_DTYPES)),
    ("data.data_dir", non_empty_string("a directory")),
)
MODE_RULES = {"pretrain": TRAINING_RULES + PRETRAIN_RULES,
              "finetune": TRAINING_RULES + FINETUNE_RULES,
              "evaluate": EVALUATE_RULES}


def check_config(config):
  """Raises ConfigError (one line: field, value, what is allowed) for the first bad field."""
  _check_rule(config, "mode", one_of(MODES))
  for field, rule in MODE_RULES[config.mode]:
    _check_rule(config, field, rule)
  if config.mode in TRAINING_MODES and config.total_steps == 0:
    _check(config, "epochs", integer(1).ok,
           "an integer >= 1 (or set total_steps > 0 to train a fixed number of steps)")
  check_mesh(field_value(config, "mesh"))
  _check_enums(config)
  if config.mode in TRAINING_MODES:
    model_cfg = check_model(config)
    check_sources(config, model_cfg)
    if config.mode == "finetune":
      from omnimae_jax.train import batch_augment  # noqa: PLC0415
      _check_rule(config, "augment.erase_mode", one_of(batch_augment.ERASE_MODES))
  check_evals(config)


EVAL_KINDS = ("classification", "knn")
EVAL_AVERAGES = ("logits", "softmax")


def check_evals(config):
  """config.evals: each evaluator's kind, schedule and evaluation source(s)."""
  from omnimae_jax.data import eval_config  # noqa: PLC0415

  for name, evaluator in (config.get("evals") or {}).items():
    prefix = f"evals.{name}"
    _check_rule(config, f"{prefix}.kind", one_of(EVAL_KINDS))
    _check_rule(config, f"{prefix}.every_steps", integer(0, "0: off during training"))
    source_fields = ["source"] + (["train_source"] if evaluator.kind == "knn" else [])
    if evaluator.kind == "classification":
      _check_rule(config, f"{prefix}.average", one_of(EVAL_AVERAGES))
      _check_rule(config, f"{prefix}.view_chunk", integer(1))
    else:
      _check_rule(config, f"{prefix}.k", integer(1))
      _check_rule(config, f"{prefix}.temperature", number(0, low_open=True))
    for field in source_fields:
      try:
        eval_config.validate_eval_source(f"{prefix}.{field}", field_value(config,
                                                                        f"{prefix}.{field}"))
      except ValueError as error:
        raise ConfigError(str(error)) from error


def check_mesh(mesh):
  """config.mesh: ((name, size), ...) naming 'data' and 'model' once each (what
  sharding.make_mesh takes); sizes >= 1, at most one -1 (the devices left over)."""
  from omnimae_jax.train import sharding  # noqa: PLC0415 (imports JAX)

  names = (sharding.DATA, sharding.MODEL)
  allowed = (f"a sequence of (name, size) pairs naming {names[0]!r} and {names[1]!r} once each, "
             f"integer sizes >= 1 and at most one -1 (the devices left over), e.g. "
             f"{MESH_EXAMPLE}")
  is_pairs = (isinstance(mesh, (tuple, list))
              and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in mesh))
  if not is_pairs:
    raise ConfigError(f"mesh={mesh!r}; allowed: {allowed}")
  mesh_names = sorted(str(name) for name, _ in mesh)
  sizes = [size for _, size in mesh]
  if (mesh_names != sorted(names) or not all(_is_int(s) and (s >= 1 or s == -1) for s in sizes)
      or sizes.count(-1) > 1):
    raise ConfigError(f"mesh={tuple(tuple(pair) for pair in mesh)!r}; allowed: {allowed}")


def _check_enums(config):
  # The allowed values live with the code that uses them (and that imports JAX).
  from omnimae_jax.train import optim, sharding  # noqa: PLC0415

  _check_rule(config, "sharding", one_of(sharding.RULES))
  if config.mode in TRAINING_MODES:
    _check_rule(config, "optim.schedule", one_of(optim.SCHEDULES))
    _check_rule(config, "optim.layer_decay_convention", one_of(optim.LAYER_DECAY_CONVENTIONS))


def check_model(config):
  """config.model resolved to the ModelConfig the loop builds; returns it."""
  from omnimae_jax import models  # noqa: PLC0415 (imports Flax)
  from omnimae_jax.train import state as state_lib  # noqa: PLC0415

  _check_rule(config, "model.size", one_of(models.VARIANTS))
  _check(config, "model.patch_size",
         lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(
             _is_int(p) and p >= 1 for p in v),
         "three integers >= 1: (time, height, width)")
  overrides = {key: value for key, value in config.model.items()
               if key not in state_lib.TRAINING_ONLY_MODEL_KEYS}
  for heads, width in (("num_heads", "width"), ("decoder_heads", "decoder_width")):
    for field in (heads, width):  # a zero here would divide by zero below
      if field in overrides:
        _check_rule(config, f"model.{field}", integer(1))
  try:
    model_cfg = models.model_config(config.model.size, **overrides)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"model: {error}") from error
  for heads, width in (("num_heads", "width"), ("decoder_heads", "decoder_width")):
    _check_divides(model_cfg, config.model.size, heads, width)
  return model_cfg


def _check_divides(model_cfg, size, heads_field, width_field):
  heads, width = getattr(model_cfg, heads_field), getattr(model_cfg, width_field)
  if width % heads:
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    raise ConfigError(f"model.{heads_field}={heads} does not divide model.{width_field}={width} "
                      f"(model.size={size!r}); allowed: a divisor of {width}: {divisors}")


def check_sources(config, model_cfg):
  """Each data source through the pipeline's own validation (mask ratio vs visible tokens
  included), plus what a source needs from the model."""
  # Imported here: the mask counts import TensorFlow (seconds).
  from omnimae_jax.data import config as data_config  # noqa: PLC0415

  sources = field_value(config, "data.sources")
  if not hasattr(sources, "items") or not sources:
    shown = dict(sources) if hasattr(sources, "items") else sources
    raise ConfigError(f"data.sources={shown!r}; allowed: at least one named source, e.g. "
                      "{'images': ...}")
  for name, source in sources.items():
    try:
      data_config.validate_source(name, source, model_cfg.patch_size)
    except ValueError as error:  # its message names the source and the field
      raise ConfigError(str(error)) from error
    except (TypeError, KeyError, AttributeError) as error:  # e.g. a string where a number goes
      raise ConfigError(f"data.sources.{name}: {type(error).__name__}: {error}") from error
    if source.modality == "video" and source.num_frames > model_cfg.num_frames:
      raise ConfigError(f"data.sources.{name}.num_frames={source.num_frames} exceeds "
                        f"model.num_frames={model_cfg.num_frames} (the position table's length)")


def check_paths(config, workdir: str):
  """--workdir and data.data_dir must be directories, or not exist yet (they are created)."""
  _check_directory("--workdir", workdir)
  data = config.get("data")
  if data is not None and isinstance(data.get("data_dir"), str):
    _check_directory("data.data_dir", os.path.expanduser(data.data_dir))


def _check_directory(name: str, path: str):
  if paths.is_url(path):  # a bucket: nothing local to check, and os.path would mangle it
    return
  existing = os.path.abspath(path)
  while not os.path.exists(existing):  # the nearest part of the path that exists
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "it" if existing == os.path.abspath(path) else repr(existing)
    raise ConfigError(f"{name}={path!r}: {where} is a file; allowed: a directory (created if "
                      "missing)")
