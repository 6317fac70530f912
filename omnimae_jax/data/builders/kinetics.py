"""Kinetics 400/600/700 from the common download layout, as TFDS builders.

The official CSVs list `label,youtube_id,time_start,time_end,split[,is_cc]`; downloaders (e.g. the
CVDF mirror, kinetics-dataset scripts) save each clip as `<youtube_id>_<start:06d>_<end:06d>.mp4`
in one folder per split (flat or one sub-folder per class: both are found).
"""
import csv
import os

from absl import logging

from omnimae_jax.data.builders import video_builder
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

# split -> (annotation CSV names, clip folder names) accepted in the manual dir.
SPLIT_LAYOUT = {
    "train": (("train.csv",), ("train",)),
    "validation": (("validate.csv", "val.csv", "validation.csv"), ("val", "validate",
                                                                   "validation")),
    "test": (("test.csv",), ("test",)),
}
_CSV_FOLDERS = ("", "annotations")
_REQUIRED_COLUMNS = ("label", "youtube_id", "time_start", "time_end")

INSTRUCTIONS = """\
Put into the manual dir:
  * the official annotation CSVs (train.csv, validate.csv or val.csv, optionally test.csv), at the
    top level or in `annotations/`, with columns label,youtube_id,time_start,time_end,split;
  * one folder of clips per split (train/, val/ or validate/, test/), each clip named
    <youtube_id>_<time_start:06d>_<time_end:06d>.mp4 (e.g. abc123def45_000010_000020.mp4),
    flat or in one sub-folder per class.
Clips missing from the download are skipped and counted.
"""


def clip_stem(youtube_id, time_start, time_end):
  return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def read_annotation_csv(path):
  """[(clip stem, label)] of a Kinetics CSV, without rows that have no label (unlabelled test)."""
  with open(path, newline="") as file:
    reader = csv.DictReader(file)
    missing = [column for column in _REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
      raise LabelFileMismatchError(
          f"{path}: missing columns {missing}; expected a header with "
          f"{','.join(_REQUIRED_COLUMNS)},split.\n{INSTRUCTIONS}")
    # A dict drops repeated rows (they occur in some CSV releases; TFDS rejects duplicate keys).
    label_by_stem = {clip_stem(row["youtube_id"], row["time_start"], row["time_end"]): row["label"]
                     for row in reader if row["label"]}
  return list(label_by_stem.items())


def _first_existing(manual_dir, names, folders=("",)):
  for folder in folders:
    for name in names:
      path = os.path.join(manual_dir, folder, name)
      if os.path.exists(path):
        return path
  return None


class _Kinetics(video_builder.VideoClassificationBuilder, skip_registration=True):
  """Shared Kinetics builder; subclasses set NUM_CLASSES."""

  NUM_CLASSES = 0
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  HOMEPAGE = "https://github.com/cvdfoundation/kinetics-dataset"

  def _split_items(self, manual_dir):
    manual_dir = os.fspath(manual_dir)
    annotations = {}
    for split, (csv_names, folder_names) in SPLIT_LAYOUT.items():
      csv_path = _first_existing(manual_dir, csv_names, _CSV_FOLDERS)
      folder = _first_existing(manual_dir, folder_names)
      if csv_path and folder:
        rows = read_annotation_csv(csv_path)
        if rows:
          annotations[split] = (rows, folder)
      elif csv_path or folder:
        logging.warning("%s: split %s has %s but no %s; not building it", self.name, split,
                        csv_path or folder, "clip folder" if csv_path else "annotation CSV")
    if "train" not in annotations:
      raise DatasetNotPreparedError(
          f"{self.name}: manual dir {manual_dir} needs at least train.csv and a train/ folder "
          f"of clips.\n{INSTRUCTIONS}\nThen run: "
          f"{video_builder.PREPARE_COMMAND.format(name=self.name)}")
    class_names = sorted({label for rows, _ in annotations.values() for _, label in rows})
    if len(class_names) != self.NUM_CLASSES:
      logging.warning("%s: annotations list %d classes, the official set has %d", self.name,
                      len(class_names), self.NUM_CLASSES)
    items_per_split = {}
    for split, (rows, folder) in annotations.items():
      videos = video_builder.index_video_files(folder)
      items_per_split[split] = [
          video_builder.VideoItem(key=stem, label=label,
                                  path=videos.get(stem, os.path.join(folder, f"{stem}.mp4")))
          for stem, label in rows]
    return items_per_split, class_names


class Kinetics400(_Kinetics):
  """Kinetics-400 human action clips (~10 s, 25-30 fps)."""
  NUM_CLASSES = 400


class Kinetics600(_Kinetics):
  """Kinetics-600 human action clips."""
  NUM_CLASSES = 600


class Kinetics700(_Kinetics):
  """Kinetics-700 human action clips."""
  NUM_CLASSES = 700
