"""Ordered, padded evaluation input: every example of a split counted exactly once on any number
of processes (DESIGN §8, big_vision's make_for_inference).

Each process reads its contiguous part of the split (sources.split_for_process) in a fixed order,
with no shuffling, applies the test transform (eval_transforms, SPEC §4.2) and pads its part with
invalid examples up to the same number of batches as every other process. Batches (NumPy):
  image: pixels uint8 [b, S, S, 3]          (one view; the training image layout)
  video: pixels uint8 [b, V, T, S, S, 3]    (V = num_temporal_clips * num_spatial_crops views,
                                             clip-major)
  both:  label int32 [b], valid bool [b]    (b = batch_size // process_count)
Padding has valid=False, label -1 and zero pixels. A record that cannot be decoded keeps its slot
as valid=False too (label -1, zero pixels): it is logged with its id and counted, never a crash,
and the data position stays a pure function of the batch number.
"""
import dataclasses
import math

from absl import logging
import tensorflow_datasets as tfds

from omnimae_jax.data import eval_transforms, sources
from omnimae_jax.data.eval_config import fail as _fail, validate_eval_source
from omnimae_jax.data._tf import tf
from omnimae_jax.data.errors import DatasetNotPreparedError

# Records decoded at once per process: each one is a nested dataset (see _decode_or_flag).
_PARALLEL_RECORDS = {"image": 16, "video": 4}
# Feature names datasets use for a record's own id (ours: 'id'; TFDS imagenet2012: 'file_name').
_ID_KEYS = ("id", "file_name")


@dataclasses.dataclass
class EvalSource:
  """One process's ordered, padded view of a labelled split; make it with `make_eval_source`.

  Iterating yields `num_batches` NumPy batches (the same number on every process); `batches(
  with_ids=True)` adds each slot's record id (bytes; b'' for padding).
  """
  name: str
  cfg: object  # ml_collections.ConfigDict of the evaluation source
  builder: object  # tfds DatasetBuilder
  process_index: int
  process_count: int
  num_examples: int  # of the whole split, all processes together
  process_examples: int  # of this process's part
  num_batches: int  # per process, the same on every process
  media_key: str
  label_key: str
  id_key: object  # str or None (then ids are b'')
  process_split: object  # this process's part of the split (a TFDS split spec)
  corrupt_ids: list = dataclasses.field(default_factory=list)  # of the latest pass

  @property
  def modality(self):
    return self.cfg.modality

  @property
  def local_batch_size(self):
    return self.cfg.batch_size // self.process_count

  @property
  def num_views(self):
    if self.modality == "image":
      return 1
    return self.cfg.num_temporal_clips * self.cfg.num_spatial_crops

  @property
  def num_classes(self):
    feature = self.builder.info.features[self.label_key]
    return getattr(feature, "num_classes", None)

  @property
  def corrupt_records(self):
    """Records of this process that could not be decoded, in the latest pass."""
    return len(self.corrupt_ids)

  @property
  def pixels_shape(self):
    """Shape of one example's pixels."""
    size = self.cfg.image_size
    if self.modality == "image":
      return (size, size, 3)
    return (self.num_views, self.cfg.num_frames, size, size, 3)

  def dataset(self):
    """tf.data.Dataset of the num_batches local batches, with the bookkeeping keys 'id' (string)
    and 'corrupt' (bool) besides pixels, label and valid."""
    examples = self._padding(0)
    if self.process_examples:  # TFDS refuses to read an empty part
      examples = self.examples(_read_in_order(self.builder, self.process_split, self.media_key))
    padding = self.num_batches * self.local_batch_size - self.process_examples
    batches = examples.concatenate(self._padding(padding)).batch(
        self.local_batch_size, drop_remainder=True)
    return batches.prefetch(1).with_options(sources.dataset_options())

  def examples(self, records):
    """Undecoded records (as TFDS reads them) -> examples in the same order, each decoded or,
    where decoding fails, flagged corrupt; several records are decoded at once."""
    return records.interleave(
        self._decode_or_flag, cycle_length=_PARALLEL_RECORDS[self.modality], block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def batches(self, with_ids=False):
    """NumPy batches {pixels, label, valid} (+ id); logs and counts undecodable records."""
    self.corrupt_ids = []
    for batch in self.dataset().as_numpy_iterator():
      ids, corrupt = batch.pop("id"), batch.pop("corrupt")
      for record_id in ids[corrupt]:
        logging.warning("evaluation source %r: record %r of %s %s could not be decoded; it "
                        "counts as an invalid example", self.name, record_id,
                        self.cfg.tfds_name, self.cfg.split)
        self.corrupt_ids.append(record_id)
      if with_ids:
        batch["id"] = ids
      yield batch

  def __iter__(self):
    return self.batches()

  def _pixels(self, media, fps):
    cfg = self.cfg
    if self.modality == "image":
      return eval_transforms.eval_image(media, image_size=cfg.image_size,
                                        resize_size=cfg.resize_size)
    return eval_transforms.eval_video_views(
        media, fps, num_frames=cfg.num_frames, clip_seconds=cfg.clip_seconds,
        image_size=cfg.image_size, num_temporal_clips=cfg.num_temporal_clips,
        num_spatial_crops=cfg.num_spatial_crops, short_side=cfg.eval_short_side,
        video_duration=cfg.video_duration)

  def _record_id(self, record):
    return record[self.id_key] if self.id_key else tf.constant(b"")

  def _decoded(self, record):
    fps = record["fps"] if self.modality == "video" else None
    return {"pixels": self._pixels(record[self.media_key], fps),
            "label": tf.cast(record[self.label_key], tf.int32), "valid": tf.constant(True),
            "id": self._record_id(record), "corrupt": tf.constant(False)}

  def _invalid(self, record_id, corrupt):
    return {"pixels": tf.zeros(self.pixels_shape, tf.uint8), "label": tf.constant(-1),
            "valid": tf.constant(False), "id": record_id, "corrupt": corrupt}

  def _decode_or_flag(self, record):
    """A one-example dataset: the decoded record, or an invalid one with its id if decoding
    raised (the record keeps its slot and its id)."""
    return sources.decoded_or_fallback(
        record, self._decoded,
        lambda r: self._invalid(self._record_id(r), tf.constant(True)))

  def _padding(self, count):
    return tf.data.Dataset.range(count).map(
        lambda _: self._invalid(tf.constant(b""), tf.constant(False)))


def _read_in_order(builder, split, media_key):
  """The split's undecoded records in a fixed order: files unshuffled, read by a deterministic
  interleave (sources.read_records always shuffles its files). No autocache: the label check
  reads one record, and a partly read cache warns."""
  read_config = tfds.ReadConfig(try_autocache=False, options=sources.dataset_options())
  return builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                            decoders={media_key: tfds.decode.SkipDecoding()})


