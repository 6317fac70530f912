"""Something-Something v2 from the official download (SPEC §3.1), as a TFDS builder."""
import os

from absl import logging

from omnimae_jax.data.builders import annotation_files, video_builder
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
LAYOUT = ("labels.json, train.json and validation.json (at the top level or in labels/) and "
          "every <id>.webm video (any sub-folder)")
LABELS_EXPECTED = 'the SSv2 labels file {template: index}, e.g. {"Holding something": "0", ...}'
SPLIT_EXPECTED = ('an SSv2 annotation array [{"id": ..., "template": ..., "label": ..., '
                  '"placeholders": ...}, ...]')


def template_to_class_name(template):
  """The official files write objects as "[something]" in templates and "something" in
  labels.json: drop the brackets to map one onto the other."""
  return template.replace("[", "").replace("]", "")


def class_names_from_labels_file(path):
  """Class names ordered by their index in labels.json ({"Approaching something ...": "0", ...})."""
  content = annotation_files.load_json(path, LABELS_EXPECTED)
  if not isinstance(content, dict) or not content:
    what = "an empty object" if content == {} else annotation_files.json_kind(content)
    raise LabelFileMismatchError(f"{path} holds {what}; expected {LABELS_EXPECTED}")
  index_by_name = {}
  for name, index in content.items():
    # The official file writes indices as strings ("0"); plain integers are accepted too.
    if isinstance(index, bool) or not str(index).isdigit():
      raise LabelFileMismatchError(
          f"{path}: class {name!r} has index {index!r}; expected {LABELS_EXPECTED}")
    index_by_name[name] = int(index)
  _require_indices_0_to_n(path, sorted(index_by_name.values()))
  return sorted(index_by_name, key=index_by_name.get)


def _require_indices_0_to_n(path, indices):
  for position, index in enumerate(indices):
    if index != position:
      problem = (f"index {index} is used twice" if index < position
                 else f"no class has index {position}")
      raise LabelFileMismatchError(
          f"{path}: {problem}; expected each of 0..{len(indices) - 1} once in {LABELS_EXPECTED}")


def _entry_problem(entry):
  if not isinstance(entry, dict):
    return f"is {annotation_files.json_kind(entry)}, not an object"
  if not str(entry.get("id", "")).strip():
    return "has no id"
  if not isinstance(entry.get("template"), str):
    return "has no template"
  return None


def read_split_file(path, class_names, labels_path):
  """[(video id, class name)] of train.json or validation.json, checked against labels.json."""
  entries = annotation_files.load_json(path, SPLIT_EXPECTED)
  if not isinstance(entries, list):
    raise LabelFileMismatchError(
        f"{path} holds {annotation_files.json_kind(entries)}; expected {SPLIT_EXPECTED}")
  known = set(class_names)
  first_entry_by_id = {}
  pairs = []
  for position, entry in enumerate(entries):
    problem = _entry_problem(entry)
    if problem:
      raise LabelFileMismatchError(
          f"{path}: entry {position} ({str(entry)[:80]}) {problem}; expected {SPLIT_EXPECTED}")
    video_id, template = str(entry["id"]).strip(), entry["template"]
    if template_to_class_name(template) not in known:
      raise LabelFileMismatchError(
          f"{path}: entry {position} (video {video_id}) has template {template!r}, which is not "
          f"a class in {labels_path}; expected label files of the same SSv2 release")
    if video_id in first_entry_by_id:  # TFDS would reject the duplicate key only after decoding
      raise LabelFileMismatchError(
          f"{path}: video {video_id} is listed twice (entries {first_entry_by_id[video_id]} and "
          f"{position}); expected each video once")
    first_entry_by_id[video_id] = position
    pairs.append((video_id, template_to_class_name(template)))
  return pairs


class SomethingSomethingV2(video_builder.VideoClassificationBuilder):
  """Something-Something v2: 174 classes of hand-object interactions, ~12 fps .webm clips."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  LAYOUT = LAYOUT

  HOMEPAGE = "https://developer.qualcomm.com/software/ai-datasets/something-something"

  def _split_items(self, manual_dir):
    manual_dir = os.fspath(manual_dir)

    def annotation(file_name):
      return video_builder.find_first(manual_dir, [file_name, os.path.join("labels", file_name)],
                                      file_name, self.name, LAYOUT)

    # Every annotation file is read and checked before the (slow) walk over the videos.
    labels_path = annotation("labels.json")
    class_names = class_names_from_labels_file(labels_path)
    pairs_per_split = {split: read_split_file(annotation(file_name), class_names, labels_path)
                       for split, file_name in SPLIT_FILES.items()}
    if len(class_names) != NUM_OFFICIAL_CLASSES:  # a subset is fine, but worth a word
      logging.warning("%s lists %d classes; the official SSv2 has %d", labels_path,
                      len(class_names), NUM_OFFICIAL_CLASSES)
    videos = video_builder.index_video_files(manual_dir, extensions=(".webm",))
    if not videos:
      raise DatasetNotPreparedError(
          f"{self.name}: no .webm videos under manual dir {manual_dir}; expected {LAYOUT}")
    def item(video_id, class_name):
      path = videos.get(video_id, os.path.join(manual_dir, f"{video_id}.webm"))
      return video_builder.VideoItem(key=video_id, path=path, label=class_name)

    items_per_split = {split: [item(*pair) for pair in pairs]
                       for split, pairs in pairs_per_split.items()}
    return items_per_split, class_names
