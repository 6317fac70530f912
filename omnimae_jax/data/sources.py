"""TFDS datasets by name: prepared-or-clear-error, per-process splits, undecoded records.

Nothing here downloads: real datasets are built once by the user (see `omnimae_jax.data.prepare`
and the README's "Preparing data"); only the synthetic demo set is built on demand.
"""
from concurrent import futures
import contextlib
import io
import os
import re

from absl import logging
import tensorflow_datasets as tfds

from omnimae_jax.data import builders  # noqa: F401  (registers our builders with TFDS)
from omnimae_jax.data._tf import tf
from omnimae_jax.data.builders.video_builder import PREPARE_COMMAND
from omnimae_jax.data.errors import CorruptDataError, DatasetNotPreparedError

DEMO_DATASET = "omnimae_demo"
# Files re-read at once when looking for the damaged file of a split (I/O bound).
_PARALLEL_FILE_CHECKS = 8
# Damaged files named in full in an error message; the rest are counted.
_FILES_NAMED = 5

_HOW_TO_PREPARE = {
    "imagenet2012": (
        "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in a manual "
        "dir and run: python -m omnimae_jax.data.prepare imagenet2012 --manual_dir=DIR "
        "--data_dir=DATA_DIR"),
    "something_something_v2": "see the README section 'Preparing data', then run: "
                              + PREPARE_COMMAND.format(name="something_something_v2"),
    "video_csv": "write train.csv (path,label) next to your videos, then run: "
                 + PREPARE_COMMAND.format(name="{tfds_name}"),
    "image_folder": "put your images in one sub-folder per class, then run: "
                    + PREPARE_COMMAND.format(name="{tfds_name}"),
}
for _size in (400, 600, 700):
  _HOW_TO_PREPARE[f"kinetics{_size}"] = (
      "see the README section 'Preparing data', then run: "
      + PREPARE_COMMAND.format(name=f"kinetics{_size}"))


def how_to_prepare(tfds_name):
  name = tfds_name.split(":")[0]  # named datasets (video_csv/NAME) keep their name
  base_name = name.split("/")[0]
  hint = _HOW_TO_PREPARE.get(
      base_name,
      f"build it once before training: python -m omnimae_jax.data.prepare {base_name} "
      "--data_dir=DATA_DIR (adding --manual_dir=DIR for datasets that need a manual download)")
  return hint.replace("{tfds_name}", name)


def _builder_or_raise(tfds_name, data_dir):
  try:
    return tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise DatasetNotPreparedError(
        f"unknown TFDS dataset {tfds_name!r} (data_dir {data_dir}); besides the TFDS catalog, "
        f"this project builds {list(builders.DATASET_NAMES)}") from error


def load_builder(tfds_name, data_dir):
  """The TFDS builder of a prepared dataset, or DatasetNotPreparedError saying how to build it."""
  data_dir = os.path.expanduser(data_dir)
  builder = _builder_or_raise(tfds_name, data_dir)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"dataset {tfds_name!r} is not prepared in data_dir {data_dir} (expected "
        f"{builder.data_path}); {how_to_prepare(tfds_name)}")
  return builder


def ensure_built(tfds_name, data_dir):
  """load_builder, except that the synthetic demo set is generated (seconds) when missing.

  Real datasets are never built or downloaded implicitly: they raise DatasetNotPreparedError.
  """
  if tfds_name.split("/")[0] != DEMO_DATASET:
    return load_builder(tfds_name, data_dir)
  data_dir = os.path.expanduser(data_dir)
  builder = _builder_or_raise(tfds_name, data_dir)
  if not builder.is_prepared():
    print(f"Generating the demo dataset {tfds_name} in {data_dir} (once, seconds)", flush=True)
    # TFDS announces a download of 'Unknown size' and draws progress bars; nothing is
    # downloaded and it takes seconds, so its chatter goes to the debug log only.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    logging.debug("TFDS while generating %s:\n%s", tfds_name, chatter.getvalue())
  return builder


def num_examples(builder, split):
  """Examples in `split` (slicing such as 'train[:90%]' allowed), with a clear unknown-split error."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise DatasetNotPreparedError(
        f"dataset {builder.info.full_name!r} in {builder.data_dir} has no split {split!r} "
        f"({error}); available: {sorted(builder.info.splits.keys())}") from error


def split_for_process(split, process_index, process_count):
  """This process's contiguous, disjoint part of `split`; the parts of all processes cover it."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count)[process_index]


def media_and_label_keys(builder, modality):
  """(pixels feature key, label feature key or None) of a classification dataset."""
  features = builder.info.features
  wanted = tfds.features.Video if modality == "video" else tfds.features.Image
  supervised = builder.info.supervised_keys
  if supervised and isinstance(features[supervised[0]], wanted):
    return supervised[0], supervised[1]
  media = [key for key, feature in features.items() if isinstance(feature, wanted)]
  if not media:
    raise DatasetNotPreparedError(
        f"dataset {builder.info.full_name!r} has no {wanted.__name__} feature for a "
        f"{modality} source (features: {list(features.keys())}); check the source's modality")
  return media[0], ("label" if "label" in features else None)


