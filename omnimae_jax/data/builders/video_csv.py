"""Any folder of videos with a `path,label` CSV per split, as a TFDS builder."""
import csv
import os


from omnimae_jax.data.builders import video_builder
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

SPLIT_FILES = {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}

INSTRUCTIONS = """\
Put into the manual dir train.csv (required) and optionally validation.csv and test.csv, each with
the header `path,label` and one row per video. Paths are relative to the CSV's folder (absolute
paths work too); labels are class names, or integer class ids 0..C-1.
"""


def read_path_label_csv(csv_path):
  """[(absolute video path, label string)] from a `path,label` CSV."""
  folder = os.path.dirname(os.path.abspath(csv_path))
  with open(csv_path, newline="") as file:
    reader = csv.DictReader(file)
    if [name.strip() for name in reader.fieldnames or []][:2] != ["path", "label"]:
      raise LabelFileMismatchError(
          f"{csv_path}: the header must start with `path,label`, got {reader.fieldnames}.\n"
          f"{INSTRUCTIONS}")
    rows = []
    for line, row in enumerate(reader, start=2):
      if not row["path"] or not row["label"]:
        raise LabelFileMismatchError(f"{csv_path}:{line}: empty path or label in {row}")
      rows.append((os.path.join(folder, row["path"].strip()), row["label"].strip()))
  return rows


def class_names_from_labels(labels):
  """Integer labels keep their ids (names "0".."C-1"); other labels are classes sorted by name."""
  labels = set(labels)
  if all(label.isdigit() for label in labels):
    return [str(index) for index in range(max(int(label) for label in labels) + 1)]
  return sorted(labels)


class VideoCsv(video_builder.VideoClassificationBuilder):
  """Videos listed with their labels in train.csv / validation.csv / test.csv."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _split_items(self, manual_dir):
    manual_dir = os.fspath(manual_dir)
    rows_per_split = {split: read_path_label_csv(os.path.join(manual_dir, file_name))
                      for split, file_name in SPLIT_FILES.items()
                      if os.path.exists(os.path.join(manual_dir, file_name))}
    if "train" not in rows_per_split:
      raise DatasetNotPreparedError(
          f"{self.name}: no train.csv in manual dir {manual_dir}.\n{INSTRUCTIONS}Then run: "
          f"{video_builder.PREPARE_COMMAND.format(name=self.name)}")
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
