"""Synthetic pictures for the demo dataset: coloured shapes, still or moving (NumPy + Pillow).

Images: class = which shape. Videos: class = which of 8 directions the shape moves in, so no single
frame tells the class, only motion does.
"""
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
# Counter-clockwise from east, 45 degrees apart (image y grows downwards, hence the sign flip).
DIRECTIONS = ("east", "north_east", "north", "north_west", "west", "south_west", "south",
              "south_east")


def _random_colours(rng):
  """A background and a clearly different foreground colour (uint8 RGB triples)."""
  background = rng.integers(0, 256, size=3)
  foreground = rng.integers(0, 256, size=3)
  while np.abs(foreground - background).sum() < 200:
    foreground = rng.integers(0, 256, size=3)
  return tuple(int(v) for v in background), tuple(int(v) for v in foreground)


def _draw_shape(draw, shape, centre, radius, colour):
  x, y = centre
  if shape == "circle":
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
  elif shape == "square":
    half = radius * 0.85
    draw.rectangle([x - half, y - half, x + half, y + half], fill=colour)
  elif shape == "triangle":
    corners = [(x + radius * math.cos(a), y - radius * math.sin(a))
               for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    draw.polygon(corners, fill=colour)
  elif shape == "cross":
    arm = radius * 0.35
    draw.rectangle([x - radius, y - arm, x + radius, y + arm], fill=colour)
    draw.rectangle([x - arm, y - radius, x + arm, y + radius], fill=colour)
  else:
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _render(size, background, shape, centre, radius, colour):
  image = Image.new("RGB", (size, size), background)
  _draw_shape(ImageDraw.Draw(image), shape, centre, radius, colour)
  return np.asarray(image)


def _dark_and_bright_colours(rng):
  """A dark background and a bright foreground of random hues (uint8 RGB triples)."""
  background = rng.integers(0, 60, size=3)
  foreground = rng.integers(160, 256, size=3)
  return tuple(int(v) for v in background), tuple(int(v) for v in foreground)


def shape_image(rng, shape_index, size=64):
  """uint8 [size, size, 3]: SHAPES[shape_index], bright on dark, of random hues, size and position.

  Bright on dark rather than any two colours: with the figure and ground interchangeable, the tiny
  demo ViT needs thousands of steps before its top-1 leaves chance; this way the demo's
  fine-tuning and k-NN probe can show learning within minutes on a CPU.
  """
  background, colour = _dark_and_bright_colours(rng)
  radius = rng.uniform(0.2, 0.38) * size
  centre = rng.uniform(radius, size - radius, size=2)
  return _render(size, background, SHAPES[shape_index], centre, radius, colour)


def moving_shape_clip(rng, direction_index, num_frames=16, size=64):
  """uint8 [num_frames, size, size, 3]: a random shape moving along DIRECTIONS[direction_index]."""
  background, colour = _random_colours(rng)
  shape = SHAPES[rng.integers(len(SHAPES))]
  radius = rng.uniform(0.1, 0.18) * size
  angle = direction_index * math.pi / 4
  velocity = np.array([math.cos(angle), -math.sin(angle)])
  travel = rng.uniform(0.3, 0.45) * size  # total displacement over the clip
  path = velocity * travel
  # Start where the whole path stays inside the frame.
  low = radius + np.maximum(0.0, -path)
  high = size - radius - np.maximum(0.0, path)
  start = rng.uniform(low, high)
  steps = np.linspace(0.0, 1.0, num_frames)
  return np.stack([_render(size, background, shape, start + step * path, radius, colour)
                   for step in steps])
