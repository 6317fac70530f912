"""model.attention (which kernel) and model.remat (what is recomputed): issues 11.2, 13.x."""
import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax._src.cudnn import fused_attention_stablehlo

import omnimae_jax
from omnimae_jax import models
from omnimae_jax.models import attention, mae
from omnimae_jax.train import checkpoint, state as state_lib

SMALL = dict(img_size=32, num_frames=4, patch_size=(2, 8, 8))
CUDNN_CALL = "__cudnn$fmha"
MOSAIC_CALL = "tpu_custom_call"  # how a Pallas TPU kernel appears in lowered StableHLO


def qkv(head_dim, dtype, seed=0, length=50, heads=3):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return [jax.random.normal(k, (2, length, heads, head_dim), jnp.float32).astype(dtype)
          for k in keys]


def assert_matches_xla(fn, q, k, v):
  """fn's values and gradients (of a loss that weighs every output) equal XLA's attention's."""
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), jax.jit(attention.xla_attention)(q, k, v),
                             atol=2e-6, rtol=1e-5)
  grad = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(grad(fn), grad(attention.xla_attention)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def fresh_explicit():
  """explicit_attention as a new function: jax caches traces per function and shapes, so a test
  that changes the module's settings must not meet a trace made under other settings."""
  return lambda *qkv: attention.explicit_attention(*qkv)


# 2 samples x 3 heads = 6 sequences of 50 tokens: directly (shorter than
# EXPLICIT_BLOCKED_MIN_TOKENS), or blocked: all in one block, 2 sequences a block, 13 queries a
# block (4 chunks, the last padded by 2 queries).
@pytest.mark.parametrize("min_tokens,block_pairs,block", [
    (attention.EXPLICIT_BLOCKED_MIN_TOKENS, attention.EXPLICIT_BLOCK_PAIRS, (6, 50)),
    (0, attention.EXPLICIT_BLOCK_PAIRS, (6, 50)), (0, 2 * 50 * 50, (2, 50)), (0, 700, (1, 13))])
@pytest.mark.parametrize("head_dim", [24, 64])
def test_explicit_matches_xla_in_float32_values_and_gradients(monkeypatch, head_dim, min_tokens,
                                                              block_pairs, block):
  monkeypatch.setattr(attention, "EXPLICIT_BLOCKED_MIN_TOKENS", min_tokens)
  monkeypatch.setattr(attention, "EXPLICIT_BLOCK_PAIRS", block_pairs)
  assert attention.block_shape(6, 50) == block
  q, k, v = qkv(head_dim, jnp.float32)
  explicit = fresh_explicit()
  assert_matches_xla(explicit, q, k, v)
  jaxpr = str(jax.make_jaxpr(explicit)(q, k, v))
  assert ("scan[" in jaxpr) == (min_tokens == 0)  # lax.map
  weights_saved = min_tokens > 0 and head_dim <= attention.EXPLICIT_WEIGHTS_SAVED_MAX_HEAD_DIM
  assert ("custom_vjp_call" in jaxpr) == (min_tokens == 0 or weights_saved)


def test_explicit_block_shapes_of_the_vitb_attentions():
  assert attention.block_shape(2 * 16, 1568) == (1, 523)  # video decoder: 3 chunks, 1 padded
  assert attention.block_shape(8 * 16, 196) == (16, 196)  # image decoder
  assert attention.block_shape(8 * 12, 197) == (24, 197)  # fine-tuning encoder
  assert attention.block_shape(7, 1024) == (1, 1024)


def test_explicit_gradient_never_holds_the_whole_weights():
  """2 samples x 4 heads x 2048 tokens: the [B, H, L, L] weights would be 128 MiB in float32;
  the gradient's compiled program plans less than a quarter of that (blocks of 4 MiB)."""
  q, k, v = qkv(16, jnp.float32, length=2048, heads=4)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) ** 2)  # noqa: E731
  planned = lambda fn: jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2))).lower(  # noqa: E731
      q, k, v).compile().memory_analysis().temp_size_in_bytes
  weights_bytes = 2 * 4 * 2048 * 2048 * 4
  assert planned(attention.explicit_attention) < weights_bytes / 4
  assert planned(attention.xla_attention) > weights_bytes  # what the test would catch


