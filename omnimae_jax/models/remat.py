"""Rematerialisation (activation checkpointing) of the transformer blocks: `config.model.remat`.

- 'none': keep every activation for the backward pass.
- 'full': keep only each block's input; recompute the block in the backward pass.
- 'auto': decided per step by `remat_for`: none on CPU (memory is plentiful there and recomputing
  only costs time), full on accelerators for video steps (as the official recipe) and for every
  step of a large or huge model.
"""
REMAT_SETTINGS = ("auto", "none", "full")
# Encoder widths from ViT-L up; their image steps need remat too at the recipe's batch sizes.
LARGE_WIDTH = 1024


def normalise_remat(value) -> str:
  """The setting as a name; a bool is what model descriptions saved before 'remat' was named
  held (True = every block rematerialised)."""
  if isinstance(value, bool):
    return "full" if value else "none"
  if value not in REMAT_SETTINGS:
    raise ValueError(f"model.remat={value!r}; allowed: {REMAT_SETTINGS}")
  return value


def remat_for(model_cfg, modality: str, platform: str) -> str:
  """'none' or 'full': what a `modality` ('image' | 'video') step of this model does on
  `platform` ('cpu', 'gpu', 'cuda', 'tpu', ...). The one place 'auto' is decided."""
  if model_cfg.remat != "auto":
    return model_cfg.remat
  if platform == "cpu":
    return "none"
  if modality == "video" or model_cfg.width >= LARGE_WIDTH:
    return "full"
  return "none"
