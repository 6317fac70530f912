"""Shared base of the video TFDS builders: clips decoded once with PyAV, stored as JPEG frames.

Every video dataset has the same features, so the training pipeline reads them all alike:
  video  Video(JPEG frames) at the config's short side  (read with SkipDecoding: only the sampled
         frames get decoded at training time)
  fps    float32, the stored frame rate (the clip sampler turns seconds into frames with it)
  label  ClassLabel
  id     Text, the dataset's own id for the clip
A file that cannot be decoded is skipped, logged with its path and counted; the build goes on.
"""
import dataclasses
import functools
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from omnimae_jax.data import video_io
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

# `tfds build --imports=omnimae_jax.data.builders ...` works too where the TFDS command line's own
# dependencies (apache_beam) are installed; ours needs nothing beyond requirements.txt.
PREPARE_COMMAND = "python -m omnimae_jax.data.prepare {name} --manual_dir=DIR --data_dir=DIR"


# JPEG quality of stored frames. With frames at most 256 pixels on the short side this keeps the
# store within 10x the source files: SSv2-like 427x240 VP9 clips (~86 KB each) take 9.2x as
# JPEG q60 frames at 240p (PSNR 32.0 dB against the decoded source frames), where q90 at 240p
# takes ~21x (36.5 dB) and 1.0.0's q90 enlarged to 256p 23x (34.9 dB); q60 frames also decode in
# ~35% less CPU time than 1.0.0's. Measured on `python -m omnimae_jax.benchmark input
# --synthetic=ssv2_like` clips (synthetic: the ratio on real footage will differ somewhat).
DEFAULT_JPEG_QUALITY = 60


@dataclasses.dataclass(eq=False)
class VideoBuilderConfig(tfds.core.BuilderConfig):
  """short_side: stored frames' short side in pixels at most (smaller videos keep their size; 0
  keeps every file's size); jpeg_quality: of the stored frames."""
  short_side: int = 256
  jpeg_quality: int = DEFAULT_JPEG_QUALITY


def short_side_configs(sizes=(256, 320, 160, 128)):
  """Builder configs 'short256' (the default, listed first), 'short320', 'short160', 'short128',
  and 'original' (frames stored at the files' own size, e.g. for pre-resized videos). Frames are
  shrunk to the config's short side, never enlarged: the training crop scales them to its
  ShortSideScale size anyway, and enlarged frames only cost bytes and decoding."""
  return [VideoBuilderConfig(name=f"short{size}", short_side=size,
                             description=f"frames stored with a short side of at most {size} "
                             "pixels")
          for size in sizes] + [
              VideoBuilderConfig(name="original", short_side=0,
                                 description="frames stored at the size of the video files")]


@dataclasses.dataclass(frozen=True)
class VideoItem:
  key: str  # unique example key and the stored `id`
  path: str
  label: str  # class name


def video_features(class_label):
  return tfds.features.FeaturesDict({
      "video": tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg"),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "label": class_label,
      "id": tfds.features.Text(),
  })


def _encode_item(item, short_side, jpeg_quality):
  """(item, JpegClip or None, reason or None); never raises for a bad file."""
  try:
    return item, video_io.encode_jpeg_frames(item.path, short_side=short_side,
                                             jpeg_quality=jpeg_quality), None
  except video_io.VideoDecodeError as error:
    return item, None, str(error)


class ManualDirBuilder:
  """Mixin of our builders that read only a manual dir: TFDS's download messages and its
  many-line missing-manual-dir error, said in one line; files encoded `num_workers` at a time
  (default: all CPUs), the undecodable ones skipped and listed. Subclasses set LAYOUT."""
  # One line saying what the manual dir holds; error messages and `prepare --help` quote it.
  LAYOUT = ""

  def __init__(self, *, num_workers=None, **kwargs):
    self._num_workers = num_workers or os.cpu_count() or 1
    self.skipped_files = {}  # split name -> [(path, reason)], filled while building
    super().__init__(**kwargs)

  def _encoded(self, items, split, encode_item, what):
    """(item, payload) of each item in order; encode_item(item, short_side, jpeg_quality) gives
    (item, payload or None, reason). A file that does not decode is logged and kept in
    skipped_files[split]."""
    skipped = self.skipped_files.setdefault(split, [])
    config = self.builder_config
    encode = functools.partial(encode_item, short_side=config.short_side,
                               jpeg_quality=config.jpeg_quality)
    for item, payload, reason in video_io.ordered_parallel_map(encode, items, self._num_workers):
      if payload is None:
        logging.warning("%s/%s: skipping undecodable %s: %s", self.name, split, what, reason)
        skipped.append((item.path, reason))
        continue
      yield item, payload

  # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared to ..."
  # around a build; ours only read the manual dir, so they say that instead.
  def _log_download_bytes(self):
    print(f"Preparing {self.info.full_name} from the manual dir (nothing is downloaded)...")

  def _log_download_done(self):
    print(f"Prepared {self.info.full_name}.")  # prepare prints where (a rebuild moves it)

  def _manual_dir_or_raise(self, dl_manager):
    try:
      return dl_manager.manual_dir
    except AssertionError as error:
      # TFDS's message spans many lines; ours names the same folder in one. The folder is only
      # kept privately by TFDS, hence the fallback to the first line of its message.
      folder = getattr(dl_manager, "_manual_dir", None)
      problem = (f"manual dir {folder} {'is empty' if os.path.isdir(folder) else 'does not exist'}"
                 if folder else str(error).splitlines()[0])
      raise DatasetNotPreparedError(
          f"{self.name}: {problem}; expected {self.LAYOUT}; then run: "
          f"{PREPARE_COMMAND.format(name=self.full_config_name)}") from error

  @property
  def full_config_name(self):
    """'video_csv/my_clips': what `prepare` takes, naming one of several datasets of a builder."""
    config = self.builder_config
    return f"{self.name}/{config.name}" if config else self.name