def dataset_options():
  """tf.data options of every input pipeline: a deterministic order (exact resume), and fixed
  parallelism (one parallel call per core) rather than tf.data's autotuning.

  Deleting an autotuned iterator waits for the autotuner's thread (a native stack of the stall:
  RootDataset::Iterator's destructor joining it). A training run with videos spent from 7.5 s to
  its loader's 10 s limit closing it at 6 of 10 ends of a run (each run's end, and the exit after
  a preemption's save), 0 of 10 without autotuning; the input was as fast without it (2 cores,
  `benchmark input`).
  """
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  # AUTOTUNE parallelism without autotuning: min(this, tf.data's thread pool, one per core).
  options.autotune.initial_parallelism = os.cpu_count() or 1
  return options


def read_records(builder, split, *, media_key, shuffle_seed):
  """Undecoded examples of `split`: the media feature stays encoded (JPEG bytes, or a [n] vector
  of JPEG frames) so that skipping and sampling cost no decoding. The file order is shuffled
  from `shuffle_seed` and the interleave is deterministic, so the order is reproducible. Each
  example has a 'tfds_id' (its file and position: what a log names when it cannot be decoded)."""
  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      try_autocache=False,  # a cached first epoch would fix the order for every later epoch
      options=dataset_options(),
      add_tfds_id=True,
  )
  return builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                            decoders={media_key: tfds.decode.SkipDecoding()})


def split_files(builder, split):
  """Paths of the files that hold `split` (a slice or a process's part too), in order."""
  instructions = builder.info.splits[split].file_instructions
  return list(dict.fromkeys(os.fspath(instruction.filename) for instruction in instructions))


def _without_tf_decorations(message):
  """'{{function_node ...}} corrupted record at 12 [Op:IteratorGetNext]' -> 'corrupted record
  at 12': what TF says, without where in its graph it said it."""
  message = re.sub(r"\{\{[^}]*\}\}", "", message)
  return re.sub(r"\[Op:[^\]]*\].*$", "", message, flags=re.S).strip()


def file_read_error(path):
  """Why the TFRecord file at `path` cannot be read in full (a record failing its checksum, a
  record cut short), or None when every record reads back."""
  try:
    for _ in tf.data.TFRecordDataset(path).batch(1024):
      pass
  except tf.errors.OpError as error:
    return _without_tf_decorations(error.message)
  return None


def damaged_files(builder, split):
  """[(path, why)] for the files of `split` that cannot be read in full (they are all re-read)."""
  paths = split_files(builder, split)
  with futures.ThreadPoolExecutor(_PARALLEL_FILE_CHECKS) as pool:
    reasons = list(pool.map(file_read_error, paths))
  return [(path, why) for path, why in zip(paths, reasons) if why]


def read_error_as_corrupt_data(builder, tfds_name, split, error, what):
  """CorruptDataError for a read error of `split` (e.g. tf.errors.DataLossError), naming the
  damaged files; `what` starts the message (e.g. "data source 'in1k'")."""
  logging.warning("%s: reading %s %s failed (%s); re-reading its files to find the damaged one",
                  what, tfds_name, split, _without_tf_decorations(error.message))
  damaged = damaged_files(builder, split)
  fix = (f"delete {builder.data_path} and prepare the dataset again ({how_to_prepare(tfds_name)})")
  if not damaged:
    return CorruptDataError(
        f"{what}: reading {tfds_name} {split} failed ({_without_tf_decorations(error.message)}), "
        f"yet every file of it read back in full on a second try: the storage may be failing. "
        f"If this repeats, {fix}")
  named = "; ".join(f"{path} ({why})" for path, why in damaged[:_FILES_NAMED])
  more = f"; and {len(damaged) - _FILES_NAMED} more" if len(damaged) > _FILES_NAMED else ""
  return CorruptDataError(f"{what}: {len(damaged)} file(s) of {tfds_name} {split} are damaged: "
                          f"{named}{more}. They cannot be repaired: {fix}")


def decoded_or_fallback(element, decode, fallback):
  """A one-element dataset: decode(*element), or fallback(*element) if decoding raised.

  tf.data has no per-element try/except: a nested dataset whose ignore_errors() came up empty
  falls through to the fallback, so a corrupt record keeps its slot. Only the decode map is under
  ignore_errors, so a read error of the split (upstream) is raised at once instead of being
  retried forever.
  """
  one = tf.data.Dataset.from_tensors(element)
  decoded = one.map(decode).ignore_errors(log_warning=True)
  return decoded.concatenate(one.map(fallback)).take(1)