@pytest.mark.parametrize("cores,groups", [(1, 1), (2, 4), (3, 6), (64, 6)])
@pytest.mark.parametrize("head_dim", [24, 64])
def test_explicit_attends_in_independent_groups_on_cpu(monkeypatch, head_dim, cores, groups):
  """Two groups of sequences per usable core (6 sequences here: 4 groups are uneven), none with
  one core; the same values and gradients, each group a call of its own."""
  monkeypatch.setattr(omnimae_jax, "usable_cores", lambda: cores)
  assert attention.cpu_attention_groups(6) == groups
  q, k, v = qkv(head_dim, jnp.float32)
  explicit = fresh_explicit()
  assert_matches_xla(explicit, q, k, v)
  jaxpr = str(jax.make_jaxpr(explicit)(q, k, v))  # the CPU branch, then the other platforms' one
  calls = "custom_vjp_call[" if head_dim <= attention.EXPLICIT_WEIGHTS_SAVED_MAX_HEAD_DIM else "exp "
  assert jaxpr.count(calls) == groups + 1


def test_explicit_on_a_one_device_mesh_needs_no_shard_map():
  """shard_map's gradient would sum over the mesh's size-1 axes: all-reduces that move nothing."""
  mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  q, k, v = qkv(24, jnp.float32)
  loss = lambda *a: jnp.sum(attention.explicit_attention(*a) ** 2)  # noqa: E731
  with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", "data"), ("heads", "model"))):
    assert_matches_xla(fresh_explicit(), q, k, v)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
    hlo = jax.jit(jax.grad(loss)).lower(q, k, v).compile().as_text()
  assert "shard_map" not in jaxpr and "psum" not in jaxpr
  assert "all-reduce" not in hlo


@pytest.mark.parametrize("min_tokens", [0, attention.EXPLICIT_BLOCKED_MIN_TOKENS])
def test_explicit_attends_on_each_device_of_a_mesh_even_or_uneven(monkeypatch, min_tokens):
  """Batch over 'data' (4), 3 heads over 'model' (2, uneven: gathered), as the fsdp_tp rules
  split them; the same values and gradients as without a mesh, blocked or not."""
  monkeypatch.setattr(attention, "EXPLICIT_BLOCKED_MIN_TOKENS", min_tokens)
  mesh = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices()[:8],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  q, k, v = qkv(24, jnp.float32, length=20)
  q, k, v = (jnp.concatenate([x, x + 1]) for x in (q, k, v))  # batch 4
  rules = (("batch", "data"), ("heads", "model"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    spec = attention.token_spec()
    sharded = [jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        "data"))) for x in (q, k, v)]
    explicit = fresh_explicit()
    assert_matches_xla(explicit, *sharded)
    jaxpr = str(jax.make_jaxpr(explicit)(*sharded))
  assert "shard_map" in jaxpr and ("scan[" in jaxpr) == (min_tokens == 0)
  assert spec == jax.sharding.PartitionSpec("data", None, "model", None)


