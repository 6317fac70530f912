"""The fine-tuning model: the same trunk, no masking, mean-pool, norm, linear head (SPEC §1.6)."""
import flax.linen as nn
import jax.numpy as jnp

from omnimae_jax.models import layers
from omnimae_jax.models.vit import ModelConfig, Trunk


class Classifier(nn.Module):
  """apply(variables, pixels, train=False) -> logits [B, num_classes] (float32)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, pixels, train: bool = False):
    cfg = self.config
    features = Trunk(cfg, name="trunk")(pixels, pool=True, train=train)  # [B, D]
    logits = nn.Dense(
        cfg.num_classes, dtype=cfg.dtype, name="head",
        kernel_init=layers.partitioned(layers.truncated_normal(cfg.head_init_std),
                                       ("embed", "classes")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("classes",)))(features)
    return logits.astype(jnp.float32)