class VideoClassificationBuilder(ManualDirBuilder, tfds.core.GeneratorBasedBuilder,
                                 skip_registration=True):
  """Base class; subclasses implement `_split_items` and `_class_names`.

  Constructor argument `num_workers` (default: all CPUs) sets how many clips are decoded at once.
  """
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.1.0": f"Frames as JPEG quality {DEFAULT_JPEG_QUALITY} (was 90), Huffman-optimised, and "
               "never enlarged to the config's short side (a 240p clip stays 240p).",
      "1.0.0": "Initial release: frames as JPEG quality 90 at exactly the config's short side.",
  }
  BUILDER_CONFIGS = short_side_configs()
  HOMEPAGE = None  # subclasses name the dataset's home

  def _info(self):
    # Class names are read from the manual dir's annotation files while building.
    return self.dataset_info_from_configs(
        features=video_features(tfds.features.ClassLabel()),
        supervised_keys=("video", "label"), homepage=self.HOMEPAGE)

  def _set_class_names(self, names):
    self.info.features["label"].names = list(names)

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir_or_raise(dl_manager)
    items_per_split, class_names = self._split_items(manual_dir)
    self._set_class_names(class_names)
    known = set(class_names)
    for split, items in items_per_split.items():
      unknown = sorted({item.label for item in items} - known)
      if unknown:
        raise LabelFileMismatchError(
            f"{self.name} split {split!r} under {manual_dir} uses labels that are not classes: "
            f"{unknown[:5]}")
      require_most_files_present(self.full_config_name, split, items, manual_dir)
    return {split: self._generate_examples(items, split)
            for split, items in items_per_split.items()}

  def _generate_examples(self, items, split):
    for item, clip in self._encoded(items, split, _encode_item, "video"):
      yield item.key, {"video": clip.frames, "fps": np.float32(clip.fps), "label": item.label,
                       "id": item.key}
    skipped = self.skipped_files[split]
    if skipped:
      logging.warning("%s/%s: skipped %d of %d videos that could not be decoded: %s", self.name,
                      split, len(skipped), len(items), [path for path, _ in skipped])
    else:
      logging.info("%s/%s: all %d videos decoded", self.name, split, len(items))


def require_most_files_present(name, split, items, manual_dir):
  """Missing files are skipped like corrupt ones, unless so many are missing that the annotation
  files and the video folder clearly belong to different datasets (or the folder is wrong)."""
  missing = [item.path for item in items if not os.path.exists(item.path)]
  if items and len(missing) * 2 > len(items):
    raise LabelFileMismatchError(
        f"{name} split {split!r}: {len(missing)} of {len(items)} videos listed in the annotation "
        f"files are missing under {manual_dir}, e.g. {missing[:3]}. Put the video files where the "
        f"annotations expect them, then run: {PREPARE_COMMAND.format(name=name)}")
  if missing:
    logging.warning("%s/%s: %d listed videos are missing and will be skipped, e.g. %s", name,
                    split, len(missing), missing[:5])


def find_first(manual_dir, candidates, what, name, expected):
  """The first existing path among `candidates` (relative to manual_dir), or a one-line error."""
  for candidate in candidates:
    path = os.path.join(manual_dir, candidate)
    if os.path.exists(path):
      return path
  raise DatasetNotPreparedError(
      f"{name}: no {what} in manual dir {manual_dir} (looked for {', '.join(candidates)}); "
      f"expected {expected}")


def index_video_files(folder, extensions=(".mp4", ".webm", ".mkv", ".avi", ".mov")):
  """{file stem: path} for every video under `folder`, at any depth (flat or per-class layout)."""
  found = {}
  for root, _, files in os.walk(folder):
    for file_name in files:
      stem, extension = os.path.splitext(file_name)
      if extension.lower() in extensions:
        found.setdefault(stem, os.path.join(root, file_name))
  return found
