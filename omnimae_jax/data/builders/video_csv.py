"""Any folder of videos with a `path,label` CSV per split, as a TFDS builder.

Several such datasets live side by side in one data_dir: `video_csv/NAME` (see named_configs).
"""
import os

from omnimae_jax.data.builders import annotation_files, named_configs, video_builder
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

SPLIT_FILES = {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}

INSTRUCTIONS = """\
Put into the manual dir train.csv (required) and optionally validation.csv and test.csv, each with
the header `path,label` and one row per video. Paths are relative to the CSV's folder (absolute
paths work too); labels are class names, or integer class ids 0..C-1.
"""
LAYOUT = ("train.csv (and optionally validation.csv, test.csv) with header path,label, paths "
          "relative to the CSV's folder")
CSV_EXPECTED = ("a CSV with header path,label and one row per video (path relative to the CSV's "
                "folder or absolute; label a class name or an integer id)")


def read_path_label_csv(csv_path):
  """[(absolute video path, label string)] from a `path,label` CSV."""
  folder = os.path.dirname(os.path.abspath(csv_path))
  rows = annotation_files.read_csv(csv_path, ("path", "label"), CSV_EXPECTED)
  if not rows:
    raise LabelFileMismatchError(f"{csv_path} lists no videos; expected {CSV_EXPECTED}")
  first_line_by_path = {}
  pairs = []
  for line, row in rows:
    relative = annotation_files.require_value(csv_path, line, row, "path", CSV_EXPECTED)
    path = os.path.normpath(os.path.join(folder, relative))  # "./a.mp4" and "a.mp4" are one
    label = annotation_files.require_value(csv_path, line, row, "label", CSV_EXPECTED)
    if path in first_line_by_path:  # TFDS would reject the duplicate key only after decoding
      raise LabelFileMismatchError(
          f"{csv_path}:{line}: {row['path']} is listed again (first on line "
          f"{first_line_by_path[path]}); expected each video once")
    first_line_by_path[path] = line
    pairs.append((path, label))
  return pairs


def class_names_from_labels(labels):
  """Integer labels keep their ids (names "0".."C-1"); other labels are classes sorted by name."""
  labels = set(labels)
  if all(label.isdigit() for label in labels):
    return [str(index) for index in range(max(int(label) for label in labels) + 1)]
  return sorted(labels)


class VideoCsv(named_configs.NamedConfigs, video_builder.VideoClassificationBuilder):
  """Videos listed with their labels in train.csv / validation.csv / test.csv.

  `video_csv/NAME` is a dataset of its own (frames stored at short side <= 256; NAME-short320,
  NAME-original... pick another size); the fixed configs (short256, ...) are one unnamed dataset.
  """

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  LAYOUT = LAYOUT
  CONFIG_CLASS = video_builder.VideoBuilderConfig
  DEFAULT_SHORT_SIDE = 256

  def _split_items(self, manual_dir):
    manual_dir = os.fspath(manual_dir)
    if not os.path.exists(os.path.join(manual_dir, SPLIT_FILES["train"])):
      raise DatasetNotPreparedError(
          f"{self.full_config_name}: no train.csv in manual dir {manual_dir}; expected {LAYOUT}")
    rows_per_split = {split: read_path_label_csv(os.path.join(manual_dir, file_name))
                      for split, file_name in SPLIT_FILES.items()
                      if os.path.exists(os.path.join(manual_dir, file_name))}
    all_labels = [label for rows in rows_per_split.values() for _, label in rows]
    class_names = class_names_from_labels(all_labels)
    # Integer labels may be written "007" or "7": both mean the class named "7".
    integer_labels = all(label.isdigit() for label in all_labels)
    items_per_split = {}
    for split, rows in rows_per_split.items():
      items_per_split[split] = [
          video_builder.VideoItem(key=os.path.relpath(path, manual_dir), path=path,
                                  label=str(int(label)) if integer_labels else label)
          for path, label in rows]
    return items_per_split, class_names
