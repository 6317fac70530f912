"""AdamW with the official weight-decay mask and learning-rate schedules (SPEC §4)."""
import math

import jax
import jax.numpy as jnp
import optax

LAYER_NORM_NAMES = ("norm", "norm1", "norm2")
SCHEDULES = ("cosine_fixed", "cosine")


def decay_mask(params):
  """True where weight decay applies: everything but biases and LayerNorm parameters.

  The mask token and the patch-embedding kernel are decayed, as in the official optimizer.
  """
  def decays(path, _):
    names = [getattr(key, "key", str(key)) for key in path]
    in_layer_norm = len(names) > 1 and names[-2] in LAYER_NORM_NAMES
    return names[-1] != "bias" and not in_layer_norm

  return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(optim, total_steps: int):
  """Linear warmup from init_lr to lr, then a cosine, stepped every iteration.

  'cosine_fixed' (official pretraining): lr = 0.5 * lr * (1 + cos(pi * step / total)) after warmup,
  i.e. the cosine is evaluated at the *global* position, a small step down after warmup.
  'cosine' ('rescaled', fine-tuning): the cosine runs from lr to end_lr over the post-warmup steps.
  """
  if optim.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={optim.schedule!r}; allowed: {SCHEDULES}")
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps}: the run has no steps (check epochs and data)")
  warmup = int(round(optim.warmup_fraction * total_steps))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = optim.init_lr + (optim.lr - optim.init_lr) * step / max(warmup, 1)
    if optim.schedule == "cosine_fixed":
      progress = step / total_steps
      cosine = optim.end_lr + 0.5 * (optim.lr - optim.end_lr) * (1 + jnp.cos(math.pi * progress))
    else:
      progress = (step - warmup) / max(total_steps - warmup, 1)
      cosine = optim.end_lr + 0.5 * (optim.lr - optim.end_lr) * (
          1 + jnp.cos(math.pi * jnp.clip(progress, 0.0, 1.0)))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
  """AdamW (decoupled decay, masked), optional global-norm clipping and gradient accumulation."""
  schedule = learning_rate_schedule(optim, total_steps)
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  if optim.accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim.accum_steps)
  return tx
