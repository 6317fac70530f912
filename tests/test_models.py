"""The OmniMAE model: shapes, parameter counts, positions, masking invariances, loss, dtypes."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnimae_jax import models
from omnimae_jax.models import layers, mae
from omnimae_jax.train import state as state_lib

RNG = jax.random.PRNGKey(0)


def random_mask(batch, num_tokens, num_masked, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((batch, num_tokens), bool)
  for row in mask:
    row[rng.permutation(num_tokens)[:num_masked]] = True
  return mask


def count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(tree)))


def block_params(width, mlp, qkv_bias=True):
  norms = 2 * 2 * width
  qkv = width * 3 * width + (3 * width if qkv_bias else 0)
  proj = width * width + width
  return norms + qkv + proj + (width * mlp + mlp) + (mlp * width + width)


def encoder_params(width, depth, patch):
  patch_embed = 3 * math.prod(patch) * width + width
  return patch_embed + depth * block_params(width, 4 * width) + 2 * width


def decoder_params(width, dec_width, dec_depth, patch):
  return (width  # mask token
          + width * dec_width + dec_width  # decoder_embed
          + dec_depth * block_params(dec_width, 4 * dec_width, qkv_bias=False)
          + 2 * dec_width  # decoder norm
          + dec_width * 3 * math.prod(patch) + 3 * math.prod(patch))  # head


def init(model, pixels, mask):
  """model.init jitted as training does (eagerly, each of its ~130 ops compiles on its own)."""
  keep_idx = mae.check_mask(mask, mask.shape[0], mask.shape[1])
  return jax.jit(model.init, compiler_options=state_lib.init_compiler_options())(
      RNG, pixels, mask, keep_idx)


@pytest.fixture(scope="module")
def tiny():
  model = models.build("tiny")
  pixels = jax.random.normal(jax.random.PRNGKey(1), (2, 224, 224, 3))
  return model, init(model, pixels, random_mask(2, 196, 176))


# ---------------------------------------------------------------------------------------------
# Shapes and parameter counts


def test_tiny_shapes_image_and_video(tiny):
  model, variables = tiny
  image = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  predict = lambda pixels, mask: jax.eval_shape(  # noqa: E731 (shapes only: nothing compiles)
      lambda x: model.apply(variables, x, mask, mae.check_mask(mask, *mask.shape)), pixels)
  assert predict(image, random_mask(2, 196, 176)).shape == (2, 196, 1536)
  video = jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32)
  assert predict(video, random_mask(2, 1568, 1489)).shape == (2, 1568, 1536)


def test_tiny_matches_official_parameter_count(tiny):
  # The official tiny layout (SPEC §1.3) has 2,694,016 trainable parameters.
  assert count(tiny[1]["params"]) == 2_694_016


@pytest.mark.parametrize("size,width,depth,patch,dec_width,dec_depth,frames,visible", [
    ("base", 768, 12, (2, 16, 16), 384, 4, 16, 79),
    ("large", 1024, 24, (2, 16, 16), 512, 4, 16, 79),
    ("huge", 1280, 32, (2, 14, 14), 512, 8, 16, 103),
])
def test_large_models_shapes_and_counts(size, width, depth, patch, dec_width, dec_depth, frames,
                                        visible):
  model = models.build(size)
  num_tokens = (frames // patch[0]) * (224 // patch[1]) ** 2
  video = jnp.zeros((2, frames, 224, 224, 3))
  mask = jnp.zeros((2, num_tokens), bool)
  keep_idx = jnp.zeros((2, visible), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(RNG, video, mask, keep_idx))
  pred = jax.eval_shape(lambda v: model.apply(v, video, mask, keep_idx), variables)
  assert pred.shape == (2, num_tokens, 3 * math.prod(patch))
  params = variables["params"]
  assert count(params["trunk"]) == encoder_params(width, depth, patch)
  assert count(params["decoder"]) + count(params["head"]) == decoder_params(
      width, dec_width, dec_depth, patch)
  if size == "base":  # the official ViT-B pretraining model (SPEC §1.3)
    assert count(params) == 94_217_856
  image = jnp.zeros((2, 224, 224, 3))
  classifier = models.build(size, "classifier", num_classes=174)
  clf_vars = jax.eval_shape(lambda: classifier.init(RNG, image))
  assert jax.eval_shape(lambda v: classifier.apply(v, image), clf_vars).shape == (2, 174)
  assert count(clf_vars["params"]) == encoder_params(width, depth, patch) + width * 174 + 174


# ---------------------------------------------------------------------------------------------
# Positions


def reference_sincos(num_positions, dim):
  table = np.zeros((num_positions, dim))
  for n in range(num_positions):
    for j in range(dim):
      angle = n / 10000 ** (2 * (j // 2) / dim)
      table[n, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
  return table


def test_sincos_table_matches_reference():
  np.testing.assert_allclose(layers.sincos_table(60, 12), reference_sincos(60, 12), atol=1e-6)
  assert layers.sincos_table(1568, 768).shape == (1568, 768)


def test_image_uses_t0_slice_and_video_longer_than_table_fails():
  table = np.asarray(layers.position_table((8, 14, 14), (8, 14, 14), 64))
  image = np.asarray(layers.position_table((1, 14, 14), (8, 14, 14), 64))
  np.testing.assert_allclose(image, table.reshape(8, 196, 64)[0])
  np.testing.assert_allclose(table, layers.sincos_table(1568, 64))
  with pytest.raises(ValueError, match="temporal patches"):
    layers.position_table((9, 14, 14), (8, 14, 14), 64)


# ---------------------------------------------------------------------------------------------
# Masking invariances, image/video equivalence


def test_encoder_ignores_masked_pixels(tiny):
  model, variables = tiny
  pixels = np.array(jax.random.normal(RNG, (2, 224, 224, 3)))
  mask = random_mask(2, 196, 176, seed=3)
  keep_idx = mae.check_mask(mask, 2, 196)
  trunk = models.vit.Trunk(model.config)
  encode = jax.jit(lambda p: trunk.apply({"params": variables["params"]["trunk"]}, p, keep_idx))
  predict = jax.jit(model.apply)  # jitted here and below: one compile, not one per operation
  changed = pixels.copy()
  for b in range(2):  # scramble every masked 16x16 patch
    for token in np.flatnonzero(mask[b]):
      h, w = divmod(token, 14)
      changed[b, h * 16:(h + 1) * 16, w * 16:(w + 1) * 16] = np.random.randn(16, 16, 3)
  np.testing.assert_array_equal(np.asarray(encode(pixels)), np.asarray(encode(changed)))
  # The predictions (of every token) depend on the visible pixels only, too.
  np.testing.assert_array_equal(predict(variables, pixels, mask, keep_idx),
                                predict(variables, changed, mask, keep_idx))
  # ...while changing one visible patch does change the encoding.
  h, w = divmod(int(keep_idx[0, 0]), 14)
  changed[0, h * 16:(h + 1) * 16, w * 16:(w + 1) * 16] += 1.0
  assert not np.allclose(encode(pixels), encode(changed))


def test_two_equal_frames_predict_like_the_image(tiny):
  model, variables = tiny
  image = jax.random.normal(RNG, (2, 224, 224, 3))
  video = jnp.stack([image, image], axis=1)
  mask = random_mask(2, 196, 147, seed=5)
  predict, keep_idx = jax.jit(model.apply), mae.check_mask(mask, 2, 196)
  np.testing.assert_allclose(predict(variables, image, mask, keep_idx),
                             predict(variables, video, mask, keep_idx), atol=1e-5)


def test_zero_pad_differs_from_repeat():
  image = jax.random.normal(RNG, (1, 32, 32, 3))
  mask = random_mask(1, 4, 2)
  repeat = models.build("tiny", img_size=32)
  zero = models.build("tiny", img_size=32, pad_type="zero")
  variables = init(repeat, image, mask)
  keep_idx = mae.check_mask(mask, 1, 4)
  assert not np.allclose(jax.jit(repeat.apply)(variables, image, mask, keep_idx),
                         jax.jit(zero.apply)(variables, image, mask, keep_idx))


# ---------------------------------------------------------------------------------------------
# Loss


def reference_loss(pred, pixels, mask, patch, norm_pix=True):
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = pixels * std + mean
  if x.ndim == 4:
    x = np.repeat(x[:, None], patch[0], axis=1)
  b, t, h, w, c = x.shape
  pt, ph, pw = patch
  total, masked = 0.0, 0
  for i in range(b):
    token = 0
    for ti in range(t // pt):
      for hi in range(h // ph):
        for wi in range(w // pw):
          cube = x[i, ti * pt:(ti + 1) * pt, hi * ph:(hi + 1) * ph, wi * pw:(wi + 1) * pw]
          cube = cube.reshape(-1, c)  # [pt*ph*pw, 3], (pt, ph, pw) row-major
          if norm_pix:
            cube = (cube - cube.mean(0)) / np.sqrt(cube.var(0, ddof=1) + 1e-6)
          if mask[i, token]:
            total += np.mean((pred[i, token] - cube.reshape(-1)) ** 2)
            masked += 1
          token += 1
  return total / max(masked, 1)


@pytest.mark.parametrize("shape", [(2, 32, 48, 3), (2, 4, 32, 32, 3)])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_numpy_reference(shape, norm_pix):
  rng = np.random.default_rng(0)
  patch = (2, 16, 16)
  pixels = rng.normal(size=shape).astype(np.float32)
  num_tokens = math.prod(s // p for s, p in zip(
      ((shape[1] if len(shape) == 5 else 2),) + shape[-3:-1], patch))
  pred = rng.normal(size=(2, num_tokens, 1536)).astype(np.float32)
  mask = random_mask(2, num_tokens, num_tokens // 2 + 1, seed=1)
  loss = mae.reconstruction_loss(pred, pixels, mask, patch, norm_pix=norm_pix)
  np.testing.assert_allclose(loss, reference_loss(pred, pixels, mask, patch, norm_pix), rtol=1e-5)


def test_loss_ignores_visible_predictions():
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  pred = rng.normal(size=(2, 4, 1536)).astype(np.float32)
  mask = np.array([[True, False, True, False], [False, True, True, False]])
  changed = pred.copy()
  changed[~mask] += rng.normal(size=changed[~mask].shape)
  np.testing.assert_array_equal(mae.reconstruction_loss(pred, pixels, mask, (2, 16, 16)),
                                mae.reconstruction_loss(changed, pixels, mask, (2, 16, 16)))
  changed[mask] += 1.0
  assert mae.reconstruction_loss(changed, pixels, mask, (2, 16, 16)) != pytest.approx(
      float(mae.reconstruction_loss(pred, pixels, mask, (2, 16, 16))))


# ---------------------------------------------------------------------------------------------
# Dtypes, jit, classifier


def test_bf16_agrees_with_fp32_and_jits(tiny):
  model, variables = tiny
  pixels = jax.random.normal(RNG, (2, 224, 224, 3))
  mask = random_mask(2, 196, 176, seed=7)
  keep_idx = mae.check_mask(mask, 2, 196)
  bf16 = models.build("tiny", compute_dtype="bfloat16")
  step = jax.jit(lambda m, v, p, k, i: m.apply(v, p, k, i), static_argnums=0)
  fp32_out = step(model, variables, pixels, mask, keep_idx)
  bf16_out = step(bf16, variables, pixels, mask, keep_idx)
  assert bf16_out.dtype == jnp.float32
  np.testing.assert_allclose(fp32_out, model.apply(variables, pixels, mask), atol=1e-4)
  scale = float(jnp.std(fp32_out))
  assert float(jnp.max(jnp.abs(bf16_out - fp32_out))) < 0.1 * scale
  assert float(jnp.mean(jnp.abs(bf16_out - fp32_out))) < 0.02 * scale


def test_remat_gives_same_output_and_gradients():
  model, remat = (models.build("tiny", img_size=64, remat=setting) for setting in ("none", "full"))
  pixels = jax.random.normal(RNG, (2, 64, 64, 3))
  mask = random_mask(2, 16, 12, seed=9)
  keep_idx = mae.check_mask(mask, 2, 16)
  variables = init(model, pixels, mask)

  def grads(m):
    loss = lambda v: mae.reconstruction_loss(m.apply(v, pixels, mask, keep_idx), pixels, mask,
                                             (2, 16, 16))
    return jax.jit(jax.grad(loss))(variables)

  for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(remat))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_classifier_logits_drop_path_and_init_std():
  model = models.build("tiny", "classifier", num_classes=10, drop_path=0.1, head_init_std=0.01)
  pixels = jax.random.normal(RNG, (4, 32, 32, 3))
  variables = jax.jit(model.init)(RNG, pixels)
  head = nn.unbox(variables)["params"]["head"]["kernel"]
  assert head.shape == (192, 10) and 0.007 < float(jnp.std(head)) < 0.013
  apply = jax.jit(model.apply, static_argnames="train")
  logits = apply(variables, pixels)
  assert logits.shape == (4, 10)
  np.testing.assert_array_equal(logits, apply(variables, pixels))
  noisy = apply(variables, pixels, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(logits, noisy)


def test_initialisation_follows_official_recipe(tiny):
  params = nn.unbox(tiny[1])["params"]
  qkv = params["trunk"]["blocks_0"]["attn"]["qkv"]["kernel"]  # [D, 3, heads, head_dim]
  assert qkv.shape == (192, 3, 3, 64)
  limit = math.sqrt(6 / (192 + 576))
  assert float(jnp.max(jnp.abs(qkv))) <= limit and float(jnp.max(jnp.abs(qkv))) > 0.9 * limit
  assert not np.any(params["decoder"]["mask_token"])
  assert not np.any(params["trunk"]["blocks_0"]["mlp"]["fc1"]["bias"])
  assert "bias" not in params["decoder"]["decoder_blocks_0"]["attn"]["qkv"]
  assert 0.018 < float(jnp.std(params["head"]["kernel"])) < 0.022
  np.testing.assert_array_equal(params["trunk"]["norm"]["scale"], 1.0)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("pixels_shape,mask,match", [
    ((2, 224, 224), np.zeros((2, 196), bool), "pixels: expected"),
    ((2, 200, 224, 3), np.zeros((2, 196), bool), "not divisible by the patch"),
    ((2, 3, 224, 224, 3), np.zeros((2, 196), bool), "temporal patch"),
    ((2, 224, 224, 3), np.zeros((2, 195), bool), r"mask: expected shape \[B, N\] = \[2, 196\]"),
    ((2, 224, 224, 3), np.arange(196)[None, :] < np.array([[3], [4]]), "same number"),
])
def test_bad_input_is_a_clear_error(tiny, pixels_shape, mask, match):
  model, variables = tiny
  with pytest.raises(ValueError, match=match):
    model.apply(variables, jnp.zeros(pixels_shape), mask)


def test_traced_mask_without_keep_idx_is_a_clear_error(tiny):
  model, variables = tiny
  with pytest.raises(ValueError, match="keep_idx"):
    jax.jit(lambda m: model.apply(variables, jnp.zeros((2, 224, 224, 3)), m))(
        np.zeros((2, 196), bool))


def test_unknown_size_kind_or_option():
  with pytest.raises(ValueError, match="size="):
    models.build("gigantic")
  with pytest.raises(ValueError, match="kind="):
    models.build("tiny", "detector")
  with pytest.raises(ValueError, match="unknown model option"):
    models.build("tiny", widht=3)


def test_gelu_is_the_exact_erf_gelu():
  x = np.linspace(-10.0, 10.0, 4001, dtype=np.float32)
  exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
  np.testing.assert_allclose(np.asarray(jax.jit(layers.gelu)(x)), exact, rtol=0, atol=2e-6)
  slope = jax.vmap(jax.grad(layers.gelu))(jnp.asarray(x))
  exact_slope = jax.vmap(jax.grad(lambda v: nn.gelu(v, approximate=False)))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(slope), np.asarray(exact_slope), rtol=0, atol=2e-6)
  half = layers.gelu(jnp.asarray(x, jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), exact, rtol=1e-2, atol=1e-2)


def test_decoder_embeds_its_parts_as_the_official_whole(tiny):
  """The decoder projects the visible tokens, the mask token and the positions apart; the official
  order (scatter, add positions, then project the [B, N, D_enc] whole) gives the same output and
  the same parameter gradients."""
  model, variables = tiny
  cfg = model.config
  params = nn.unbox(variables["params"])["decoder"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, 0.2, p.shape), p.dtype), params)
  grid = (1, 14, 14)
  keep_idx = jnp.asarray(np.sort(np.stack([rng.permutation(196)[:20] for _ in range(2)]), axis=1))
  visible = jnp.asarray(rng.standard_normal((2, 20, cfg.width)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((2, 196, cfg.decoder_width)), jnp.float32)

  def ours(params):
    out = mae.Decoder(cfg).apply({"params": params}, visible, keep_idx, grid)
    return jnp.sum(out * cotangent), out

  def official(params):
    tokens = mae.scatter_tokens(params["mask_token"][0], visible, keep_idx, 196)
    tokens = tokens + layers.position_table(grid, cfg.table_grid, cfg.width)
    x = tokens @ params["decoder_embed"]["kernel"] + params["decoder_embed"]["bias"]
    for i in range(cfg.decoder_depth):
      block = layers.Block(cfg.decoder_heads, int(cfg.decoder_width * cfg.mlp_ratio),
                           cfg.decoder_qkv_bias, attention=cfg.attention)
      x = block.apply({"params": params[f"decoder_blocks_{i}"]}, x)
    out = layers.layer_norm("norm", jnp.float32).apply({"params": params["norm"]}, x)
    return jnp.sum(out * cotangent), out

  (_, out), grads = jax.value_and_grad(ours, has_aux=True)(params)
  (_, want), want_grads = jax.value_and_grad(official, has_aux=True)(params)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=0, atol=2e-5)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    want_grad = np.asarray(functools.reduce(lambda tree, key: tree[key.key], path, want_grads))
    scale = np.abs(want_grad).max()
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=0, atol=1e-5 * scale + 1e-6,
                               err_msg=jax.tree_util.keystr(path))
