"""The official OmniMAE state-dict layout next to ours (SPEC §6.2): key names and tensor layouts.

Our parameters are named after the official modules closely enough that the map is a short
table: a few renames of the path (KEY_RENAMES) and, per kind of tensor, how its axes move
(TENSOR_RULES). `torch_key(path)` gives the file key of one of our parameters and
`tensor_rule(path)` how the file tensor becomes it.
"""
import dataclasses
import math
import re
from typing import Callable, List, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

# Where the output head lives: OmniMAE(trunk, head) in the published files; the trainer's
# MIMOHeadWrapper names it heads.0, and the pretraining MAEHead wraps it as heads.0.projector.
HEAD_PREFIXES = ("head.", "heads.0.projector.", "heads.0.")
PATCH_EMBED_WEIGHT = "trunk.patch_embed.proj.1.weight"  # index 1 of Sequential[PadIm2Video, Conv3d]
ENCODER_POSITIONS = "trunk.pos_embed"
DECODER_POSITIONS = "trunk.decoder.pos_embed"

# Our parameter path ('/'-joined) -> the official key ('/' later becomes '.'), applied in order.
KEY_RENAMES = (
    (r"^decoder/mask_token$", "trunk/mask_token"),  # the official model keeps it in the trunk
    (r"^decoder/", "trunk/decoder/"),
    (r"^trunk/patch_embed/proj/", "trunk/patch_embed/proj/1/"),
    (r"blocks_(\d+)/", r"blocks/\1/"),
    (r"/(kernel|scale)$", "/weight"),  # Dense kernel and LayerNorm scale are torch's 'weight'
)


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """How one file tensor becomes one of our parameters."""
  torch_shape: Callable[[tuple], tuple]  # our shape -> the shape the file must hold
  to_flax: Callable[[np.ndarray, tuple], np.ndarray]  # (file tensor, our shape) -> our tensor


def _transposed(matrix: np.ndarray, rows_per_block: int = 256) -> np.ndarray:
  """matrix.T as a new C-contiguous array, copied in row blocks.

  NumPy's whole-matrix transposing copy strides through memory; blocks that stay in cache make
  it about 3x faster, which matters for ViT-H's 650M parameters.
  """
  out = np.empty(matrix.shape[::-1], matrix.dtype)
  for start in range(0, matrix.shape[0], rows_per_block):
    out[:, start:start + rows_per_block] = matrix[start:start + rows_per_block].T
  return out


def _dense(num_input_axes: int) -> TensorRule:
  """nn.Linear weight [out, in] -> kernel [*input axes, *output axes].

  torch's fused qkv output index is (s*heads + h)*head_dim + d and its proj input index is
  h*head_dim + d, so a transpose and a reshape give our qkv [D, 3, heads, head_dim] and proj
  [heads, head_dim, D].
  """
  return TensorRule(
      torch_shape=lambda s: (math.prod(s[num_input_axes:]), math.prod(s[:num_input_axes])),
      to_flax=lambda w, s: _transposed(w).reshape(s))


CONV3D = TensorRule(  # Conv3d weight [O, C, kt, kh, kw] -> kernel [kt, kh, kw, C, O]
    torch_shape=lambda s: (s[4], s[3], s[0], s[1], s[2]),
    to_flax=lambda w, s: w.transpose(2, 3, 4, 1, 0))
FLAT = TensorRule(  # biases and LayerNorm weights; the qkv bias [3D] -> [3, heads, head_dim]
    torch_shape=lambda s: (math.prod(s),), to_flax=lambda w, s: w.reshape(s))
AS_IS = TensorRule(torch_shape=tuple, to_flax=lambda w, s: w)

TENSOR_RULES = (  # first match wins
    (r"patch_embed/proj/kernel$", CONV3D),
    (r"attn/proj/kernel$", _dense(2)),
    (r"kernel$", _dense(1)),
    (r"mask_token$", AS_IS),  # [1, D] in both
    (r"(bias|scale)$", FLAT),
)


def torch_key(path: Tuple[str, ...], head_prefix: str) -> str:
  """The official state-dict key of one of our parameters (a flattened-dict path)."""
  name = "/".join(path)
  for pattern, replacement in KEY_RENAMES:
    name = re.sub(pattern, replacement, name)
  name = name.replace("/", ".")
  return head_prefix + name[len("head."):] if name.startswith("head.") else name


def tensor_rule(path: Tuple[str, ...]) -> TensorRule:
  name = "/".join(path)
  for pattern, rule in TENSOR_RULES:
    if re.search(pattern, name):
      return rule
  raise AssertionError(f"no mapping rule for parameter {name}")  # a model change: extend the table


def is_decoder_qkv_bias(path: Tuple[str, ...]) -> bool:
  return path[0] == "decoder" and path[-3:] == ("attn", "qkv", "bias")


# --------------------------------------------------------------- questions about a state dict


def find_head_prefix(state: Mapping[str, np.ndarray]) -> Optional[str]:
  return next((p for p in HEAD_PREFIXES if p + "weight" in state), None)


def block_indices(state: Mapping[str, np.ndarray], prefix: str) -> List[int]:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  return sorted({int(m.group(1)) for key in state for m in [pattern.match(key)] if m})


def detect_kind(state: Mapping[str, np.ndarray]) -> str:
  return "pretrain" if any(k.startswith("trunk.decoder.") for k in state) else "classifier"


def is_floating(dtype) -> bool:
  """float16/32/64, and bfloat16 (an ml_dtypes type, which NumPy does not call floating)."""
  return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16)


def file_has_decoder_qkv_bias(state: Mapping[str, np.ndarray]) -> bool:
  return any(k.startswith("trunk.decoder.") and k.endswith(".attn.qkv.bias") for k in state)
