"""Datasets for the data tests, built once per test session by the real builders.

Each raw download is synthetic but in the official layout (see omnimae_jax.data.synthetic_files).
Test modules import the fixtures from here; the builds are memoised per session base directory so
that several modules share one build.
"""
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from omnimae_jax.data import config as config_lib
from omnimae_jax.data import sources, synthetic_files
from omnimae_jax.data._tf import tf
from omnimae_jax.data.builders import kinetics

PATCH_SIZE = (2, 8, 8)
# The first 200 of the demo's 1000 validation images: what the data and training tests read.
DEMO_IMAGE_VALIDATION = "validation[:200]"
IMAGENET_SYNSETS = ("n01440764", "n01443537")  # the first two classes of labels.txt
IMAGENET_TRAIN_PER_SYNSET = 6
IMAGENET_CORRUPT_TRAIN = 1
IMAGENET_VALIDATION = 4
SSV2_TEMPLATES = ("Pushing [something] from left to right", "Putting [something] on a surface",
                  "Holding [something] next to [something]")
SSV2_TRAIN_IDS = ("101", "102", "103", "104", "105")
SSV2_CORRUPT_ID = "105"
SSV2_VALIDATION_IDS = ("201", "202")
VIDEO_FPS = 12
VIDEO_FRAMES = 12
VIDEO_SIZE = (32, 40)  # height, width: small, and not square so short-side logic is exercised

_BUILT = {}


def _build(tfds_name, data_dir, manual_dir=None, **builder_kwargs):
  builder = tfds.builder(tfds_name, data_dir=data_dir, **builder_kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _write_ssv2_manual_dir(root):
  """Official layout: labels/*.json and 20bn-something-something-v2/<id>.webm (VP9)."""
  labels_dir = os.path.join(root, "labels")
  videos_dir = os.path.join(root, "20bn-something-something-v2")
  os.makedirs(labels_dir)
  names = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(SSV2_TEMPLATES)}

  def entries(ids):
    return [{"id": video_id, "label": "x", "template": SSV2_TEMPLATES[i % len(SSV2_TEMPLATES)],
             "placeholders": ["a cup"]} for i, video_id in enumerate(ids)]

  for file_name, content in (("labels.json", names), ("train.json", entries(SSV2_TRAIN_IDS)),
                             ("validation.json", entries(SSV2_VALIDATION_IDS))):
    with open(os.path.join(labels_dir, file_name), "w") as file:
      json.dump(content, file)
  for index, video_id in enumerate(SSV2_TRAIN_IDS + SSV2_VALIDATION_IDS):
    path = os.path.join(videos_dir, f"{video_id}.webm")
    if video_id == SSV2_CORRUPT_ID:
      os.makedirs(videos_dir, exist_ok=True)
      with open(path, "wb") as file:
        file.write(b"\x1a\x45\xdf\xa3 this is not a webm file" * 20)
      continue
    synthetic_files.write_coded_video(path, num_frames=VIDEO_FRAMES, height=VIDEO_SIZE[0],
                                      width=VIDEO_SIZE[1], fps=VIDEO_FPS, codec="libvpx-vp9",
                                      seed=index)


KINETICS_TRAIN = (("abseiling", "aaaaaaaaaaa", 10, 20), ("abseiling", "bbbbbbbbbbb", 0, 10),
                  ("juggling", "ccccccccccc", 5, 15), ("juggling", "ddddddddddd", 30, 40))
KINETICS_MISSING = ("juggling", "missingclip", 1, 11)  # listed in the CSV, never downloaded
KINETICS_VALIDATION = (("abseiling", "eeeeeeeeeee", 3, 13), ("juggling", "fffffffffff", 7, 17))


def _write_kinetics_manual_dir(root):
  """train/<label>/<id>_<start>_<end>.mp4 (per-class layout), val/<...>.mp4 (flat), CSVs."""
  os.makedirs(root)
  layout = (("train.csv", "train", KINETICS_TRAIN + (KINETICS_MISSING,), True),
            ("validate.csv", "val", KINETICS_VALIDATION, False))
  for csv_name, folder, rows, per_class in layout:
    with open(os.path.join(root, csv_name), "w") as file:
      file.write("label,youtube_id,time_start,time_end,split,is_cc\n")
      for index, (label, youtube_id, start, end) in enumerate(rows):
        file.write(f"{label},{youtube_id},{start},{end},{folder},0\n")
        if (label, youtube_id, start, end) == KINETICS_MISSING:
          continue
        stem = kinetics.clip_stem(youtube_id, start, end)
        subfolder = os.path.join(folder, label) if per_class else folder
        synthetic_files.write_coded_video(
            os.path.join(root, subfolder, f"{stem}.mp4"), num_frames=VIDEO_FRAMES,
            height=VIDEO_SIZE[0], width=VIDEO_SIZE[1], fps=25, codec="libx264", seed=index)


