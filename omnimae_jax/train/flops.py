"""Analytic FLOP counts of a training step and peak FLOP rates, behind MFU.

Only matmuls count (2 FLOPs per multiply-add); a training step is 3x the forward pass (the
backward pass costs two forwards). Rematerialised recomputation is not counted: MFU measures
useful model FLOPs, as is customary.
"""
import jax

from omnimae_jax.models.vit import ModelConfig

# Dense bf16 peaks per device (FLOP/s), from the vendors' data sheets.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def transformer_flops(tokens: int, width: int, mlp_dim: int, depth: int) -> float:
  """Forward FLOPs of `depth` pre-LN blocks on one sequence of `tokens` tokens."""
  projections = 2 * tokens * width * (3 * width + width)  # qkv and output projection
  attention = 2 * 2 * tokens * tokens * width  # scores and weighted sum
  mlp = 2 * 2 * tokens * width * mlp_dim
  return depth * (projections + attention + mlp)


def pretrain_forward_flops(cfg: ModelConfig, num_tokens: int, num_visible: int) -> float:
  """Forward FLOPs per sample: patch embed, encoder and decoder projection on the visible tokens,
  decoder and head on all tokens. (The decoder projects the mask token and the position table
  once per batch, not per sample: models/mae.py. That is left out.)"""
  patch = 2 * num_visible * cfg.pixels_per_patch * cfg.width
  encoder = transformer_flops(num_visible, cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.depth)
  decoder_embed = 2 * num_visible * cfg.width * cfg.decoder_width
  decoder = transformer_flops(num_tokens, cfg.decoder_width,
                              int(cfg.decoder_width * cfg.mlp_ratio), cfg.decoder_depth)
  head = 2 * num_tokens * cfg.decoder_width * cfg.pixels_per_patch
  return patch + encoder + decoder_embed + decoder + head


def classifier_forward_flops(cfg: ModelConfig, num_tokens: int) -> float:
  """Forward FLOPs per sample of the fine-tuning model: patch embed and encoder on every token,
  then the linear head on the pooled feature."""
  patch = 2 * num_tokens * cfg.pixels_per_patch * cfg.width
  encoder = transformer_flops(num_tokens, cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.depth)
  return patch + encoder + 2 * cfg.width * cfg.num_classes


def train_step_flops(forward_flops_per_sample: float, batch_size: int) -> float:
  return 3.0 * forward_flops_per_sample * batch_size


def peak_flops_per_device(override: float = 0.0):
  """The configured peak, else the data-sheet peak of the present device kind, else None."""
  if override > 0:
    return override
  kind = jax.devices()[0].device_kind
  for name, peak in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0])):
    if name.lower() in kind.lower():
      return peak
  return None
