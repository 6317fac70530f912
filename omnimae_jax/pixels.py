"""Pixel conventions shared by the input pipeline, the model and the visualisers.

The input pipeline hands the accelerator uint8 pixels (4x less host->device traffic than float32,
which matters for 16-frame video batches); normalisation with the ImageNet statistics happens on
the device, inside the jitted step, through `normalize`.
"""
import numpy as np

# ImageNet statistics in [0, 1] units; videos use the same ones (SPEC §1.5, §3.3).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(pixels, dtype=None):
  """uint8 (or [0, 255] float) pixels, channel last -> ImageNet-normalised floats.

  Works on NumPy and JAX arrays alike (it only uses operators and `.astype`).
  """
  dtype = dtype or np.float32
  x = pixels.astype(dtype) / 255.0
  mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
  std = np.asarray(IMAGENET_STD, dtype=np.float32)
  return ((x - mean) / std).astype(dtype)


def denormalize(pixels):
  """Inverse of `normalize`, back to [0, 1] floats (not clipped)."""
  mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
  std = np.asarray(IMAGENET_STD, dtype=np.float32)
  return pixels * std + mean
