"""Imports the official OmniMAE PyTorch checkpoints (SPEC §6.2) into our Flax models.

    python -m omnimae_jax.convert --input vitb_pretrain.torch --output DIR [--overwrite]
    model, variables = omnimae_jax.convert.load_official("vitb_ssv2_ft.torch")

Size (tiny ... huge: width, depth and patch size) and kind (pretrain: a decoder and a pixel head;
classifier: a [num_classes, D] head, as in the fine-tuned files) are read off the keys and shapes;
flags can name them. The file is read by `torch_reader` (no pickled code runs). Every parameter of
our model is filled from exactly one tensor; every tensor of the file is used, or is a fixed
position table that is compared with ours; anything else is an error and nothing is written.
Plain state dicts and trainer checkpoints (weights under 'model', heads as 'heads.0.*' or
'heads.0.projector.*') are both accepted.
"""
import argparse
import dataclasses
import math
import os
import sys
from typing import Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from omnimae_jax import models, torch_reader
from omnimae_jax import official_layout as layout
from omnimae_jax.models import layers
from omnimae_jax.models.vit import ModelConfig
from omnimae_jax.train import checkpoint


class ConversionError(ValueError):
  """The file does not hold an OmniMAE model we can build, or it does not fit the one asked for."""


# ----------------------------------------------------------------- reading the architecture


