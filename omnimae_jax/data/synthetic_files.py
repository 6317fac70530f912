"""Synthetic *raw downloads* (ImageNet tars, video folders) for tests and input benchmarks.

They have the official layouts, so the real builders run on them unchanged. Frames are "coded":
channel 1 holds the frame number (so a test can tell which frames a clip sampler picked, through
any crop), channels 0 and 2 hold horizontal and vertical ramps (so crops differ visibly).
"""
import csv
import io
import os
import tarfile

import numpy as np
from PIL import Image

from omnimae_jax.data import video_io

FRAME_CODE_STEP = 12  # channel-1 value step between consecutive frames


def coded_frames(num_frames, height, width, seed=0, noise_std=0.0):
  """uint8 [num_frames, height, width, 3]; frame t has channel 1 == FRAME_CODE_STEP * t (mod 256)
  plus ramps in channels 0 and 2, offset by a per-video random phase. noise_std > 0 adds pixel
  noise, which makes JPEG/codec sizes (and decode costs) closer to real footage."""
  rng = np.random.default_rng(seed)
  phase = rng.integers(0, 64, size=2)
  ramp_x = (np.arange(width)[None, :] * 200 // max(width - 1, 1) + phase[0]) % 256
  ramp_y = (np.arange(height)[:, None] * 200 // max(height - 1, 1) + phase[1]) % 256
  frames = np.empty([num_frames, height, width, 3], np.uint8)
  frames[..., 0] = np.broadcast_to(ramp_x, [height, width])
  frames[..., 2] = np.broadcast_to(ramp_y, [height, width])
  for t in range(num_frames):
    frames[t, ..., 1] = (FRAME_CODE_STEP * t) % 256
  if noise_std > 0:
    noise = rng.normal(0.0, noise_std, size=frames.shape)
    frames = np.clip(frames + noise, 0, 255).astype(np.uint8)
  return frames


def jpeg_bytes(pixels, quality=90):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def random_jpeg(rng, height, width, noise_std=0.0):
  """A smooth random picture; noise_std > 0 adds texture so that the JPEG's size and decode cost
  approach a photo's (an ImageNet JPEG averages ~110 KB)."""
  coarse = rng.integers(0, 256, size=[4, 4, 3], dtype=np.uint8)
  pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
  if noise_std > 0:
    pixels = np.clip(pixels + rng.normal(0.0, noise_std, size=pixels.shape), 0, 255)
  return jpeg_bytes(pixels.astype(np.uint8))


def _add_bytes(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_imagenet_manual_dir(manual_dir, *, synsets, images_per_synset, num_validation,
                              height=48, width=64, corrupt_train_images=0, seed=0,
                              noise_std=0.0):
  """ILSVRC2012_img_train.tar (one tar per synset of <synset>_<n>.JPEG) and ILSVRC2012_img_val.tar
  (ILSVRC2012_val_%08d.JPEG: the builder pairs their sorted names with its shipped labels).
  The first `corrupt_train_images` training images are garbage bytes named like JPEGs."""
  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  corrupt_left = corrupt_train_images
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train_tar:
    for synset in synsets:
      synset_buffer = io.BytesIO()
      with tarfile.open(fileobj=synset_buffer, mode="w") as synset_tar:
        for index in range(images_per_synset):
          payload = random_jpeg(rng, height, width, noise_std)
          if corrupt_left:
            payload, corrupt_left = b"not a jpeg" * 10, corrupt_left - 1
          _add_bytes(synset_tar, f"{synset}_{index}.JPEG", payload)
      _add_bytes(train_tar, f"{synset}.tar", synset_buffer.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val_tar:
    for index in range(1, num_validation + 1):
      _add_bytes(val_tar, f"ILSVRC2012_val_{index:08d}.JPEG",
                 random_jpeg(rng, height, width, noise_std))


def write_coded_video(path, *, num_frames, height, width, fps, codec, seed=0, noise_std=0.0):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  video_io.write_video(path, coded_frames(num_frames, height, width, seed, noise_std), fps,
                       codec=codec)


def write_video_csv_manual_dir(manual_dir, *, num_videos, num_classes, num_frames, height, width,
                               fps, codec="mpeg4", extension=".mp4", validation_videos=0,
                               noise_std=0.0):
  """A `video_csv` manual dir: clips/<i>.mp4 plus train.csv (and validation.csv) `path,label`."""
  os.makedirs(manual_dir, exist_ok=True)
  rows_per_split = {"train": range(num_videos),
                    "validation": range(num_videos, num_videos + validation_videos)}
  for split, indices in rows_per_split.items():
    if not indices:
      continue
    with open(os.path.join(manual_dir, f"{split}.csv"), "w", newline="") as file:
      writer = csv.writer(file)
      writer.writerow(["path", "label"])
      for index in indices:
        relative = os.path.join("clips", f"{index:06d}{extension}")
        write_coded_video(os.path.join(manual_dir, relative), num_frames=num_frames,
                          height=height, width=width, fps=fps, codec=codec, seed=index,
                          noise_std=noise_std)
        writer.writerow([relative, f"class_{index % num_classes}"])
