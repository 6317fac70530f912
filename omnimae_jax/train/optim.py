"""AdamW with the official weight-decay mask, learning-rate schedules and layer decay (SPEC §4)."""
import math
import re
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import optax

LAYER_NORM_NAMES = ("norm", "norm1", "norm2")
SCHEDULES = ("cosine_fixed", "cosine")
LAYER_DECAY_CONVENTIONS = ("official", "mae")
_TRUNK_BLOCK = re.compile(r"blocks_(\d+)")  # layers.block_stack's names under 'trunk'


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


def _key_names(path):
  return [getattr(key, "key", str(key)) for key in path]


def trunk_depth(params) -> int:
  """The number of encoder blocks ('trunk/blocks_<i>') in a parameter tree; ValueError if none."""
  indices = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _key_names(path)
    match = len(names) > 1 and names[0] == "trunk" and _TRUNK_BLOCK.fullmatch(names[1])
    if match:
      indices.add(int(match.group(1)))
  if not indices or indices != set(range(len(indices))):
    raise ValueError(f"optim.layer_decay: the parameters have no contiguous trunk/blocks_<i> "
                     f"(found {sorted(indices)}); layer decay needs the ViT trunk")
  return len(indices)


def layer_id(path, depth: int) -> int:
  """The official layer id of a parameter (omnivision get_layer_id): the patch embedding is 0,
  trunk block i is i + 1, everything else (trunk norm, head, decoder, mask token) is depth + 1."""
  names = _key_names(path)
  if "patch_embed" in names:
    return 0
  match = len(names) > 1 and names[0] == "trunk" and _TRUNK_BLOCK.fullmatch(names[1])
  return int(match.group(1)) + 1 if match else depth + 1


def check_layer_decay(layer_decay, convention: str):
  """ValueError naming the config key unless v is in (0, 1] and the convention is known."""
  if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)) or not (
      0.0 < layer_decay <= 1.0):
    raise ValueError(f"optim.layer_decay={layer_decay!r}: must be a number in (0, 1] (1.0 = off)")
  if convention not in LAYER_DECAY_CONVENTIONS:
    raise ValueError(f"optim.layer_decay_convention={convention!r}; allowed: "
                     f"{LAYER_DECAY_CONVENTIONS}")


def layer_scales(depth: int, layer_decay: float, convention: str = "official") -> Tuple[float, ...]:
  """The lr multiplier of each layer id 0 .. depth + 1.

  'official' (SPEC §4.2): v ** (depth + 2 - id), so even the head and final norm get lr * v.
  'mae' (MAE/BEiT): v ** (depth + 1 - id), the head and final norm get lr * 1.
  """
  check_layer_decay(layer_decay, convention)
  num_layers = depth + 2 if convention == "official" else depth + 1
  return tuple(float(layer_decay) ** (num_layers - i) for i in range(depth + 2))


def layer_decay_scales(params, layer_decay: float, convention: str = "official",
                       depth: Optional[int] = None):
  """A pytree like `params` of Python floats: each parameter's lr multiplier.

  `depth` defaults to the number of trunk blocks in `params`. Only tree paths are read, so
  abstract parameters (jax.eval_shape) work and nothing is allocated.
  """
  depth = trunk_depth(params) if depth is None else depth
  scales = layer_scales(depth, layer_decay, convention)
  return jax.tree_util.tree_map_with_path(lambda path, _: scales[layer_id(path, depth)], params)


def scale_by_layer_decay(layer_decay: float, convention: str = "official"):
  """Multiplies each update by its layer's scale; the depth is read from the tree it is given.

  Placed after AdamW this scales the whole step, decoupled weight decay included, as a PyTorch
  param group's lr does (the official optimizer scales each group's lr scheduler).
  """
  check_layer_decay(layer_decay, convention)  # now, not at the first (traced) update

  def scale(updates, params=None):
    del params
    scales = layer_decay_scales(updates, layer_decay, convention)
    return jax.tree.map(lambda update, s: update * s, updates, scales)

  return optax.stateless(scale)


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
  """AdamW (decoupled decay, masked), optional global-norm clipping, layer-wise lr decay and
  gradient accumulation.

  With optim.layer_decay == 1.0 the layer-decay stage is left out altogether, so the state tree
  and the updates are exactly those of plain AdamW (checkpoints stay compatible).
  """
  schedule = learning_rate_schedule(optim, total_steps)
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=decay_mask))
  check_layer_decay(optim.layer_decay, optim.layer_decay_convention)  # even when off
  if optim.layer_decay != 1.0:
    parts.append(scale_by_layer_decay(optim.layer_decay, optim.layer_decay_convention))
  tx = optax.chain(*parts)
  if optim.accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim.accum_steps)
  return tx