@dataclasses.dataclass
class ConversionReport:
  """What a conversion found and did; `summary()` is what the command line prints."""
  size: str
  kind: str
  config: ModelConfig
  num_tensors: int = 0
  num_parameters: int = 0
  checked_buffers: List[str] = dataclasses.field(default_factory=list)
  zero_filled: List[str] = dataclasses.field(default_factory=list)
  skipped_entries: List[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    cfg = self.config
    lines = [f"{self.size} {self.kind}: width {cfg.width}, depth {cfg.depth}, patch "
             f"{'x'.join(map(str, cfg.patch_size))}, img_size {cfg.img_size}, num_frames "
             f"{cfg.num_frames}" + (f", decoder_qkv_bias {cfg.decoder_qkv_bias}"
                                    if self.kind == "pretrain" else
                                    f", num_classes {cfg.num_classes}"),
             f"{self.num_tensors} tensors -> {self.num_parameters:,} parameters"]
    if self.checked_buffers:
      lines.append("position tables equal to ours: " + ", ".join(self.checked_buffers))
    else:
      lines.append("no position tables in the file (nothing to compare)")
    if self.zero_filled:
      lines.append(f"zero-filled (absent from the file): {len(self.zero_filled)} decoder qkv "
                   f"biases")
    if self.skipped_entries:
      lines.append("trainer-checkpoint entries that are not weights, skipped: "
                   + ", ".join(self.skipped_entries))
    return "\n".join(lines)


def model_state(loaded, source: str) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """The weights of a loaded checkpoint, and the names of trainer entries that are not weights."""
  if not isinstance(loaded, dict):
    raise ConversionError(f"{source}: holds a {type(loaded).__name__}, not a state dict")
  skipped = []
  if isinstance(loaded.get("model"), dict):  # the official trainer's checkpoint.pt
    skipped = sorted(str(k) for k in loaded if k != "model")
    loaded = loaded["model"]
  not_tensors = [str(k) for k, v in loaded.items()
                 if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if not_tensors:
    raise ConversionError(f"{source}: not a state dict; entries that are not tensors: "
                          f"{not_tensors[:10]}")
  state = dict(loaded)
  if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
    state = {k[len("module."):]: v for k, v in state.items()}
  if layout.PATCH_EMBED_WEIGHT not in state:
    raise ConversionError(f"{source}: not an OmniMAE checkpoint: no {layout.PATCH_EMBED_WEIGHT} "
                          f"(keys start with {sorted(state)[:5]})")
  if state[layout.PATCH_EMBED_WEIGHT].ndim != 5:
    raise ConversionError(f"{source}: {layout.PATCH_EMBED_WEIGHT} has shape "
                          f"{state[layout.PATCH_EMBED_WEIGHT].shape}, not a Conv3d weight")
  return state, skipped


def detect_size(state: Mapping[str, np.ndarray], source: str) -> str:
  """The named size whose width, depth and patch size the file's trunk has."""
  width, _, *patch = state[layout.PATCH_EMBED_WEIGHT].shape
  depth = len(layout.block_indices(state, "trunk.blocks."))
  for name in models.VARIANTS:
    cfg = models.model_config(name)
    if (cfg.width, cfg.depth, tuple(cfg.patch_size)) == (width, depth, tuple(patch)):
      return name
  known = {n: (models.model_config(n).width, models.model_config(n).depth,
               models.model_config(n).patch_size) for n in models.VARIANTS}
  raise ConversionError(f"{source}: no known size has width {width}, depth {depth} and patch "
                        f"{tuple(patch)} (known (width, depth, patch): {known}); pass --size to "
                        f"convert it as one of them anyway")


def clip_geometry(state: Mapping[str, np.ndarray], patch_size, overrides: dict,
                  source: str) -> dict:
  """img_size and num_frames that give the stored position table its length.

  The table is 1-D over T'*H'*W' positions, so its length alone cannot tell T' from H'W': the
  official num_frames (16) is assumed unless one of the two is given.
  """
  table = state.get(layout.ENCODER_POSITIONS)
  if table is None or ("img_size" in overrides and "num_frames" in overrides):
    return {}
  if table.ndim not in (2, 3):
    raise ConversionError(f"{source}: {layout.ENCODER_POSITIONS} has shape {table.shape}, not "
                          f"a [1, N, D] position table")
  positions = table.shape[-2]
  pt, ph, pw = patch_size
  if "img_size" in overrides:
    per_frame = (overrides["img_size"] // ph) * (overrides["img_size"] // pw)
    if positions % per_frame:
      raise ConversionError(f"{source}: a position table of {positions} rows does not fit "
                            f"img_size {overrides['img_size']} ({per_frame} patches per frame)")
    return {"num_frames": positions // per_frame * pt}
  num_frames = overrides.get("num_frames", ModelConfig.num_frames)
  time_slices = num_frames // pt
  side = math.isqrt(positions // max(time_slices, 1))
  if positions % max(time_slices, 1) or side * side * time_slices != positions:
    raise ConversionError(f"{source}: a position table of {positions} rows is not {time_slices} "
                          f"time slices of a square grid; pass --img_size and --num_frames")
  return {"img_size": side * ph, "num_frames": num_frames}


def architecture(state: Mapping[str, np.ndarray], head_prefix: Optional[str], kind: str,
                 source: str, overrides: dict) -> dict:
  """ModelConfig fields the file decides (the named size fixes the rest); overrides win."""
  fields = {"qkv_bias": "trunk.blocks.0.attn.qkv.bias" in state}
  patch_size = tuple(state[layout.PATCH_EMBED_WEIGHT].shape[2:])
  fields.update(clip_geometry(state, patch_size, overrides, source))
  if kind == "pretrain":
    fields["decoder_qkv_bias"] = layout.file_has_decoder_qkv_bias(state)
  elif head_prefix is not None:
    fields["num_classes"] = state[head_prefix + "weight"].shape[0]
  return {**fields, **overrides}


# ------------------------------------------------------------------------------- conversion


def parameter_shapes(model: nn.Module) -> Dict[Tuple[str, ...], jax.ShapeDtypeStruct]:
  """Our model's parameters as {path: shape}, without allocating them (jax.eval_shape)."""
  cfg = model.config
  pixels = jax.ShapeDtypeStruct((1, cfg.img_size, cfg.img_size, 3), jnp.float32)
  rng = jax.random.PRNGKey(0)
  if isinstance(model, models.MAEPretrain):
    num_tokens = (cfg.img_size // cfg.patch_size[1]) * (cfg.img_size // cfg.patch_size[2])
    mask = jax.ShapeDtypeStruct((1, num_tokens), jnp.bool_)
    keep_idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda p, m, k: model.init(rng, p, m, k), pixels, mask, keep_idx)
  else:
    variables = jax.eval_shape(lambda p: model.init(rng, p), pixels)
  return traverse_util.flatten_dict(nn.unbox(variables)["params"])


def map_parameters(state: Mapping[str, np.ndarray], shapes, head_prefix: str,
                   report: ConversionReport, problems: List[str]) -> Tuple[dict, set]:
  """{path: float32 array} for every parameter found in the file, and the file keys used."""
  params, used = {}, set()
  # The published files have no decoder qkv bias (SPEC §1.3): a model built with one starts it
  # at zero, which computes exactly the official function.
  zero_fill_decoder_qkv_bias = not layout.file_has_decoder_qkv_bias(state)
  for path, spec in shapes.items():
    key = layout.torch_key(path, head_prefix)
    name = "/".join(path)
    if key not in state:
      if layout.is_decoder_qkv_bias(path) and zero_fill_decoder_qkv_bias:
        params[path] = np.zeros(spec.shape, np.float32)
        report.zero_filled.append(name)
      else:
        problems.append(f"{name}: not filled (no {key} in the file)")
      continue
    rule = layout.tensor_rule(path)
    tensor = state[key]
    expected = tuple(rule.torch_shape(spec.shape))
    if tuple(tensor.shape) != expected:
      problems.append(f"{key}: shape {tuple(tensor.shape)} in the file, {expected} expected "
                      f"(for {name} {tuple(spec.shape)})")
    elif not layout.is_floating(tensor.dtype):
      problems.append(f"{key}: dtype {tensor.dtype}, expected floating point")
    else:
      value = rule.to_flax(np.asarray(tensor).astype(np.float32, copy=False), spec.shape)
      params[path] = np.ascontiguousarray(value)
      used.add(key)
  return params, used


def check_position_tables(state: Mapping[str, np.ndarray], model: nn.Module,
                          problems: List[str]) -> Tuple[List[str], List[str]]:
  """Compares stored position buffers with layers.sincos_table: (keys examined, keys equal)."""
  cfg = model.config
  num_positions = math.prod(cfg.table_grid)
  keys = [layout.ENCODER_POSITIONS]
  if isinstance(model, models.MAEPretrain):
    keys.append(layout.DECODER_POSITIONS)  # the decoder's own copy, at encoder width (SPEC §1.2)
  examined = [key for key in keys if key in state]
  checked = []
  for key in examined:
    table = np.asarray(state[key])
    if table.shape not in ((1, num_positions, cfg.width), (num_positions, cfg.width)):
      problems.append(f"{key}: shape {table.shape}, expected (1, {num_positions}, {cfg.width}) "
                      f"for img_size {cfg.img_size} and num_frames {cfg.num_frames}")
      continue
    ours = layers.sincos_table(num_positions, cfg.width)
    difference = float(np.max(np.abs(table.reshape(ours.shape).astype(np.float64) - ours)))
    tolerance = 1e-4 if table.dtype.itemsize >= 4 else 1e-2  # float32 vs half-precision files
    if not difference <= tolerance:
      problems.append(f"{key}: differs from the fixed 1-D sin-cos table by up to {difference:.3g}"
                      f" (tolerance {tolerance}); the file's model uses other position "
                      f"embeddings, which this model cannot represent")
      continue
    checked.append(key)
  return examined, checked


def _raise_problems(problems: List[str], source: str, report: ConversionReport):
  # Every problem is listed: a user comparing architectures needs the whole picture.
  raise ConversionError(
      f"{source}: does not fit the {report.size} {report.kind} model "
      f"({len(problems)} problem(s); nothing written):\n  " + "\n  ".join(problems))


def resolve_model(state: Mapping[str, np.ndarray], source: str, size: Optional[str],
                  kind: Optional[str], overrides: dict) -> Tuple[nn.Module, ConversionReport, str]:
  """The module the file describes (size and kind detected unless given), and its head prefix."""
  detected_kind = layout.detect_kind(state)
  if kind is not None and kind != detected_kind:
    has = "has" if detected_kind == "pretrain" else "has no"
    raise ConversionError(f"{source}: kind {kind!r} requested, but the file is a "
                          f"{detected_kind} checkpoint (it {has} trunk.decoder.* weights)")
  size = size or detect_size(state, source)
  head_prefix = layout.find_head_prefix(state)
  fields = architecture(state, head_prefix, detected_kind, source, overrides)
  try:
    model = models.build(size, detected_kind, **fields)
  except ValueError as e:
    raise ConversionError(f"{source}: cannot build a {size} {detected_kind} model: {e}") from e
  return model, ConversionReport(size, detected_kind, model.config), head_prefix or "head."


def convert_state_dict(state: Mapping[str, np.ndarray], size: Optional[str] = None,
                       kind: Optional[str] = None, source: str = "state dict", **overrides
                       ) -> Tuple[nn.Module, dict, ConversionReport]:
  """(module, {'params': ...}, report) from an official state dict (torch layout, NumPy values).

  Raises ConversionError listing every unfilled parameter, unused key, shape mismatch and
  position-table mismatch.
  """
  model, report, head_prefix = resolve_model(state, source, size, kind, overrides)
  problems = []
  shapes = parameter_shapes(model)
  params, used = map_parameters(state, shapes, head_prefix, report, problems)
  examined, report.checked_buffers = check_position_tables(state, model, problems)
  unused = sorted(set(state) - used - set(examined))
  problems += [f"{key}: in the file but not used by the model" for key in unused]
  if problems:
    _raise_problems(problems, source, report)
  report.num_tensors = len(used)
  report.num_parameters = sum(int(v.size) for v in params.values())
  return model, {"params": traverse_util.unflatten_dict(params)}, report


def read_official(path: str, size: Optional[str] = None, kind: Optional[str] = None,
                  reader: str = "restricted", **overrides
                  ) -> Tuple[nn.Module, dict, ConversionReport]:
  """Reads and converts an official checkpoint file: (module, variables, report)."""
  source = os.fspath(path)
  state, skipped = model_state(torch_reader.load(source, reader), source)
  model, variables, report = convert_state_dict(state, size, kind, source, **overrides)
  report.skipped_entries = skipped
  return model, variables, report


def load_official(path: str, size: Optional[str] = None, kind: Optional[str] = None,
                  reader: str = "restricted", **overrides) -> Tuple[nn.Module, dict]:
  """(module, variables) for an official .torch file, ready for `module.apply(variables, ...)`.

  A pretrain file gives MAEPretrain (apply(variables, pixels, mask) -> per-token pixel
  predictions); a fine-tuned one gives Classifier (apply(variables, pixels) -> logits). Any
  ModelConfig field can be overridden, e.g. compute_dtype='bfloat16', remat=True.
  """
  model, variables, _ = read_official(path, size, kind, reader, **overrides)
  return model, variables


def refuse_existing_output(output: str, overwrite: bool):
  """Fails before the (possibly minutes-long) read when the output would be refused anyway."""
  if os.path.exists(output) and not os.path.isdir(output):
    raise checkpoint.CheckpointError(f"{output} exists and is not a directory")
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    raise checkpoint.CheckpointError(f"{output} already exists and is not empty; pass "
                                     f"--overwrite to replace it")


def convert(input_path: str, output_dir: str, size: Optional[str] = None,
            kind: Optional[str] = None, overwrite: bool = False, reader: str = "restricted",
            **overrides) -> ConversionReport:
  """Converts an official file into a model directory (checkpoint.export_model, atomic)."""
  refuse_existing_output(output_dir, overwrite)
  model, variables, report = read_official(input_path, size, kind, reader, **overrides)
  checkpoint.export_model(output_dir, model, variables, overwrite=overwrite)
  return report


# ----------------------------------------------------------------------------- command line


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m omnimae_jax.convert",
      description="Convert an official OmniMAE PyTorch checkpoint into an omnimae_jax model "
                  "directory (readable with omnimae_jax.train.checkpoint.load_model).")
  parser.add_argument("--input", required=True, help="the .torch file (state dict or trainer "
                      "checkpoint)")
  parser.add_argument("--output", required=True, help="the model directory to write")
  parser.add_argument("--size", choices=sorted(models.VARIANTS), help="default: from the shapes")
  parser.add_argument("--kind", choices=sorted(models.KINDS), help="default: from the keys")
  parser.add_argument("--img_size", type=int, help="default: from the position table "
                      "(assuming 16 frames)")
  parser.add_argument("--num_frames", type=int, help="default: 16, or from the position table")
  parser.add_argument("--decoder_qkv_bias", action="store_true", default=None,
                      help="build the decoder with a qkv bias even if the file has none (zeros)")
  parser.add_argument("--reader", choices=torch_reader.READERS, default="restricted",
                      help="'torch' uses torch.load(weights_only=True) (needs PyTorch)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  overrides = {name: getattr(args, name) for name in ("img_size", "num_frames",
                                                      "decoder_qkv_bias")
               if getattr(args, name) is not None}
  try:
    report = convert(args.input, args.output, args.size, args.kind, args.overwrite, args.reader,
                     **overrides)
  except (ConversionError, torch_reader.TorchFileError, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2  # bad input: one line and exit code 2, as main.py does
  print(f"converted {args.input}\n{report.summary()}\nwrote {os.path.abspath(args.output)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
