"""Kinetics 400/600/700 from the common download layout, as TFDS builders.

The official CSVs list `label,youtube_id,time_start,time_end,split[,is_cc]`; downloaders (e.g. the
CVDF mirror, kinetics-dataset scripts) save each clip as `<youtube_id>_<start:06d>_<end:06d>.mp4`
in one folder per split (flat or one sub-folder per class: both are found).
"""
import os

from absl import logging

from omnimae_jax.data.builders import annotation_files, video_builder
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
LAYOUT = ("train.csv (and validate.csv or val.csv, test.csv; top level or annotations/) with "
          "header label,youtube_id,time_start,time_end,split, and a train/ (val/, test/) folder "
          "of <youtube_id>_<time_start:06d>_<time_end:06d>.mp4 clips")
CSV_EXPECTED = ("a Kinetics annotation CSV with header label,youtube_id,time_start,time_end,split "
                "and one clip per row (time_start, time_end in seconds)")


def clip_stem(youtube_id, time_start, time_end):
  return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _row_stem(path, line, row):
  youtube_id = annotation_files.require_value(path, line, row, "youtube_id", CSV_EXPECTED)
  try:
    return clip_stem(youtube_id, row["time_start"], row["time_end"])
  except (ValueError, OverflowError) as error:
    raise LabelFileMismatchError(
        f"{path}:{line}: time_start {row['time_start']!r} or time_end {row['time_end']!r} is not "
        f"a number of seconds; expected {CSV_EXPECTED}") from error


def read_annotation_csv(path, labelled=True):
  """[(clip stem, label)] of a Kinetics CSV. labelled=False (the test split) accepts a CSV without
  labels and drops its unlabelled rows; otherwise an empty label is an error."""
  required = _REQUIRED_COLUMNS if labelled else _REQUIRED_COLUMNS[1:]
  label_by_stem = {}
  for line, row in annotation_files.read_csv(path, required, CSV_EXPECTED):
    stem = _row_stem(path, line, row)
    if labelled:
      annotation_files.require_value(path, line, row, "label", CSV_EXPECTED)
    if row.get("label"):
      # A dict drops repeated rows (some CSV releases have them; TFDS rejects duplicate keys).
      label_by_stem[stem] = row["label"]
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
  LAYOUT = LAYOUT

  HOMEPAGE = "https://github.com/cvdfoundation/kinetics-dataset"

  def _annotations(self, manual_dir):
    """{split: (rows, clip folder)}; every CSV is read and checked before the slow walk over the
    clips."""
    annotations = {}
    for split, (csv_names, folder_names) in SPLIT_LAYOUT.items():
      csv_path = _first_existing(manual_dir, csv_names, _CSV_FOLDERS)
      folder = _first_existing(manual_dir, folder_names)
      if split == "train" and not (csv_path and folder):
        missing = "train/ folder of clips" if csv_path else "train.csv (top level or annotations/)"
        raise DatasetNotPreparedError(
            f"{self.name}: no {missing} in manual dir {manual_dir}; expected {LAYOUT}")
      if not (csv_path and folder):
        if csv_path or folder:
          logging.warning("%s: split %s has %s but no %s; not building it", self.name, split,
                          csv_path or folder, "clip folder" if csv_path else "annotation CSV")
        continue
      rows = read_annotation_csv(csv_path, labelled=split != "test")
      if rows:
        annotations[split] = (rows, folder)
      elif split == "test":  # e.g. Kinetics-700-2020's test.csv has no label column
        logging.warning("%s: %s has no labels; not building split test", self.name, csv_path)
      else:
        raise LabelFileMismatchError(f"{csv_path} lists no clips; expected {CSV_EXPECTED}")
    return annotations

  def _split_items(self, manual_dir):
    annotations = self._annotations(os.fspath(manual_dir))
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