def built_data(base_dir):
  """Builds every test dataset under base_dir once; returns paths and the builders used."""
  if base_dir in _BUILT:
    return _BUILT[base_dir]
  data_dir = os.path.join(base_dir, "tfds")
  manual = {name: os.path.join(base_dir, "manual", name)
            for name in ("imagenet", "ssv2", "kinetics", "video_csv")}
  synthetic_files.write_imagenet_manual_dir(
      manual["imagenet"], synsets=IMAGENET_SYNSETS, images_per_synset=IMAGENET_TRAIN_PER_SYNSET,
      num_validation=IMAGENET_VALIDATION, corrupt_train_images=IMAGENET_CORRUPT_TRAIN)
  _write_ssv2_manual_dir(manual["ssv2"])
  _write_kinetics_manual_dir(manual["kinetics"])
  synthetic_files.write_video_csv_manual_dir(
      manual["video_csv"], num_videos=6, num_classes=3, num_frames=VIDEO_FRAMES,
      height=VIDEO_SIZE[0], width=VIDEO_SIZE[1], fps=VIDEO_FPS, validation_videos=2)
  built = {
      "data_dir": data_dir,
      "manual": manual,
      "imagenet2012": _build("imagenet2012", data_dir, manual["imagenet"]),
      "something_something_v2": _build("something_something_v2/original", data_dir,
                                       manual["ssv2"], num_workers=2),
      "kinetics400": _build("kinetics400/original", data_dir, manual["kinetics"]),
      "video_csv": _build("video_csv/original", data_dir, manual["video_csv"]),
  }
  for demo in ("omnimae_demo/images", "omnimae_demo/videos"):
    sources.ensure_built(demo, data_dir)
  _BUILT[base_dir] = built
  return built


@pytest.fixture(scope="session")
def data(tmp_path_factory):
  """The built test datasets (see built_data)."""
  return built_data(str(tmp_path_factory.getbasetemp() / "data_fixtures"))


def prepare_imagenet2012(base_dir, *, num_validation, synsets=IMAGENET_SYNSETS[:1],
                         images_per_synset=1, **manual_kwargs):
  """A small imagenet2012 of its own, built by the real TFDS builder under base_dir: the
  validation images take the first `num_validation` labels of TFDS's validation_labels.txt
  (1000 classes). Returns (data_dir, manual_dir)."""
  data_dir, manual_dir = os.path.join(base_dir, "tfds"), os.path.join(base_dir, "manual")
  synthetic_files.write_imagenet_manual_dir(
      manual_dir, synsets=synsets, images_per_synset=images_per_synset,
      num_validation=num_validation, **manual_kwargs)
  _build("imagenet2012", data_dir, manual_dir)
  return data_dir, manual_dir


def small_source_config(modality, tfds_name, **overrides):
  """A source config small enough for CPU tests: 32-pixel crops, 4 frames, batch 8."""
  cfg = config_lib.default_source_config(modality)
  cfg.tfds_name = tfds_name
  cfg.batch_size = 8
  cfg.image_size = 32
  cfg.num_frames = 4
  cfg.short_side = 0
  cfg.shuffle_buffer = 64
  cfg.mask_ratio = 0.75
  for field, value in overrides.items():
    cfg[field] = value
  return cfg


def copy_prepared(tfds_name, data_dir, new_data_dir):
  """A private copy of a prepared dataset in new_data_dir, to damage; returns its builder."""
  builder = sources.load_builder(tfds_name, data_dir)
  destination = os.path.join(new_data_dir, os.path.relpath(builder.data_path, data_dir))
  shutil.copytree(builder.data_path, destination)
  return sources.load_builder(tfds_name, new_data_dir)


def rewrite_records(path, change):
  """Rewrites a TFRecord file of tf.train.Examples through change(position, example), which edits
  the example in place; the file's checksums stay valid, so only decoding can notice."""
  examples = [tf.train.Example.FromString(record)
              for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]
  with tf.io.TFRecordWriter(path) as writer:
    for position, example in enumerate(examples):
      change(position, example)
      writer.write(example.SerializeToString())


def garbage_bytes(encoded):
  """Random bytes of the same length: no image format at all."""
  return np.random.default_rng(len(encoded)).bytes(len(encoded))


def truncated_jpeg(encoded):
  """The JPEG cut a few bytes after its start-of-scan header: the header (size) still reads, no
  scanline decodes."""
  start_of_scan = encoded.index(b"\xff\xda")
  header_length = int.from_bytes(encoded[start_of_scan + 2:start_of_scan + 4], "big")
  return encoded[:start_of_scan + 2 + header_length + 8]


def damage_media(example, media_key, damage):
  """Applies damage(bytes) -> bytes to every encoded image (or video frame) of an example."""
  values = example.features.feature[media_key].bytes_list.value
  values[:] = [damage(value) for value in values]


def record_payloads(path):
  """[(offset, length)] of each record's payload in a TFRecord file (framing: uint64 length,
  uint32 length CRC, payload, uint32 payload CRC)."""
  with open(path, "rb") as file:
    content = file.read()
  payloads, offset = [], 0
  while offset < len(content):
    (length,) = struct.unpack("<Q", content[offset:offset + 8])
    payloads.append((offset + 12, length))
    offset += 12 + length + 4
  return payloads


def flip_a_byte(path, record: int):
  """Flips one bit in the middle of a TFRecord file's `record`-th payload (its CRC then fails)."""
  offset, length = record_payloads(path)[record]
  with open(path, "r+b") as file:
    file.seek(offset + length // 2)
    byte = file.read(1)[0]
    file.seek(offset + length // 2)
    file.write(bytes([byte ^ 0x10]))