@pytest.mark.parametrize("min_tokens", [0, attention.EXPLICIT_BLOCKED_MIN_TOKENS])
@pytest.mark.parametrize("head_dim", [24, 64])
def test_explicit_and_xla_in_bfloat16_are_near_the_float32_result(monkeypatch, head_dim,
                                                                  min_tokens):
  monkeypatch.setattr(attention, "EXPLICIT_BLOCKED_MIN_TOKENS", min_tokens)  # blocked or not
  reference = attention.xla_attention(*qkv(head_dim, jnp.float32))
  query_grad = lambda fn, dtype: jax.jit(jax.grad(
      lambda *a: jnp.sum(fn(*a).astype(jnp.float32) ** 2)))(*qkv(head_dim, dtype))
  reference_grad = query_grad(attention.xla_attention, jnp.float32)
  for fn in (fresh_explicit(), attention.xla_attention):
    out = jax.jit(fn)(*qkv(head_dim, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=3e-2)
    grad = query_grad(fn, jnp.bfloat16)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(grad.astype(jnp.float32), reference_grad, atol=6e-2, rtol=5e-2)


def test_splash_matches_explicit_with_padded_sequences_values_and_gradients():
  # 150 tokens: two kernel tiles of 128, the second mostly padding; head dim 24 (ViT-B decoder).
  q, k, v = qkv(24, jnp.float32, length=150, heads=2)

  def output_and_grads(fn):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, *vjp(out)

  splash = functools.partial(attention.splash_attention, interpret=True)
  for a, b in zip(jax.jit(lambda: output_and_grads(splash))(),
                  jax.jit(lambda: output_and_grads(attention.explicit_attention))()):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def pretrain_inputs(batch=2, frames=4, visible=4):
  pixels = jax.random.normal(jax.random.PRNGKey(1), (batch, frames, 32, 32, 3))
  num_tokens = (frames // 2) * 16
  mask = np.ones((batch, num_tokens), bool)
  mask[:, :visible] = False
  return pixels, mask, jnp.tile(jnp.arange(visible, dtype=jnp.int32)[None], (batch, 1))


def test_model_forward_is_the_same_under_every_setting_that_runs_on_cpu():
  pixels, mask, keep_idx = pretrain_inputs()
  init = jax.jit(models.build("tiny", **SMALL).init)
  params = init(jax.random.PRNGKey(0), pixels, mask, keep_idx)
  forward = lambda setting: jax.jit(models.build("tiny", attention=setting, **SMALL).apply)
  outputs = {setting: forward(setting)(params, pixels, mask, keep_idx)
             for setting in ("auto", "xla", "explicit")}
  np.testing.assert_allclose(outputs["explicit"], outputs["xla"], atol=1e-5)
  np.testing.assert_array_equal(outputs["auto"], outputs["explicit"])  # auto = explicit on CPU


def test_an_unknown_setting_is_refused_with_what_is_allowed():
  with pytest.raises(ValueError, match=r"attention='flash'.*allowed.*explicit"):
    models.build("tiny", attention="flash")
  with pytest.raises(ValueError, match=r"remat='some'.*allowed.*full"):
    models.build("tiny", remat="some")


def test_cudnn_problems_name_dtype_and_head_dim():
  assert attention.cudnn_problems(jnp.bfloat16, {"head": 64}) == []
  assert attention.cudnn_problems(jnp.float16, {"head": 128}) == []
  assert len(attention.cudnn_problems(jnp.float32, {"head": 64})) == 1
  for head_dim in (12, 20, 136, 256):
    (problem,) = attention.cudnn_problems(jnp.bfloat16, {"head": head_dim})
    assert f"head dim {head_dim}" in problem


def test_check_attention_refuses_cudnn_where_it_cannot_run():
  bf16 = dict(compute_dtype="bfloat16", attention="cudnn")
  attention.check_attention(models.model_config("base", **bf16), "gpu")  # heads 64 and 24
  attention.check_attention(models.model_config("huge", **bf16), "cuda")  # head dim 80
  failing = [(models.model_config("base", **bf16), "cpu", "platform 'cpu'"),
             (models.model_config("base", **bf16), "tpu", "platform 'tpu'"),
             (models.model_config("base", attention="cudnn"), "gpu", "compute dtype float32"),
             (models.model_config("tiny", decoder_heads=32, **bf16), "gpu", "decoder head dim 4"),
             (models.model_config("tiny", num_heads=16, **bf16), "gpu", "encoder head dim 12")]
  for model_cfg, platform, reason in failing:
    with pytest.raises(ValueError, match=r"model\.attention='cudnn'.*Allowed: 'auto'") as error:
      attention.check_attention(model_cfg, platform)
    assert reason in str(error.value)


def test_check_attention_refuses_splash_off_tpu_and_in_float16():
  for dtype in ("bfloat16", "float32"):
    attention.check_attention(models.model_config("huge", attention="splash",
                                                  compute_dtype=dtype), "tpu")
  failing = [("bfloat16", "cpu", "platform 'cpu' (splash needs a TPU)"),
             ("bfloat16", "gpu", "platform 'gpu'"),
             ("float16", "tpu", "compute dtype float16")]
  for dtype, platform, reason in failing:
    model_cfg = models.model_config("base", attention="splash", compute_dtype=dtype)
    with pytest.raises(ValueError, match=r"model\.attention='splash' cannot run here.*Allowed: "
                       r"'auto'.*'splash' with compute_dtype in \('bfloat16', 'float32'\) on a "
                       r"TPU") as error:
      attention.check_attention(model_cfg, platform)
    assert reason in str(error.value)


def test_auto_and_the_xla_settings_pass_the_check_everywhere():
  for setting in ("auto", "xla", "explicit"):
    for platform in ("cpu", "gpu", "cuda", "tpu"):
      for dtype in ("float32", "bfloat16"):
        model_cfg = models.model_config("tiny", num_heads=16, attention=setting,
                                        compute_dtype=dtype)
        attention.check_attention(model_cfg, platform)


def test_explicit_fused_kernels_refuse_a_dtype_while_tracing_not_compiling():
  for setting, dtype in (("cudnn", "float32"), ("splash", "float16")):
    model = models.build("tiny", attention=setting, compute_dtype=dtype, **SMALL)
    with pytest.raises(ValueError, match=rf"model\.attention='{setting}' cannot take compute "
                       rf"dtype {dtype} .*; use 'auto'"):
      jax.eval_shape(model.init, jax.random.PRNGKey(0), *pretrain_inputs())


@pytest.fixture
def cudnn_version(monkeypatch):
  """Stands in for a CUDA jaxlib's cuDNN query (this CPU jaxlib has none; lowering needs only
  the version number). The argument is the version to report, or None for 'not detected'."""

  def install(version):
    def query():
      if version is None:
        raise RuntimeError("cuDNN is not detected.")
      return version
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", query)
    attention.cudnn_available.cache_clear()

  yield install
  attention.cudnn_available.cache_clear()


def lowered_train_step(platform, compute_dtype, attention_setting="auto"):
  """The text of a tiny MAE's gradient, lowered for `platform` (no device of it needed)."""
  model = models.build("tiny", compute_dtype=compute_dtype, attention=attention_setting, **SMALL)
  pixels, mask, keep_idx = pretrain_inputs()
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), pixels, mask, keep_idx)

  def loss(variables, pixels, keep_idx):
    pred = model.apply(variables, pixels, mask, keep_idx)
    return mae.reconstruction_loss(pred, pixels, mask, model.config.patch_size)

  return jax.jit(jax.grad(loss)).trace(params, pixels, keep_idx).lower(
      lowering_platforms=(platform,)).as_text()


