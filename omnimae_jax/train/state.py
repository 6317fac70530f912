"""The train state (a plain dict: step, params, opt_state), created directly sharded on the mesh."""
import dataclasses
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnimae_jax import models
from omnimae_jax.train import sharding

# config.model keys that are about training, not the module.
TRAINING_ONLY_MODEL_KEYS = ("size",)


def build_model(model_cfg, kind: str = "pretrain", **extra) -> nn.Module:
  """The module described by config.model (remat 'auto' is decided per step: model_for_step)."""
  overrides = {k: v for k, v in model_cfg.items() if k not in TRAINING_ONLY_MODEL_KEYS}
  return models.build(model_cfg.size, kind, **overrides, **extra)


def model_for_step(model: nn.Module, modality: str, mesh) -> nn.Module:
  """The module a `modality` step runs on `mesh`, its remat decided for the mesh's platform
  (models.remat_for), which may be a compile-only target rather than this host's backend."""
  remat = models.remat_for(model.config, modality, sharding.platform(mesh))
  return model.clone(config=dataclasses.replace(model.config, remat=remat))


def init_inputs(model: nn.Module):
  """Smallest inputs that create every parameter: one image with one visible token."""
  cfg = model.config
  pixels = jnp.zeros((1, cfg.img_size, cfg.img_size, 3), jnp.float32)
  if isinstance(model, models.Classifier):
    return (pixels,)
  num_tokens = (cfg.img_size // cfg.patch_size[1]) * (cfg.img_size // cfg.patch_size[2])
  mask = jnp.arange(num_tokens)[None] > 0
  return pixels, mask, jnp.zeros((1, 1), jnp.int32)


def _boxed_state(model, tx, rng):
  params = model.init(rng, *init_inputs(model))["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": tx.init(nn.unbox(params))}


def state_shardings(model, tx, mesh, strategy: str) -> Tuple[Any, Any]:
  """(abstract unboxed state, its NamedShardings), without allocating anything."""
  boxed = jax.eval_shape(lambda: _boxed_state(model, tx, jax.random.PRNGKey(0)))
  params = sharding.param_shardings(boxed["params"], mesh, strategy)
  abstract = nn.unbox(boxed)
  shardings = {
      "step": sharding.replicated(mesh),
      "params": params,
      "opt_state": sharding.like_params(abstract["opt_state"], abstract["params"], params, mesh),
  }
  return abstract, shardings


def param_shardings(model, mesh, strategy: str):
  """NamedShardings of the model's parameters (for placing loaded parameters, e.g. to evaluate)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_inputs(model))["params"])
  return sharding.param_shardings(boxed, mesh, strategy)


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs that carry their target sharding (what orbax restores onto)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def init_compiler_options() -> Dict[str, Any]:
  """XLA options for the one-off initialisation. On CPU, LLVM's optimisations of its threefry
  code (a random draw per parameter) cost 20 s of compiling the tiny model's init, 4 s without
  them, and buy nothing for a program that runs once."""
  return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def create_state(model, tx, shardings, seed: int) -> Dict[str, Any]:
  """Initialises the state directly into its shardings: no full copy on any one device."""
  create = jax.jit(lambda rng: nn.unbox(_boxed_state(model, tx, rng)), out_shardings=shardings,
                   compiler_options=init_compiler_options())
  return create(jax.random.PRNGKey(seed))


def count_params(params) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def apply_gradients(state, grads, tx):
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
