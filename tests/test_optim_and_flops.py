"""The optimizer (decay mask, official schedule, accumulation) and the analytic FLOP count."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from omnimae_jax import models
from omnimae_jax.train import flops, optim


def optim_config(**changes):
  config = common.pretrain_config("tiny", sources={}).optim
  with config.unlocked():
    config.update(changes)
  return config


def test_official_pretraining_schedule():
  config = optim_config()
  schedule = optim.learning_rate_schedule(config, total_steps=1000)  # warmup: 50 steps
  assert float(schedule(0)) == pytest.approx(1e-6)
  assert float(schedule(25)) == pytest.approx(1e-6 + (1.6e-3 - 1e-6) / 2)
  # 'fixed' interval scaling: the cosine is evaluated at the global position, so right after the
  # warmup the lr is 0.994 x peak, not the peak (SPEC §4.1).
  assert float(schedule(50)) == pytest.approx(0.5 * 1.6e-3 * (1 + math.cos(math.pi * 0.05)))
  assert float(schedule(50)) == pytest.approx(0.9938 * 1.6e-3, rel=1e-3)
  assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-12)


def test_rescaled_cosine_schedule_reaches_peak_and_end():
  config = optim_config(schedule="cosine", lr=4e-3, end_lr=1e-6)
  schedule = optim.learning_rate_schedule(config, total_steps=1000)
  assert float(schedule(50)) == pytest.approx(4e-3)
  assert float(schedule(525)) == pytest.approx(1e-6 + (4e-3 - 1e-6) / 2)
  assert float(schedule(1000)) == pytest.approx(1e-6)
  with pytest.raises(ValueError, match="optim.schedule"):
    optim.learning_rate_schedule(optim_config(schedule="step"), 10)


def test_weight_decay_mask_spares_biases_and_layer_norms_only():
  model = models.build("tiny", img_size=32)
  params = nn.unbox(jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.arange(4)[None] > 0,
      jnp.zeros((1, 1), jnp.int32))))["params"]
  mask = optim.decay_mask(params)
  assert mask["decoder"]["mask_token"] is True
  assert mask["trunk"]["patch_embed"]["proj"]["kernel"] is True
  assert mask["trunk"]["patch_embed"]["proj"]["bias"] is False
  assert mask["trunk"]["blocks_0"]["attn"]["qkv"]["kernel"] is True
  assert mask["trunk"]["blocks_0"]["attn"]["qkv"]["bias"] is False
  assert mask["trunk"]["blocks_0"]["norm1"] == {"scale": False, "bias": False}
  assert mask["trunk"]["norm"] == {"scale": False, "bias": False}
  assert mask["decoder"]["norm"] == {"scale": False, "bias": False}
  assert mask["head"] == {"kernel": True, "bias": False}
  decayed = sum(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(mask)) if m)
  # Tiny: everything but the biases and LayerNorm parameters, counted by hand.
  encoder_spared = 192 + 4 * (4 * 192 + 576 + 192 + 768 + 192) + 2 * 192
  decoder_spared = 128 + 2 * (4 * 128 + 128 + 512 + 128) + 2 * 128 + 1536
  assert decayed == 2_694_016 - encoder_spared - decoder_spared


def test_gradient_accumulation_equals_one_step_on_the_mean_gradient():
  params = {"w": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}
  grads = [jax.tree.map(lambda p, s=s: jnp.full_like(p, s), params) for s in (0.3, -1.1)]
  accumulated = optim.make_optimizer(optim_config(accum_steps=2), total_steps=10)
  state = accumulated.init(params)
  first, state = accumulated.update(grads[0], state, params)
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(first))  # nothing applied yet
  second, _ = accumulated.update(grads[1], state, params)
  single = optim.make_optimizer(optim_config(), total_steps=5)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  expected, _ = single.update(mean, single.init(params), params)
  for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_gradient_clipping_caps_the_global_norm():
  tx = optim.make_optimizer(optim_config(grad_clip_norm=1.0, lr=1.0, init_lr=1.0,
                                         warmup_fraction=0.0, weight_decay=0.0,
                                         schedule="cosine"), total_steps=100)
  params = {"w": jnp.zeros(4)}
  huge = {"w": jnp.full(4, 1e6)}
  small = {"w": jnp.full(4, 0.5)}  # global norm exactly 1: unclipped
  update_huge, _ = tx.update(huge, tx.init(params), params)
  update_small, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(update_huge["w"], update_small["w"], rtol=1e-5)


@pytest.mark.parametrize("video", [False, True])
def test_analytic_flops_match_xla_cost_analysis(video):
  model = models.build("tiny", img_size=64, num_frames=4, patch_size=(2, 8, 8))
  grid = (2 if video else 1, 8, 8)
  num_tokens, num_visible = int(np.prod(grid)), 13
  shape = (2, 4, 64, 64, 3) if video else (2, 64, 64, 3)
  pixels = jnp.zeros(shape)
  mask = jnp.zeros((2, num_tokens), bool)
  keep_idx = jnp.zeros((2, num_visible), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), pixels, mask, keep_idx))
  forward = jax.jit(lambda v: model.apply(v, pixels, mask, keep_idx)).lower(variables).compile()
  measured = forward.cost_analysis()["flops"]
  analytic = 2 * flops.pretrain_forward_flops(model.config, num_tokens, num_visible)
  # XLA also counts element-wise work (norms, softmax, GELU); matmuls must dominate.
  assert 0.85 * measured < analytic <= measured


def test_peak_flops_lookup():
  assert flops.peak_flops_per_device(123.0) == 123.0
  assert flops.peak_flops_per_device() is None  # CPU: unknown, so no MFU rather than a wrong one


def test_tree_all_finite_finds_any_inf_or_nan_in_any_leaf():
  from omnimae_jax.train import steps  # noqa: PLC0415

  tree = {"a": jnp.full((3, 5), 3e38, jnp.float32),  # huge but finite: sums of x - x never overflow
          "b": jnp.ones((7,), jnp.bfloat16), "count": jnp.array(5, jnp.int32)}
  check = jax.jit(steps.tree_all_finite)
  assert bool(check(tree))
  for leaf, index in (("a", (2, 4)), ("a", (0, 0)), ("b", (3,))):
    for bad in (np.inf, -np.inf, np.nan):
      broken = dict(tree, **{leaf: tree[leaf].at[index].set(bad)})
      assert not bool(check(broken)), (leaf, index, bad)
  assert bool(check({"count": jnp.array(1)}))
