"""Jitted, donated, sharded steps; one compiled train step per source (static shapes).

A mode (pretraining, fine-tuning) differs from another only in its *objective*: a function
`objective(params, batch, rng) -> loss` built here. `make_train_step` turns any objective into
the same donated, sharded step with the same metrics.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from omnimae_jax import pixels as pixel_utils
from omnimae_jax.models import mae
from omnimae_jax.train import sharding
from omnimae_jax.train.state import apply_gradients


def sample_weights(batch):
  """1.0 per sample the input pipeline decoded, 0.0 for the slot of a corrupt record."""
  valid = batch.get("valid")
  if valid is None:
    return jnp.ones(batch["pixels"].shape[:1], jnp.float32)
  return valid.astype(jnp.float32)


def weighted_mean(per_sample, weights):
  """Mean over the samples that count (0 when none does: a batch of corrupt records)."""
  return jnp.sum(per_sample * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def reconstruction_objective(model, *, norm_pix: bool):
  """Pretraining: masked reconstruction loss of uint8 pixels (normalised here, on device)."""

  def objective(params, batch, rng):
    pixels = pixel_utils.normalize(batch["pixels"])
    pred = model.apply({"params": params}, pixels, batch["mask"], batch["keep_idx"], train=True,
                       rngs={"dropout": rng})
    cfg = model.config
    return mae.reconstruction_loss(pred, pixels, batch["mask"], cfg.patch_size, norm_pix,
                                   cfg.pad_type, sample_weights=sample_weights(batch))

  return objective


def classification_objective(model, *, augment, num_classes: int, video: bool, mesh):
  """Fine-tuning: soft-target cross-entropy after on-device random erasing and mixup/cutmix
  (timm's batch mode, each data shard mixing within itself). Every draw comes from `rng`, itself
  folded from (seed, step), so a resumed run draws the same boxes and lambdas."""
  from omnimae_jax.train import batch_augment  # noqa: PLC0415  (only fine-tuning needs it)

  def mix(key, pixels, labels, valid):
    return batch_augment.mixup_cutmix(
        key, pixels, labels, valid, num_classes=num_classes, mixup_alpha=augment.mixup_alpha,
        cutmix_alpha=augment.cutmix_alpha, prob=augment.mix_prob,
        switch_prob=augment.switch_prob, label_smoothing=augment.label_smoothing)

  mix_within_shards = batch_augment.shard_local(mix, mesh)

  def objective(params, batch, rng):
    dropout_rng, erase_rng, mix_rng = jax.random.split(rng, 3)
    pixels = pixel_utils.normalize(batch["pixels"])
    if augment.erase_prob > 0:
      pixels = batch_augment.random_erasing(
          erase_rng, pixels, prob=augment.erase_prob, mode=augment.erase_mode,
          max_area=augment.erase_max_area, max_aspect=augment.erase_max_aspect or None,
          video=video)
    pixels, targets = mix_within_shards(mix_rng, pixels, batch["label"], batch["valid"])
    logits = model.apply({"params": params}, pixels, train=True, rngs={"dropout": dropout_rng})
    return weighted_mean(optax.softmax_cross_entropy(logits, targets), sample_weights(batch))

  return objective


def tree_all_finite(tree):
  """True when every floating-point leaf of `tree` is finite (integer counters are skipped).

  x - x is 0 for a finite x and NaN for inf or NaN, so one plain sum per leaf answers: XLA:CPU
  vectorises a sum, not an all() of isfinite. x * 0 would answer too, but XLA:CPU makes its zero a
  whole array per leaf shape and reads it alongside (ViT-B's parameters: all(isfinite) 55 ms,
  sums of x * 0 35 ms, of x - x 25 ms).
  """
  sums = [jnp.sum(leaf - leaf, dtype=jnp.float32) for leaf in jax.tree.leaves(tree)
          if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return jnp.isfinite(sum(sums)) if sums else jnp.array(True)


def separate_on_cpu(tree):
  """An optimization barrier on CPU, the identity elsewhere.

  XLA:CPU fuses a reduction over the gradients or the new parameters (the step's grad_norm and
  state_finite) into the optimizer's elementwise update loops, which then run as serial
  reductions: ViT-B's update with both metrics took 317 ms, 191 ms with the barriers around it
  (the update alone: 133 ms).
  """
  return jax.lax.platform_dependent(tree, cpu=jax.lax.optimization_barrier, default=lambda t: t)


def _train_step(state, batch, *, objective, tx, schedule, seed, accum_steps):
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
  loss, grads = jax.value_and_grad(objective)(state["params"], batch, rng)
  grad_norm = optax.tree.norm(grads)
  new_state = separate_on_cpu(apply_gradients(state, separate_on_cpu(grads), tx))
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "lr": schedule(state["step"] // accum_steps),
      # The loss and gradient belong to the parameters *before* this update; a save needs to
      # know that the parameters *after* it are finite too. The optimizer's moments need no
      # pass of their own (two thirds of this check's reads): they mix the previous, finite
      # moments with g and g^2, finite whenever grad_norm is, which the loop checks as well.
      "state_finite": tree_all_finite(new_state["params"]),
      "skipped": jnp.sum(1.0 - sample_weights(batch)).astype(jnp.int32),
  }
  return new_state, metrics


def make_train_step(objective, tx, schedule, *, mesh, strategy, state_shardings, seed: int,
                    accum_steps: int = 1):
  """step(state, batch) -> (state, metrics); the state is donated (updated in place).

  metrics: loss, grad_norm, lr, state_finite (the updated state has no NaN/inf) and skipped
  (samples of the global batch whose records could not be decoded).
  """
  step = functools.partial(_train_step, objective=objective, tx=tx, schedule=schedule,
                           seed=seed, accum_steps=accum_steps)
  jitted = jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,), compiler_options=step_compiler_options(mesh))
  return with_mesh_rules(jitted, mesh, strategy)


def step_compiler_options(mesh):
  """XLA options for a train step on `mesh`'s platform (None: the compiler's defaults).

  On CPU, copy insertion with region analysis. The step updates its donated parameters in place,
  and a parameter's update must not overwrite it before the backward's matmuls have read it; the
  default analysis keeps that order by copying them (the ViT-B image step: 136 copies, 532 MB of
  temporaries; with region analysis none, 513 MB). The same program otherwise, so the same
  numbers; the ViT-B image step took 0.95-0.985x the time in three paired runs. Other platforms
  keep their defaults.
  """
  if sharding.platform(mesh) != "cpu":
    return None
  return {"xla_cpu_copy_insertion_use_region_analysis": True}


PICTURE_SAMPLES = 4  # rows of a training picture


def make_predict(model, *, mesh, strategy, param_shardings):
  """predict(params, batch) -> (pixels, mask, pred) of the batch's first samples, replicated on
  every process (so process 0 can draw them even when they live on another host)."""

  def predict(params, batch):
    first = jax.tree.map(lambda x: x[:PICTURE_SAMPLES], batch)
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
