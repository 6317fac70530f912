"""Importing official OmniMAE checkpoints: placement of every tensor, forward-pass parity with an
independent NumPy model of the official code, and the bad-input contract.

The official layouts here are written from SPEC §6.2's key table (not from the converter), and the
NumPy reference reads the torch-layout state dict directly, so a wrong transpose anywhere shows.
"""
import collections
import os
import subprocess
import sys
import zlib

import jax
import ml_dtypes
import numpy as np
import pytest
from scipy import special

from omnimae_jax import convert, models
from omnimae_jax.models import mae
from omnimae_jax.train import checkpoint
from test_convert_torchfile import Global, Reduce, save_torch_zip

LAYOUTS = {  # SPEC §1.3 (tiny: the test layout of the model issue)
    "tiny": dict(width=192, depth=4, heads=3, patch=(2, 16, 16), dec_width=128, dec_depth=2,
                 dec_heads=4),
    "base": dict(width=768, depth=12, heads=12, patch=(2, 16, 16), dec_width=384, dec_depth=4,
                 dec_heads=16),
    "huge": dict(width=1280, depth=32, heads=16, patch=(2, 14, 14), dec_width=512, dec_depth=8,
                 dec_heads=16),
}
TINY_IMG, TINY_FRAMES = 32, 4  # 2 x 2 x 2 = 8 positions


# ------------------------------------------------------------------- the official layout