def test_auto_lowers_to_cudnn_for_cuda_only_with_bfloat16(cudnn_version):
  cudnn_version(90100)
  assert attention.cudnn_available()
  assert CUDNN_CALL in lowered_train_step("cuda", "bfloat16")
  assert CUDNN_CALL not in lowered_train_step("cuda", "float32")
  on_cpu = lowered_train_step("cpu", "bfloat16")
  assert CUDNN_CALL not in on_cpu and MOSAIC_CALL not in on_cpu


def lowered_attention_gradient(platform, setting="auto", dtype=jnp.bfloat16, length=1568):
  """The text of attend's gradient for 3 heads of 24, lowered for `platform` (nothing runs)."""
  q = jnp.zeros((2, length, 3, 24), dtype)
  loss = lambda *qkv: jnp.sum(attention.attend(*qkv, setting).astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, q, q).lower(
      lowering_platforms=(platform,)).as_text()


def test_auto_takes_xla_on_cuda_for_odd_lengths_and_cudnn_refuses_them(cudnn_version):
  cudnn_version(90100)
  assert CUDNN_CALL in lowered_attention_gradient("cuda", length=80)
  # The ViT-B video encoder's 79 visible tokens: cuDNN's training kernel (jax 0.10.2) raises.
  assert CUDNN_CALL not in lowered_attention_gradient("cuda", length=79)
  with pytest.raises(ValueError, match="model.attention='cudnn' cannot take sequence length 79"):
    lowered_attention_gradient("cuda", "cudnn", length=79)


def test_auto_lowers_long_sequences_to_the_splash_kernel_for_tpu_in_bf16_and_fp32_only():
  assert MOSAIC_CALL in lowered_attention_gradient("tpu")
  assert MOSAIC_CALL in lowered_attention_gradient("tpu", dtype=jnp.float32)
  assert MOSAIC_CALL not in lowered_attention_gradient("tpu", dtype=jnp.float16)  # XLA instead
  assert MOSAIC_CALL not in lowered_attention_gradient("tpu", "xla")
  assert MOSAIC_CALL not in lowered_attention_gradient("cpu")
  # Short sequences stay with XLA under 'auto' (padding them costs more than their logits).
  short = attention.SPLASH_MIN_LENGTH - 1
  assert MOSAIC_CALL not in lowered_attention_gradient("tpu", length=short)
  assert MOSAIC_CALL in lowered_attention_gradient("tpu", "splash", length=short)


def test_auto_traces_splash_only_where_the_mesh_may_be_a_tpu():
  assert attention.may_lower_for("tpu")  # no mesh: any platform may be asked for
  with jax.set_mesh(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])):
    assert not attention.may_lower_for("tpu") and attention.may_lower_for("cpu")


