"""Layer-wise lr decay (SPEC §4.2): the official table, AdamW steps by hand, v = 1 unchanged."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from omnimae_jax import models
from omnimae_jax.train import optim


def optim_config(**changes):
  config = common.pretrain_config("tiny", sources={}).optim
  with config.unlocked():
    config.update(changes)
  return config


def abstract_params(size, kind="classifier", img_size=224):
  model = models.build(size, kind, img_size=img_size)
  pixels = jnp.zeros((1, img_size, img_size, 3))
  inputs = (pixels,)
  if kind == "pretrain":
    num_tokens = (img_size // 16) ** 2
    inputs = (pixels, jnp.arange(num_tokens)[None] > 0, jnp.zeros((1, 1), jnp.int32))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
  return nn.unbox(variables)["params"]


def names(path):
  return [key.key for key in path]


def hand_scale(path, v, depth, convention):
  """The lr multiplier written straight from SPEC §4.2, independently of optim.layer_id."""
  top = depth + 2 if convention == "official" else depth + 1
  keys = names(path)
  if "patch_embed" in keys:
    return v ** top
  if keys[0] == "trunk" and keys[1].startswith("blocks_"):
    return v ** (top - 1 - int(keys[1][len("blocks_"):]))
  return v ** (top - depth - 1)


@pytest.mark.parametrize("convention", ["official", "mae"])
def test_vit_base_scales_follow_the_convention(convention):
  params = abstract_params("base")
  scales = optim.layer_decay_scales(params, 0.65, convention)
  extra = 1 if convention == "official" else 0  # the official table is one factor of v lower
  trunk = scales["trunk"]
  assert trunk["patch_embed"]["proj"] == {"kernel": pytest.approx(0.65 ** (13 + extra)),
                                          "bias": pytest.approx(0.65 ** (13 + extra))}
  assert trunk["blocks_0"]["attn"]["qkv"]["kernel"] == pytest.approx(0.65 ** (12 + extra))
  assert trunk["blocks_5"]["mlp"]["fc2"]["bias"] == pytest.approx(0.65 ** (7 + extra))
  assert trunk["blocks_11"]["norm2"]["scale"] == pytest.approx(0.65 ** (1 + extra))
  assert trunk["norm"] == {"scale": pytest.approx(0.65 ** extra),
                           "bias": pytest.approx(0.65 ** extra)}
  assert scales["head"]["kernel"] == pytest.approx(0.65 ** extra)
  # Every leaf, against the formula; and the ids 0 .. depth + 1 all occur.
  for path, scale in jax.tree_util.tree_flatten_with_path(scales)[0]:
    assert scale == pytest.approx(hand_scale(path, 0.65, 12, convention)), names(path)
  assert len(set(jax.tree.leaves(scales))) == 14
  assert optim.trunk_depth(params) == 12


def test_official_head_lr_for_in1k_vit_base():
  # SPEC §4.2: the effective head lr of the IN1K recipe is 0.65 x 4e-3 = 2.6e-3.
  scales = optim.layer_scales(12, 0.65)
  assert scales[-1] * 4e-3 == pytest.approx(2.6e-3)
  assert scales[0] == pytest.approx(0.65 ** 14)


def test_pretraining_model_decoder_counts_as_the_top_layer():
  scales = optim.layer_decay_scales(abstract_params("tiny", "pretrain", img_size=32), 0.5)
  assert scales["decoder"]["decoder_blocks_0"]["attn"]["qkv"]["kernel"] == 0.5
  assert scales["decoder"]["mask_token"] == 0.5
  assert scales["trunk"]["blocks_3"]["mlp"]["fc1"]["kernel"] == 0.5 ** 2
  assert scales["trunk"]["patch_embed"]["proj"]["kernel"] == 0.5 ** 6


def random_tree(abstract, seed, scale=1.0):
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([scale * jax.random.normal(k, leaf.shape)
                            for k, leaf in zip(keys, leaves)])


def torch_style_adamw(params, grads_per_step, config, total_steps, depth, convention):
  """PyTorch AdamW per parameter group (lr = schedule x layer scale, decoupled decay) in float64."""
  warmup = int(round(config.warmup_fraction * total_steps))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  decays = jax.tree.leaves(optim.decay_mask(params))
  p = [np.asarray(leaf, np.float64) for _, leaf in flat]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros_like(x) for x in p]
  deltas = []
  for step, grads in enumerate(grads_per_step):
    base_lr = config.init_lr + (config.lr - config.init_lr) * step / warmup  # still warming up
    bc1, bc2 = 1 - config.b1 ** (step + 1), 1 - config.b2 ** (step + 1)
    step_deltas = []
    for i, ((path, _), g, decays_i) in enumerate(zip(flat, jax.tree.leaves(grads), decays)):
      g = np.asarray(g, np.float64)
      lr = base_lr * hand_scale(path, config.layer_decay, depth, convention)
      before = p[i].copy()
      if decays_i:
        p[i] = p[i] * (1 - lr * config.weight_decay)
      m[i] = config.b1 * m[i] + (1 - config.b1) * g
      v[i] = config.b2 * v[i] + (1 - config.b2) * g * g
      p[i] = p[i] - lr / bc1 * m[i] / (np.sqrt(v[i]) / np.sqrt(bc2) + config.eps)
      step_deltas.append(p[i] - before)
    deltas.append(step_deltas)
  return deltas


@pytest.mark.parametrize("convention", ["official", "mae"])
def test_steps_equal_hand_computed_adamw_per_group(convention):
  abstract = abstract_params("tiny", img_size=32)
  params = random_tree(abstract, 0, 0.1)
  grads = [random_tree(abstract, seed, 0.01) for seed in (1, 2, 3)]
  config = optim_config(schedule="cosine", lr=1e-2, init_lr=1e-4, warmup_fraction=0.5,
                        weight_decay=0.05, b1=0.9, b2=0.999, layer_decay=0.65,
                        layer_decay_convention=convention)
  tx = optim.make_optimizer(config, total_steps=20)  # warmup: 10 steps; we check steps 0, 1, 2
  state = tx.init(params)
  expected = torch_style_adamw(params, grads, config, 20, depth=4, convention=convention)
  for step, g in enumerate(grads):
    updates, state = tx.update(g, state, params)
    for ours, theirs in zip(jax.tree.leaves(updates), expected[step]):
      # optax forms the bias corrections in float32 (1 - 0.999 is 1.3e-5 off at step 1) and the
      # update in float32; the layer scales themselves differ by 35% per layer.
      np.testing.assert_allclose(ours, theirs, rtol=3e-5, atol=1e-6 * np.abs(theirs).max())
    params = optax.apply_updates(params, updates)


def old_optimizer(config, total_steps):
  """The optimizer as it was before layer decay, built here from the same pieces."""
  schedule = optim.learning_rate_schedule(config, total_steps)
  return optax.chain(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                                 weight_decay=config.weight_decay, mask=optim.decay_mask))


def test_layer_decay_one_is_bit_identical_to_plain_adamw():
  abstract = abstract_params("tiny", img_size=32)
  config = optim_config(layer_decay=1.0, weight_decay=0.05, warmup_fraction=0.2)
  new, old = optim.make_optimizer(config, 10), old_optimizer(config, 10)
  params = {"new": random_tree(abstract, 0, 0.1), "old": random_tree(abstract, 0, 0.1)}
  states = {"new": new.init(params["new"]), "old": old.init(params["old"])}
  assert jax.tree.structure(states["new"]) == jax.tree.structure(states["old"])
  for seed in (1, 2, 3):
    grads = random_tree(abstract, seed, 0.01)
    for name, tx in (("new", new), ("old", old)):
      updates, states[name] = tx.update(grads, states[name], params[name])
      params[name] = optax.apply_updates(params[name], updates)
  for a, b in zip(jax.tree.leaves(params["new"]), jax.tree.leaves(params["old"])):
    np.testing.assert_array_equal(a, b)


def test_accumulation_with_layer_decay_equals_one_step_on_the_mean():
  abstract = abstract_params("tiny", img_size=32)
  params = random_tree(abstract, 0, 0.1)
  # Two gradients of one sign per entry: a mean near zero would let Adam's g / (|g| + eps)
  # magnify the float32 rounding of the two ways of averaging.
  grads = [random_tree(abstract, 1, 0.01), random_tree(abstract, 1, 0.03)]
  accumulated = optim.make_optimizer(optim_config(layer_decay=0.75, accum_steps=2), 10)
  state = accumulated.init(params)
  first, state = accumulated.update(grads[0], state, params)
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(first))
  second, _ = accumulated.update(grads[1], state, params)
  single = optim.make_optimizer(optim_config(layer_decay=0.75), 5)
  plain = optim.make_optimizer(optim_config(), 5)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  expected, _ = single.update(mean, single.init(params), params)
  undecayed, _ = plain.update(mean, plain.init(params), params)
  for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
  patch = second["trunk"]["patch_embed"]["proj"]["kernel"]
  np.testing.assert_allclose(patch, 0.75 ** 6 * undecayed["trunk"]["patch_embed"]["proj"]["kernel"],
                             rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_invalid_layer_decay_is_refused(value):
  with pytest.raises(ValueError, match="optim.layer_decay="):
    optim.make_optimizer(optim_config(layer_decay=value), 10)


def test_unknown_convention_and_missing_trunk_are_refused():
  with pytest.raises(ValueError, match="optim.layer_decay_convention"):
    optim.make_optimizer(optim_config(layer_decay_convention="beit"), 10)
  tx = optim.make_optimizer(optim_config(layer_decay=0.5), 10)
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="trunk/blocks"):
    tx.update(params, tx.init(params), params)
