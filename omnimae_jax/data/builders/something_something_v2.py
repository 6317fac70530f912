"""Something-Something v2 from the official download (SPEC §3.1), as a TFDS builder."""
import json
import os

from absl import logging

from omnimae_jax.data.builders import video_builder
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

NUM_OFFICIAL_CLASSES = 174
# Official annotation file per split we build (test.json has no labels).
SPLIT_FILES = {"train": "train.json", "validation": "validation.json"}

INSTRUCTIONS = """\
Download Something-Something v2 from Qualcomm (https://www.qualcomm.com/developer/software/\
something-something-v-2-dataset), concatenate and extract the video archive, and put into the
manual dir (sub-folders are fine, e.g. the official `labels/` and `20bn-something-something-v2/`):
  * <id>.webm for every video,
  * labels.json (template -> class index), train.json and validation.json
    (lists of {"id", "label", "template", "placeholders"}).
"""


def template_to_class_name(template):
  """The official files write objects as "[something]" in templates and "something" in
  labels.json: drop the brackets to map one onto the other."""
  return template.replace("[", "").replace("]", "")


def _load_json(path):
  try:
    with open(path) as file:
      return json.load(file)
  except json.JSONDecodeError as error:
    raise LabelFileMismatchError(f"{path} is not valid JSON ({error}).\n{INSTRUCTIONS}") from error


def class_names_from_labels_file(path):
  """Class names ordered by their index in labels.json ({"Approaching something ...": "0", ...})."""
  index_by_name = {name: int(index) for name, index in _load_json(path).items()}
  names = sorted(index_by_name, key=index_by_name.get)
  if [index_by_name[name] for name in names] != list(range(len(names))):
    raise LabelFileMismatchError(f"{path}: class indices are not 0..{len(names) - 1}")
  if len(names) != NUM_OFFICIAL_CLASSES:
    logging.warning("%s lists %d classes; the official SSv2 has %d", path, len(names),
                    NUM_OFFICIAL_CLASSES)
  return names


class SomethingSomethingV2(video_builder.VideoClassificationBuilder):
  """Something-Something v2: 174 classes of hand-object interactions, ~12 fps .webm clips."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  HOMEPAGE = "https://developer.qualcomm.com/software/ai-datasets/something-something"

  def _split_items(self, manual_dir):
    manual_dir = os.fspath(manual_dir)

    def annotation(file_name):
      return video_builder.find_first(manual_dir, [file_name, os.path.join("labels", file_name)],
                                      file_name, self.name, INSTRUCTIONS)

    class_names = class_names_from_labels_file(annotation("labels.json"))
    known = set(class_names)
    videos = video_builder.index_video_files(manual_dir, extensions=(".webm",))
    if not videos:
      raise DatasetNotPreparedError(
          f"{self.name}: no .webm videos under manual dir {manual_dir}.\n{INSTRUCTIONS}")
    items_per_split = {}
    for split, file_name in SPLIT_FILES.items():
      path = annotation(file_name)
      items = []
      for entry in _load_json(path):
        class_name = template_to_class_name(entry["template"])
        if class_name not in known:
          raise LabelFileMismatchError(
              f"{path}: template {entry['template']!r} of video {entry['id']} is not in "
              f"labels.json; the label files come from different releases.\n{INSTRUCTIONS}")
        video_id = str(entry["id"])
        video_path = videos.get(video_id, os.path.join(manual_dir, f"{video_id}.webm"))
        items.append(video_builder.VideoItem(key=video_id, path=video_path, label=class_name))
      items_per_split[split] = items
    return items_per_split, class_names
