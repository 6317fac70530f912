"""Jitted, donated, sharded step functions; one compiled step per modality (static shapes)."""
import functools

import flax.linen as nn
import jax
import optax

from omnimae_jax import pixels as pixel_utils
from omnimae_jax.models import mae
from omnimae_jax.train import sharding
from omnimae_jax.train.state import apply_gradients


def pretrain_loss(params, batch, rng, *, model, norm_pix: bool, train: bool = True):
  """Masked reconstruction loss of one batch of uint8 pixels (normalised here, on device)."""
  pixels = pixel_utils.normalize(batch["pixels"])
  pred = model.apply({"params": params}, pixels, batch["mask"], batch["keep_idx"], train=train,
                     rngs={"dropout": rng})
  cfg = model.config
  return mae.reconstruction_loss(pred, pixels, batch["mask"], cfg.patch_size, norm_pix,
                                 cfg.pad_type)


def _pretrain_step(state, batch, *, model, tx, schedule, norm_pix, seed, accum_steps):
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
  loss, grads = jax.value_and_grad(pretrain_loss)(state["params"], batch, rng, model=model,
                                                  norm_pix=norm_pix)
  new_state = apply_gradients(state, grads, tx)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "lr": schedule(state["step"] // accum_steps)}
  return new_state, metrics


def make_pretrain_step(model, tx, schedule, *, mesh, strategy, state_shardings, norm_pix: bool,
                       seed: int, accum_steps: int = 1):
  """step(state, batch) -> (state, metrics); the state is donated (updated in place)."""
  step = functools.partial(_pretrain_step, model=model, tx=tx, schedule=schedule,
                           norm_pix=norm_pix, seed=seed, accum_steps=accum_steps)
  jitted = jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))
  return with_mesh_rules(jitted, mesh, strategy)


def make_predict(model, *, mesh, strategy, param_shardings):
  """predict(params, batch) -> (pixels, mask, pred) of the batch's first sample, replicated on
  every process (so process 0 can draw it even when sample 0 lives on another host)."""

  def predict(params, batch):
    first = jax.tree.map(lambda x: x[:1], batch)
    pixels = pixel_utils.normalize(first["pixels"])
    pred = model.apply({"params": params}, pixels, first["mask"], first["keep_idx"])
    return pixels, first["mask"], pred

  jitted = jax.jit(predict, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
  return with_mesh_rules(jitted, mesh, strategy)


def with_mesh_rules(fn, mesh, strategy):
  """Traces `fn` with the mesh and the logical rules in scope (activation constraints)."""
  rules = sharding.activation_rules(strategy)

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return fn(*args)

  return wrapped