def test_auto_without_cudnn_lowers_for_cuda_with_xla(cudnn_version):
  cudnn_version(None)
  assert not attention.cudnn_available()
  text = lowered_train_step("cuda", "bfloat16")
  assert CUDNN_CALL not in text and "dot_general" in text


def test_auto_avoids_cudnn_when_the_sequence_or_head_dim_is_sharded(cudnn_version):
  cudnn_version(90100)
  query = jnp.zeros((2, 16, 4, 64), jnp.bfloat16)
  with nn.logical_axis_rules([("batch", "data"), ("heads", "model")]):
    assert attention.cudnn_fits(query)
  for split in ("length", "kv"):
    with nn.logical_axis_rules([("batch", "data"), (split, "model")]):
      assert not attention.cudnn_fits(query)


def test_splash_takes_batch_and_head_splits_that_are_even():
  query = jnp.zeros((4, 12, 6, 64), jnp.bfloat16)
  mesh = jax.sharding.AbstractMesh((2, 3), ("data", "model"))
  with jax.sharding.use_abstract_mesh(mesh):
    with nn.logical_axis_rules([("batch", "data"), ("heads", "model")]):
      assert attention.splash_problems(query) == []
      assert attention.splash_problems(query[:, :, :4]) == ["heads 4 split in 3"]
      assert attention.splash_problems(query[:3]) == ["batch 3 split in 2"]
    with nn.logical_axis_rules([("batch", "data"), ("length", "model")]):
      (problem,) = attention.splash_problems(query)
      assert "sequence or head dim split" in problem


# ------------------------------------------------------------------------------------- remat


def test_remat_for_decides_auto_by_platform_modality_and_size():
  tiny = models.model_config("tiny", remat="auto")
  large = models.model_config("large", remat="auto")
  assert [models.remat_for(tiny, m, "cpu") for m in ("image", "video")] == ["none", "none"]
  assert models.remat_for(large, "image", "cpu") == "none"
  for platform in ("gpu", "cuda", "tpu"):
    assert models.remat_for(tiny, "image", platform) == "none"
    assert models.remat_for(tiny, "video", platform) == "full"
    assert models.remat_for(large, "image", platform) == "full"
  for setting in ("none", "full"):
    chosen = models.model_config("large", remat=setting)
    assert {models.remat_for(chosen, "video", p) for p in ("cpu", "tpu")} == {setting}


def test_model_for_step_decides_remat_for_the_mesh_platform():
  model = models.build("tiny", remat="auto")
  mesh_of = lambda platform: types.SimpleNamespace(
      devices=np.array([types.SimpleNamespace(platform=platform)]))
  assert state_lib.model_for_step(model, "video", mesh_of("cpu")).config.remat == "none"
  assert state_lib.model_for_step(model, "video", mesh_of("tpu")).config.remat == "full"
  assert state_lib.model_for_step(model, "image", mesh_of("gpu")).config.remat == "none"


def test_full_remat_recomputes_the_blocks_in_the_backward_pass():
  pixels, mask, keep_idx = pretrain_inputs()

  def grad_jaxpr(remat):
    model = models.build("tiny", remat=remat, **SMALL)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), pixels, mask, keep_idx)
    loss = lambda v: jnp.sum(model.apply(v, pixels, mask, keep_idx))
    return str(jax.make_jaxpr(jax.grad(loss))(params))

  assert "remat" not in grad_jaxpr("none")
  assert grad_jaxpr("full").count("remat2[") == 6  # 4 encoder + 2 decoder blocks


def test_a_model_description_saved_with_a_boolean_remat_still_loads():
  old = {field: value for field, value in
         dataclasses.asdict(models.model_config("tiny")).items() if field != "attention"}
  for saved, expected in ((True, "full"), (False, "none")):
    description = {"kind": "pretrain", "config": {**old, "remat": saved}}
    model = checkpoint.model_from_description(description, "old/model.json")
    assert (model.config.remat, model.config.attention) == (expected, "auto")


def test_the_loop_refuses_cudnn_on_a_cpu_mesh_before_compiling(tmp_path):
  from omnimae_jax.config_file import ConfigError  # noqa: PLC0415
  from omnimae_jax.train import loop  # noqa: PLC0415
  from configs import demo_omni  # noqa: PLC0415
  config = demo_omni.get_config()
  with config.unlocked():
    config.model.attention = "cudnn"
  with pytest.raises(ConfigError, match=r"model.attention='cudnn' cannot run here: platform 'cpu'"):
    loop.plan_run(config)
