"""OmniMAE models: `build(size, kind, **overrides)` returns a Flax linen module.

    model = build("base")                          # MAEPretrain
    variables = model.init(rng, pixels, mask)      # params carry logical-axis boxes
    pred = model.apply(variables, pixels, mask)    # [B, N, 3*pt*ph*pw]
    clf = build("base", "classifier", num_classes=174)
    logits = clf.apply(variables, pixels)          # [B, 174]
"""
import dataclasses

from omnimae_jax.models.attention import ATTENTION_SETTINGS, check_attention
from omnimae_jax.models.classify import Classifier
from omnimae_jax.models.mae import MAEPretrain, reconstruction_loss
from omnimae_jax.models.remat import REMAT_SETTINGS, remat_for
from omnimae_jax.models.vit import ModelConfig

# Encoder and decoder sizes of SPEC §1.3; tiny and small are for tests, demos and ablations.
VARIANTS = {
    "tiny": dict(width=192, depth=4, num_heads=3, decoder_width=128, decoder_depth=2,
                 decoder_heads=4),
    "small": dict(width=384, depth=12, num_heads=6, decoder_width=192, decoder_depth=4,
                  decoder_heads=3),
    "base": dict(width=768, depth=12, num_heads=12, decoder_width=384, decoder_depth=4,
                 decoder_heads=16),
    "large": dict(width=1024, depth=24, num_heads=16, decoder_width=512, decoder_depth=4,
                  decoder_heads=16),
    "huge": dict(width=1280, depth=32, num_heads=16, patch_size=(2, 14, 14), decoder_width=512,
                 decoder_depth=8, decoder_heads=16),
}
KINDS = {"pretrain": MAEPretrain, "classifier": Classifier}


def model_config(size: str, **overrides) -> ModelConfig:
  """The ModelConfig of a named size with any field overridden; unknown names are errors."""
  if size not in VARIANTS:
    raise ValueError(f"size={size!r}; allowed: {sorted(VARIANTS)}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown model option(s) {unknown}; allowed: {sorted(fields)}")
  values = {**VARIANTS[size], **overrides}
  if "patch_size" in values:
    values["patch_size"] = tuple(values["patch_size"])
  return ModelConfig(**values)


def build(size: str, kind: str = "pretrain", **overrides):
  """A linen module of the given size ('tiny' ... 'huge') and kind ('pretrain' | 'classifier')."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; allowed: {sorted(KINDS)}")
  return KINDS[kind](model_config(size, **overrides))


__all__ = ["build", "model_config", "ModelConfig", "MAEPretrain", "Classifier",
           "reconstruction_loss", "VARIANTS", "remat_for", "check_attention", "REMAT_SETTINGS",
           "ATTENTION_SETTINGS"]