def official_sincos(num_positions, dim):
  """The VideoMAE/Transformer table of SPEC §1.2, written per position like the original."""
  table = np.zeros((num_positions, dim))
  for j in range(dim):
    angle = np.arange(num_positions) / np.power(10000, 2 * (j // 2) / dim)
    table[:, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
  return table.astype(np.float32)[None]  # [1, N, D], as the buffer is stored


def _block_entries(prefix, flax_prefix, width, heads, qkv_bias):
  """(torch key, torch shape, our path, our tensor -> torch layout) for one transformer block.

  The last item maps our tensor back to the file's layout, possibly with a fused axis split
  (e.g. qkv rows as (3, heads, head_dim)); the file tensor is reshaped to match before comparing.
  """
  head_dim = width // heads
  linear = lambda kernel: kernel.T
  same = lambda value: value
  entries = [
      (f"{prefix}norm1.weight", (width,), flax_prefix + ("norm1", "scale"), same),
      (f"{prefix}norm1.bias", (width,), flax_prefix + ("norm1", "bias"), same),
      # rows of qkv.weight are (q|k|v, head, head_dim); ours is [D, 3, heads, head_dim]
      (f"{prefix}attn.qkv.weight", (3 * width, width), flax_prefix + ("attn", "qkv", "kernel"),
       lambda kernel: kernel.transpose(1, 2, 3, 0)),
      # columns of proj.weight are (head, head_dim); ours is [heads, head_dim, D]
      (f"{prefix}attn.proj.weight", (width, width), flax_prefix + ("attn", "proj", "kernel"),
       lambda kernel: kernel.transpose(2, 0, 1)),
      (f"{prefix}attn.proj.bias", (width,), flax_prefix + ("attn", "proj", "bias"), same),
      (f"{prefix}norm2.weight", (width,), flax_prefix + ("norm2", "scale"), same),
      (f"{prefix}norm2.bias", (width,), flax_prefix + ("norm2", "bias"), same),
      (f"{prefix}mlp.fc1.weight", (4 * width, width), flax_prefix + ("mlp", "fc1", "kernel"),
       linear),
      (f"{prefix}mlp.fc1.bias", (4 * width,), flax_prefix + ("mlp", "fc1", "bias"), same),
      (f"{prefix}mlp.fc2.weight", (width, 4 * width), flax_prefix + ("mlp", "fc2", "kernel"),
       linear),
      (f"{prefix}mlp.fc2.bias", (width,), flax_prefix + ("mlp", "fc2", "bias"), same),
  ]
  if qkv_bias:
    entries.append((f"{prefix}attn.qkv.bias", (3 * width,), flax_prefix + ("attn", "qkv", "bias"),
                    same))
  return entries


def official_entries(layout, num_positions, kind="pretrain", num_classes=None,
                     decoder_qkv_bias=False, head_prefix="head."):
  """Every key of an official state dict (SPEC §6.2): (key, shape, our path, our tensor -> the
  file's layout). Position buffers have no destination (None): they are compared, not stored.
  """
  lay = LAYOUTS[layout]
  width, patch = lay["width"], lay["patch"]
  entries = [("trunk.pos_embed", (1, num_positions, width), None, None),
             # Conv3d [O, C, kt, kh, kw]; ours [kt, kh, kw, C, O]
             ("trunk.patch_embed.proj.1.weight", (width, 3) + patch,
              ("trunk", "patch_embed", "proj", "kernel"),
              lambda kernel: kernel.transpose(4, 3, 0, 1, 2)),
             ("trunk.patch_embed.proj.1.bias", (width,), ("trunk", "patch_embed", "proj", "bias"),
              lambda b: b)]
  for i in range(lay["depth"]):
    entries += _block_entries(f"trunk.blocks.{i}.", ("trunk", f"blocks_{i}"), width, lay["heads"],
                              qkv_bias=True)
  entries += [("trunk.norm.weight", (width,), ("trunk", "norm", "scale"), lambda w: w),
              ("trunk.norm.bias", (width,), ("trunk", "norm", "bias"), lambda b: b)]
  if kind == "classifier":
    return entries + [
        (f"{head_prefix}weight", (num_classes, width), ("head", "kernel"), lambda w: w.T),
        (f"{head_prefix}bias", (num_classes,), ("head", "bias"), lambda b: b)]
  dec = lay["dec_width"]
  pixels = 3 * int(np.prod(patch))
  entries += [("trunk.mask_token", (1, width), ("decoder", "mask_token"), lambda w: w),
              ("trunk.decoder.pos_embed", (1, num_positions, width), None, None),
              ("trunk.decoder.decoder_embed.weight", (dec, width),
               ("decoder", "decoder_embed", "kernel"), lambda w: w.T),
              ("trunk.decoder.decoder_embed.bias", (dec,), ("decoder", "decoder_embed", "bias"),
               lambda b: b)]
  for j in range(lay["dec_depth"]):
    entries += _block_entries(f"trunk.decoder.decoder_blocks.{j}.",
                              ("decoder", f"decoder_blocks_{j}"), dec, lay["dec_heads"],
                              qkv_bias=decoder_qkv_bias)
  return entries + [
      ("trunk.decoder.norm.weight", (dec,), ("decoder", "norm", "scale"), lambda w: w),
      ("trunk.decoder.norm.bias", (dec,), ("decoder", "norm", "bias"), lambda b: b),
      (f"{head_prefix}weight", (pixels, dec), ("head", "kernel"), lambda w: w.T),
      (f"{head_prefix}bias", (pixels,), ("head", "bias"), lambda b: b)]


def official_value(key, shape):
  """Small pseudo-random data, reproducible per key (so it can be regenerated, not stored).

  Knuth's multiplicative hash of (element index + a per-key offset): distinct across elements
  and tensors, so any misplaced element shows, and 5x faster than np.random for ViT-H's 650M.
  """
  if key.endswith("pos_embed"):
    return official_sincos(shape[1], shape[2])
  bits = np.arange(int(np.prod(shape)), dtype=np.uint32)  # the only allocation: all in place
  bits += np.uint32(zlib.crc32(key.encode()))
  bits *= np.uint32(2654435761)  # wraps modulo 2**32: a bijection that scatters neighbours
  bits >>= np.uint32(9)  # 23 random mantissa bits ...
  bits |= np.uint32(0x3F800000)  # ... under the exponent of 1.0: a float32 in [1, 2)
  values = bits.view(np.float32).reshape(shape)
  values -= np.float32(1.0)
  values *= np.float32(0.2)
  is_norm_weight = key.endswith(("norm1.weight", "norm2.weight", "norm.weight"))
  values += np.float32(0.9 if is_norm_weight else -0.1)  # [0.9, 1.1) or [-0.1, 0.1)
  return values


class LazyStateDict(collections.abc.Mapping):
  """A state dict whose tensors are made when read: huge layouts without holding them twice."""

  def __init__(self, entries):
    self.shapes = {key: shape for key, shape, _, _ in entries}

  def __getitem__(self, key):
    return official_value(key, self.shapes[key])

  def __contains__(self, key):
    return key in self.shapes

  def __iter__(self):
    return iter(self.shapes)

  def __len__(self):
    return len(self.shapes)


def official_state(entries):
  return collections.OrderedDict((key, official_value(key, shape)) for key, shape, _, _ in entries)


def assert_every_tensor_placed(entries, params, values=official_value):
  """Each converted leaf, mapped back by the test's own rule, equals the file tensor; and the
  converted tree has no leaf the file did not provide (except zero-filled decoder qkv biases)."""
  placed = set()
  for key, shape, path, to_torch in entries:
    if path is None:
      continue
    leaf = params
    for name in path:
      leaf = leaf[name]
    ours = to_torch(np.asarray(leaf))  # views: no copy of ViT-H's 2.6 GB
    tensor = values(key, shape)
    assert tensor.size == ours.size, key
    if not np.array_equal(ours, tensor.reshape(ours.shape)):  # the fast check; then the message
      np.testing.assert_array_equal(ours, tensor.reshape(ours.shape), err_msg=key)
    placed.add(path)
  leaves = set()

  def collect(tree, prefix=()):
    for name, value in tree.items():
      if isinstance(value, dict):
        collect(value, prefix + (name,))
      else:
        leaves.add(prefix + (name,))

  collect(params)
  return leaves - placed


# ------------------------------------------------------- NumPy model of the official forward


def ref_layer_norm(x, state, prefix):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * state[prefix + "weight"] + state[prefix + "bias"]


def ref_linear(x, state, prefix):
  out = x @ state[prefix + "weight"].astype(np.float64).T
  return out + state[prefix + "bias"] if prefix + "bias" in state else out


def ref_attention(x, state, prefix, heads):
  batch, tokens, width = x.shape
  qkv = ref_linear(x, state, prefix + "qkv.").reshape(batch, tokens, 3, heads, width // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each [B, heads, N, head_dim]
  logits = q @ k.swapaxes(-1, -2) * (width // heads) ** -0.5
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, width)
  return ref_linear(out, state, prefix + "proj.")


def ref_block(x, state, prefix, heads):
  x = x + ref_attention(ref_layer_norm(x, state, prefix + "norm1."), state, prefix + "attn.",
                        heads)
  hidden = ref_linear(ref_layer_norm(x, state, prefix + "norm2."), state, prefix + "mlp.fc1.")
  hidden = 0.5 * hidden * (1 + special.erf(hidden / np.sqrt(2)))  # exact GELU
  return x + ref_linear(hidden, state, prefix + "mlp.fc2.")


def ref_embed(state, pixels):
  """PadIm2Video(repeat) + Conv3d (as a matmul over patches) + the stored position table.

  pixels: torch layout, [B,3,H,W] (image) or [B,3,T,H,W] (video).
  """
  weight = state["trunk.patch_embed.proj.1.weight"].astype(np.float64)
  width, _, pt, ph, pw = weight.shape
  is_image = pixels.ndim == 4
  if is_image:
    pixels = np.repeat(pixels[:, :, None], pt, axis=2)
  batch, channels, frames, height, wide = pixels.shape
  grid = (frames // pt, height // ph, wide // pw)
  patches = pixels.reshape(batch, channels, grid[0], pt, grid[1], ph, grid[2], pw)
  patches = patches.transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape(batch, int(np.prod(grid)), -1)
  tokens = patches @ weight.reshape(width, -1).T + state["trunk.patch_embed.proj.1.bias"]
  return tokens, is_image


def ref_positions(table, num_tokens):
  """The stored [1, N, D] table, or its first temporal slice (its first H'W' rows) for images."""
  return table[0, :num_tokens]


def ref_pretrain(state, layout, pixels, mask, head_prefix="head."):
  lay = LAYOUTS[layout]
  tokens, _ = ref_embed(state, pixels)
  batch, num_tokens, width = tokens.shape
  tokens = tokens + ref_positions(state["trunk.pos_embed"], num_tokens)
  x = tokens[~mask].reshape(batch, -1, width)  # visible tokens, raster order
  for i in range(lay["depth"]):
    x = ref_block(x, state, f"trunk.blocks.{i}.", lay["heads"])
  x = ref_layer_norm(x, state, "trunk.norm.")
  full = np.broadcast_to(state["trunk.mask_token"][0], tokens.shape).astype(np.float64).copy()
  full[~mask] = x.reshape(-1, width)
  full = full + ref_positions(state["trunk.decoder.pos_embed"], num_tokens)
  x = ref_linear(full, state, "trunk.decoder.decoder_embed.")
  for j in range(lay["dec_depth"]):
    x = ref_block(x, state, f"trunk.decoder.decoder_blocks.{j}.", lay["dec_heads"])
  x = ref_layer_norm(x, state, "trunk.decoder.norm.")
  return ref_linear(x, state, head_prefix)


def ref_classifier(state, layout, pixels, head_prefix):
  lay = LAYOUTS[layout]
  tokens, _ = ref_embed(state, pixels)
  x = tokens + ref_positions(state["trunk.pos_embed"], tokens.shape[1])
  for i in range(lay["depth"]):
    x = ref_block(x, state, f"trunk.blocks.{i}.", lay["heads"])
  features = ref_layer_norm(x.mean(axis=1), state, "trunk.norm.")  # pool, then norm
  return ref_linear(features, state, head_prefix)


def predict(model, variables, pixels, mask=None):
  """The model's output, jitted (one compile instead of hundreds of eager op compiles)."""
  if mask is None:
    return np.asarray(jax.jit(model.apply)(variables, pixels))
  keep_idx = mae.check_mask(mask, mask.shape[0], mask.shape[1])
  return np.asarray(jax.jit(model.apply)(variables, pixels, mask, keep_idx))


def to_torch_layout(pixels):
  return pixels.transpose(0, 3, 1, 2) if pixels.ndim == 4 else pixels.transpose(0, 4, 1, 2, 3)


def random_mask(batch, num_tokens, num_masked, seed):
  rng = np.random.default_rng(seed)
  mask = np.zeros((batch, num_tokens), bool)
  for row in mask:
    row[rng.permutation(num_tokens)[:num_masked]] = True
  return mask


def make_inputs(seed=0):
  rng = np.random.default_rng(seed)
  video = rng.standard_normal((2, TINY_FRAMES, TINY_IMG, TINY_IMG, 3)).astype(np.float32)
  image = rng.standard_normal((2, TINY_IMG, TINY_IMG, 3)).astype(np.float32)
  return video, image


def tiny_pretrain_file(path, decoder_qkv_bias=False, state_wrapper=None, head_prefix="head."):
  entries = official_entries("tiny", 8, decoder_qkv_bias=decoder_qkv_bias,
                             head_prefix=head_prefix)
  state = official_state(entries)
  save_torch_zip(path, state_wrapper(state) if state_wrapper else state)
  return entries, state


def no_output_left(output):
  parent = os.path.dirname(os.path.abspath(output))
  return not os.path.exists(output) and not any(
      name.startswith(os.path.basename(output)) for name in os.listdir(parent))


# ---------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("decoder_qkv_bias", [False, True], ids=["no-dec-bias", "dec-bias"])
def test_tiny_pretrain_file_converts_and_predicts_like_the_official_model(
    tmp_path, capsys, decoder_qkv_bias):
  source = tmp_path / "tiny_pretrain.torch"
  entries, state = tiny_pretrain_file(source, decoder_qkv_bias)
  output = tmp_path / "model"
  assert convert.main(["--input", str(source), "--output", str(output),
                       "--img_size", str(TINY_IMG)]) == 0
  printed = capsys.readouterr().out
  assert "tiny pretrain" in printed and "trunk.pos_embed, trunk.decoder.pos_embed" in printed

  model, variables = checkpoint.load_model(str(output))
  assert isinstance(model, models.MAEPretrain)
  cfg = model.config
  assert (cfg.width, cfg.depth, cfg.img_size, cfg.num_frames, cfg.decoder_qkv_bias) == (
      192, 4, TINY_IMG, TINY_FRAMES, decoder_qkv_bias)
  assert assert_every_tensor_placed(entries, variables["params"]) == set()

  video, image = make_inputs()
  for pixels, num_tokens, num_masked in ((video, 8, 5), (image, 4, 3)):
    mask = random_mask(2, num_tokens, num_masked, seed=num_tokens)
    ours = predict(model, variables, pixels, mask)
    reference = ref_pretrain(state, "tiny", to_torch_layout(pixels.astype(np.float64)), mask)
    assert ours.shape == (2, num_tokens, 1536)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head_prefix,trainer", [("head.", False), ("heads.0.", True)],
                         ids=["published", "trainer-checkpoint"])
def test_fine_tuned_file_loads_as_the_classifier(tmp_path, head_prefix, trainer):
  entries = official_entries("tiny", 8, kind="classifier", num_classes=7,
                             head_prefix=head_prefix)
  state = official_state(entries)
  saved = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
           "epoch": 4, "loss": np.array(0.5, np.float32)} if trainer else state
  path = save_torch_zip(tmp_path / "ft.torch", saved)
  model, variables, report = convert.read_official(path, img_size=TINY_IMG)
  assert isinstance(model, models.Classifier) and model.config.num_classes == 7
  assert report.skipped_entries == (["epoch", "loss", "optimizer"] if trainer else [])
  assert assert_every_tensor_placed(entries, variables["params"]) == set()
  video, image = make_inputs(1)
  for pixels in (video, image):
    logits = predict(model, variables, pixels)
    reference = ref_classifier(state, "tiny", to_torch_layout(pixels.astype(np.float64)),
                               head_prefix)
    assert logits.shape == (2, 7)
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout,decoder_qkv_bias,num_parameters", [
    ("base", False, 94_217_856), ("base", True, 94_217_856 + 4 * 3 * 384),
    ("huge", False, None)])  # the decoder qkv bias has its case in base
def test_official_layouts_place_every_tensor(layout, decoder_qkv_bias, num_parameters):
  positions = 1568 if layout == "base" else 2048  # 16 frames at 224 (SPEC §1.1)
  entries = official_entries(layout, positions, decoder_qkv_bias=decoder_qkv_bias)
  model, variables, report = convert.convert_state_dict(LazyStateDict(entries))
  cfg = model.config
  assert (report.size, report.kind) == (layout, "pretrain")
  assert (cfg.img_size, cfg.num_frames, cfg.decoder_qkv_bias) == (224, 16, decoder_qkv_bias)
  assert cfg.patch_size == LAYOUTS[layout]["patch"]
  assert report.checked_buffers == ["trunk.pos_embed", "trunk.decoder.pos_embed"]
  assert report.num_tensors == len(entries) - 2
  if num_parameters:
    assert report.num_parameters == num_parameters  # SPEC §1.3's official count for ViT-B
  assert assert_every_tensor_placed(entries, variables["params"]) == set()


def test_projector_head_and_ddp_prefix_and_requested_decoder_bias(tmp_path):
  """heads.0.projector.* under 'model' with 'module.' keys; a requested decoder qkv bias the
  file lacks is zero, and the predictions are still the official model's."""
  source = tmp_path / "trainer.torch"
  entries, state = tiny_pretrain_file(
      source, head_prefix="heads.0.projector.",
      state_wrapper=lambda s: {"model": {"module." + k: v for k, v in s.items()}, "epoch": 1})
  model, variables, report = convert.read_official(source, img_size=TINY_IMG,
                                                   decoder_qkv_bias=True)
  assert model.config.decoder_qkv_bias and len(report.zero_filled) == 2
  for j in range(2):
    bias = variables["params"]["decoder"][f"decoder_blocks_{j}"]["attn"]["qkv"]["bias"]
    assert bias.shape == (3, 4, 32) and not bias.any()
  assert assert_every_tensor_placed(entries, variables["params"]) == {
      ("decoder", f"decoder_blocks_{j}", "attn", "qkv", "bias") for j in range(2)}
  video, _ = make_inputs(2)
  mask = random_mask(2, 8, 6, seed=3)
  reference = ref_pretrain(state, "tiny", to_torch_layout(video.astype(np.float64)), mask,
                           head_prefix="heads.0.projector.")
  np.testing.assert_allclose(predict(model, variables, video, mask), reference,
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_files(dtype):
  entries = official_entries("tiny", 8)
  half = lambda key, shape: official_value(key, shape).astype(dtype).astype(np.float32)
  state = {key: official_value(key, shape).astype(dtype) for key, shape, _, _ in entries}
  _, variables, report = convert.convert_state_dict(state, img_size=TINY_IMG)
  assert report.checked_buffers == ["trunk.pos_embed", "trunk.decoder.pos_embed"]
  assert jax.tree.leaves(variables)[0].dtype == np.float32
  assert assert_every_tensor_placed(entries, variables["params"], values=half) == set()


def test_pickled_code_is_refused_and_nothing_written(tmp_path, capsys):
  marker = tmp_path / "was_run"
  entries = official_entries("tiny", 8)
  state = official_state(entries)
  state["trunk.norm.weight"] = Reduce(Global("os", "system"), (f"touch {marker}",))
  source = save_torch_zip(tmp_path / "evil.torch", state)
  output = tmp_path / "out"
  assert convert.main(["--input", str(source), "--output", str(output)]) == 2
  assert "refused to load 'os.system'" in capsys.readouterr().err
  assert not marker.exists() and no_output_left(output)


def _write_broken(tmp_path, name, edit):
  entries = official_entries("tiny", 8)
  state = official_state(entries)
  edit(state)
  return save_torch_zip(tmp_path / f"{name}.torch", state)


def _altered_position_table(state):
  state["trunk.decoder.pos_embed"] = state["trunk.decoder.pos_embed"] + 0.01


BAD_FILES = {
    "wrong-shape": (lambda s: s.update({"trunk.blocks.1.mlp.fc1.weight": np.zeros((700, 192),
                                                                                  np.float32)}),
                    "trunk.blocks.1.mlp.fc1.weight: shape (700, 192) in the file, (768, 192)"),
    "missing-key": (lambda s: s.pop("trunk.blocks.3.norm2.bias"),
                    "trunk/blocks_3/norm2/bias: not filled (no trunk.blocks.3.norm2.bias"),
    "extra-key": (lambda s: s.update({"trunk.blocks.0.attn.gate": np.zeros(3, np.float32)}),
                  "trunk.blocks.0.attn.gate: in the file but not used"),
    "extra-block": (lambda s: s.update({"trunk.decoder.decoder_blocks.2.norm1.bias":
                                        np.zeros(128, np.float32)}),
                    "trunk.decoder.decoder_blocks.2.norm1.bias: in the file but not used"),
    "position-table": (_altered_position_table,
                       "trunk.decoder.pos_embed: differs from the fixed 1-D sin-cos table"),
    "unknown-size": (lambda s: s.update({"trunk.patch_embed.proj.1.weight": np.zeros(
        (200, 3, 2, 16, 16), np.float32)}), "no known size has width 200"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_another_architecture_is_a_clear_error_and_nothing_is_written(tmp_path, capsys, name):
  edit, message = BAD_FILES[name]
  source = _write_broken(tmp_path, name, edit)
  output = tmp_path / "out"
  assert convert.main(["--input", str(source), "--output", str(output),
                       "--img_size", str(TINY_IMG)]) == 2
  error = capsys.readouterr().err
  assert message in error and ("nothing written" in error or name == "unknown-size")
  assert no_output_left(output)


def test_files_that_are_not_omnimae_checkpoints(tmp_path, capsys):
  not_torch = tmp_path / "photo.torch"
  not_torch.write_bytes(b"\x89PNG not a checkpoint")
  a_list = save_torch_zip(tmp_path / "list.torch", [np.zeros(3, np.float32)])
  other_model = save_torch_zip(tmp_path / "resnet.torch",
                               {"conv1.weight": np.zeros((8, 3, 3, 3), np.float32)})
  expected = {not_torch: "not a PyTorch checkpoint", a_list: "holds a list, not a state dict",
              other_model: "not an OmniMAE checkpoint"}
  for source, message in expected.items():
    output = tmp_path / "out"
    assert convert.main(["--input", str(source), "--output", str(output)]) == 2
    assert message in capsys.readouterr().err
    assert no_output_left(output)


def test_requested_kind_must_match_the_file(tmp_path):
  source = tmp_path / "pretrain.torch"
  tiny_pretrain_file(source)
  with pytest.raises(convert.ConversionError, match="kind 'classifier' requested, but the file "
                     "is a pretrain checkpoint"):
    convert.load_official(source, kind="classifier", img_size=TINY_IMG)


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
  source = tmp_path / "tiny.torch"
  tiny_pretrain_file(source)
  output = tmp_path / "model"
  args = ["--input", str(source), "--output", str(output), "--img_size", str(TINY_IMG)]
  assert convert.main(args) == 0
  before = {name: os.path.getmtime(output / name) for name in os.listdir(output)}
  assert convert.main(args) == 2
  assert "already exists" in capsys.readouterr().err
  assert {name: os.path.getmtime(output / name) for name in os.listdir(output)} == before
  assert convert.main(args + ["--overwrite"]) == 0
  model, _ = checkpoint.load_model(str(output))
  assert model.config.img_size == TINY_IMG


def test_command_line_entry_point(tmp_path):
  evil = save_torch_zip(tmp_path / "evil.torch",
                        {"x": Reduce(Global("builtins", "eval"), ("1+1",))})
  result = subprocess.run(
      [sys.executable, "-m", "omnimae_jax.convert", "--input", str(evil), "--output",
       str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 2
  assert "refused to load 'builtins.eval'" in result.stderr
  assert not (tmp_path / "out").exists()