def _process_layout(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # only for the defaults: the data package works without JAX otherwise
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def _require_labels(name, builder, cfg, label_key, media_key):
  """A classification evaluation needs labels: no label feature, or a split whose labels are
  -1 (TFDS's convention for unlabelled test splits such as imagenet2012 'test'), is an error."""
  where = f"evaluation source {name!r}: {builder.info.full_name} split {cfg.split!r}"
  if label_key is None:
    raise DatasetNotPreparedError(
        f"{where} has no labels (features: {list(builder.info.features.keys())}); evaluate on "
        "a labelled split such as 'validation'")
  first = _read_in_order(builder, cfg.split, media_key).take(1)
  labels = [int(record[label_key]) for record in first.as_numpy_iterator()]
  if labels and labels[0] < 0:
    raise DatasetNotPreparedError(
        f"{where} is unlabelled (label {labels[0]}); evaluate on a labelled split such as "
        "'validation'")


def make_eval_source(name, cfg, *, data_dir, patch_size=None, process_index=None,
                     process_count=None):
  """Validates `cfg`, opens its prepared TFDS split and returns this process's EvalSource.

  process_index/process_count default to jax.process_index()/jax.process_count(). The number of
  batches, ceil(largest process part / local batch), is the same on every process.
  """
  validate_eval_source(name, cfg, patch_size)
  process_index, process_count = _process_layout(process_index, process_count)
  if cfg.batch_size % process_count:
    _fail(name, "batch_size", cfg.batch_size,
          f"expected a multiple of the {process_count} processes")
  builder = sources.ensure_built(cfg.tfds_name, data_dir)
  num_examples = sources.num_examples(builder, cfg.split)
  if num_examples < 1:
    raise DatasetNotPreparedError(f"evaluation source {name!r}: {cfg.tfds_name} split "
                                  f"{cfg.split!r} has no examples")
  media_key, label_key = sources.media_and_label_keys(builder, cfg.modality)
  _require_labels(name, builder, cfg, label_key, media_key)
  parts = [sources.split_for_process(cfg.split, index, process_count)
           for index in range(process_count)]
  # A part is empty (size 0) where there are more processes than examples.
  part_sizes = [sources.num_examples(builder, part) for part in parts]
  local_batch = cfg.batch_size // process_count
  features = builder.info.features
  return EvalSource(
      name=name, cfg=cfg, builder=builder, process_index=process_index,
      process_count=process_count, num_examples=num_examples,
      process_examples=part_sizes[process_index],
      num_batches=math.ceil(max(part_sizes) / local_batch), media_key=media_key,
      label_key=label_key, id_key=next((key for key in _ID_KEYS if key in features), None),
      process_split=parts[process_index])

