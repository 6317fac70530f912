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


def _fractal_texture(rng, height, width, exponent):
  """Unit-variance noise with a 1/f**exponent power spectrum (natural images: about 2; larger
  is smoother)."""
  freq_y = np.fft.fftfreq(height)[:, None]
  freq_x = np.fft.rfftfreq(width)[None, :]
  freq = np.sqrt(freq_y ** 2 + freq_x ** 2)
  freq[0, 0] = 1.0
  spectrum = rng.normal(size=freq.shape) + 1j * rng.normal(size=freq.shape)
  spectrum /= freq ** (exponent / 2)
  spectrum[0, 0] = 0.0
  texture = np.fft.irfft2(spectrum, s=(height, width))
  return texture / texture.std()


def scene_frames(num_frames, height, width, seed=0, *, texture_exponent=2.6, noise_std=2.0):
  """uint8 [num_frames, height, width, 3] footage-like frames: a textured background (1/f
  texture, colour correlated) seen by a camera that drifts in a smooth random walk, two or three
  textured ellipses moving over it, and per-frame sensor noise. Unlike flat colours or per-pixel
  noise this gives a video codec and JPEG the kind of work real clips do (texture, motion, noise);
  texture_exponent 2.6 makes 427x240 frames ~40 KB as JPEG q90 and ~150 kbps as VP9 crf 32 at
  12 fps (SSv2 averages ~190 kbps: 19.4 GB for 220,847 clips of ~4 s)."""
  rng = np.random.default_rng(seed)
  pad = 48  # camera travel, pixels each way
  big_h, big_w = height + 2 * pad, width + 2 * pad
  luma = _fractal_texture(rng, big_h, big_w, texture_exponent) * 45.0
  chroma = [_fractal_texture(rng, big_h, big_w, texture_exponent + 0.5) * 20.0 for _ in range(2)]
  base = rng.uniform(70.0, 180.0, size=3)
  # (luma, chroma 1, chroma 2) -> RGB
  background = np.stack([base[0] + luma + chroma[0], base[1] + luma - 0.3 * chroma[0]
                         - 0.5 * chroma[1], base[2] + luma + chroma[1]], axis=-1)
  velocity, position = rng.normal(0.0, 1.0, size=2), np.zeros(2)
  camera = []
  for _ in range(num_frames):
    velocity = 0.9 * velocity + rng.normal(0.0, 0.4, size=2)
    position = np.clip(position + velocity, -pad + 1, pad - 1)
    camera.append(np.round(position).astype(int) + pad)
  rows, cols = np.mgrid[0:height, 0:width]
  objects = []
  for _ in range(rng.integers(2, 4)):
    radii = rng.uniform(25.0, 60.0, size=2)
    start = rng.uniform([0.0, 0.0], [height, width])
    speed = rng.normal(0.0, 2.5, size=2)
    texture = (rng.uniform(30.0, 220.0, size=3)
               + _fractal_texture(rng, height, width, texture_exponent)[..., None] * 30.0)
    objects.append((radii, start, speed, texture))
  frames = np.empty([num_frames, height, width, 3], np.uint8)
  for t in range(num_frames):
    top, left = camera[t]
    frame = background[top:top + height, left:left + width].copy()
    for radii, start, speed, texture in objects:
      centre = start + speed * t
      inside = (((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2) <= 1
      shift = np.round(speed * t).astype(int)
      frame[inside] = np.roll(texture, tuple(shift), axis=(0, 1))[inside]
    if noise_std > 0:
      frame += rng.normal(0.0, noise_std, size=frame.shape)
    frames[t] = np.clip(frame, 0, 255)
  return frames


def jpeg_bytes(pixels, quality=90):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def random_jpeg(rng, height, width, noise_std=0.0, texture_exponent=None):
  """A smooth random picture; noise_std > 0 adds texture so that the JPEG's size and decode cost
  approach a photo's (an ImageNet JPEG averages ~110 KB). texture_exponent: add a 1/f texture
  as scene_frames does instead (2.0, natural images' spectrum, makes a 500x375 JPEG ~110 KB)."""
  coarse = rng.integers(0, 256, size=[4, 4, 3], dtype=np.uint8)
  pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
  if texture_exponent is not None:
    texture = [_fractal_texture(rng, height, width, texture_exponent) for _ in range(2)]
    pixels = pixels + 35.0 * texture[0][..., None] + 12.0 * np.stack(
        [texture[1], -texture[1], 0.5 * texture[1]], axis=-1)
  if noise_std > 0:
    pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape)
  return jpeg_bytes(np.clip(pixels, 0, 255).astype(np.uint8))


def _add_bytes(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_imagenet_manual_dir(manual_dir, *, synsets, images_per_synset, num_validation,
                              height=48, width=64, corrupt_train_images=0, seed=0,
                              noise_std=0.0, texture_exponent=None):
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
          payload = random_jpeg(rng, height, width, noise_std, texture_exponent)
          if corrupt_left:
            payload, corrupt_left = b"not a jpeg" * 10, corrupt_left - 1
          _add_bytes(synset_tar, f"{synset}_{index}.JPEG", payload)
      _add_bytes(train_tar, f"{synset}.tar", synset_buffer.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val_tar:
    for index in range(1, num_validation + 1):
      _add_bytes(val_tar, f"ILSVRC2012_val_{index:08d}.JPEG",
                 random_jpeg(rng, height, width, noise_std, texture_exponent))


def write_coded_video(path, *, num_frames, height, width, fps, codec, seed=0, noise_std=0.0):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  video_io.write_video(path, coded_frames(num_frames, height, width, seed, noise_std), fps,
                       codec=codec)


# VP9 at constant quality, as webm: SSv2's format. cpu-used 4 encodes ~4x faster than the default
# for ~5% more bytes.
VP9_OPTIONS = {"crf": "32", "b": "0", "cpu-used": "4", "deadline": "good"}


def write_scene_manual_dir(manual_dir, *, num_videos, num_classes, height=240, width=427,
                           fps=12, seconds=(3.0, 5.0), codec="libvpx-vp9", extension=".webm",
                           codec_options=None, seed=0):
  """A `video_csv` manual dir of SSv2-like clips (scene_frames, webm VP9 by default): clips/<i>
  of a duration drawn uniformly from `seconds`, plus train.csv `path,label`."""
  os.makedirs(os.path.join(manual_dir, "clips"), exist_ok=True)
  rng = np.random.default_rng(seed)
  options = VP9_OPTIONS if codec_options is None and codec == "libvpx-vp9" else codec_options
  with open(os.path.join(manual_dir, "train.csv"), "w", newline="") as file:
    writer = csv.writer(file)
    writer.writerow(["path", "label"])
    for index in range(num_videos):
      num_frames = int(round(rng.uniform(*seconds) * fps))
      relative = os.path.join("clips", f"{index:06d}{extension}")
      frames = scene_frames(num_frames, height, width, seed=seed * 1_000_003 + index)
      video_io.write_video(os.path.join(manual_dir, relative), frames, fps, codec=codec,
                           options=options)
      writer.writerow([relative, f"class_{index % num_classes}"])


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
