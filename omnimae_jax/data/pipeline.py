"""One data source -> one epoch of local batches, exactly resumable (DESIGN §1, §8, SPEC §3.4).

Per epoch and process: read this process's part of the split (files shuffled from (seed, epoch)),
shuffle records in a buffer, walk steps_per_epoch batches' worth of records, number them, skip the
ones already consumed (before any decoding), then turn every record into exactly one sample (with
its replicas), with randomness drawn from (seed, epoch, process, record number) only, in two
stages:
  decode     read the header, choose the crop box or the frames (and the replicas' crop boxes),
             decode only those (a video: the region the replicas' crops cover). An error
             here means a corrupt record: it becomes a placeholder of the same shapes (zero
             pixels, label -1, valid False) and keeps its slot.
  transform  resize, flip, replicas, masks. An error here is a bug and is raised.
So `dataset(epoch, k)` yields exactly the batches k, k+1, ... of `dataset(epoch)`, corrupt records
or not, which is how the trainer resumes; the step weighs samples by `valid`.

Batches (NumPy after iteration) hold uint8 pixels; normalise on the device with
`omnimae_jax.pixels.normalize`:
  image: pixels uint8 [B, H, W, 3], mask bool [B, N], keep_idx int32 [B, N_vis], label int32 [B]
         (-1 for a placeholder), valid bool [B]
  video: pixels uint8 [B, T, H, W, 3], same other keys; B = clips x num_replicas, the replicas of
         a clip adjacent, each with its own crop, flip and mask (a corrupt clip: all invalid).
`dataset()` also has record_id (bytes [B], the record's TFDS id, for logs); `batches()` takes it
out, logs the first corrupt records, and raises CorruptDataError for damaged data.
"""
import dataclasses
import math
import os

from absl import logging
import numpy as np

from omnimae_jax.data import config as config_lib
from omnimae_jax.data import augment, masking, sources, transforms
from omnimae_jax.data._tf import tf
from omnimae_jax.data.errors import CorruptDataError

# Corrupt records logged (and handed to the loop) per source and pass over an epoch; the rest are
# only counted, through `valid`.
LOGGED_CORRUPT_RECORDS = 10
# Folded into a record's pixel seed for its RandAugment draws (apart from crop and flip draws).
_RAND_AUGMENT_STREAM = 1
# Records decoded at once, each in its own nested dataset; at least this many, so that setting the
# nested datasets up overlaps with decoding (one per core, tf.data's AUTOTUNE, measured ~10%
# slower on 2 cores).
_MIN_RECORDS_IN_FLIGHT = 32
# max_corrupt_fraction is checked once a pass has read this many records (or at its last batch):
# on fewer, two corrupt clips in a row would already look like a damaged split.
_MIN_RECORDS_FOR_CORRUPT_FRACTION = 32


def derived_seed(*parts):
  """A 31-bit integer seed from integer parts (for TFDS file shuffling and tf.data.shuffle)."""
  return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1)[0] >> 1)


def _record_seeds(epoch_seed, index):
  """(pixel, clip, mask) seeds of record number `index`; both stages derive them alike."""
  record_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
  return tf.unstack(tf.random.experimental.stateless_split(record_seed, 3))


def _crop_and_flip_seeds(pixel_seed):
  # Split as transforms.train_image splits its seed, so that the two stages together give
  # exactly its image.
  return tf.unstack(tf.random.experimental.stateless_split(pixel_seed, 2))


@dataclasses.dataclass
class Source:
  """One source's static facts and its per-epoch datasets; make it with `make_source`."""
  name: str
  cfg: object  # ml_collections.ConfigDict of the source
  builder: object  # tfds DatasetBuilder
  seed: int
  process_index: int
  process_count: int
  num_examples: int  # of the whole split, all processes together
  steps_per_epoch: int
  grid: tuple  # (T', H', W') tokens per sample
  num_visible: int
  media_key: str
  label_key: object  # str or None
  process_split: object  # this process's part of the split (a TFDS split spec)

  @property
  def num_classes(self):
    """Classes of the dataset's label feature (None when it has none or they are not named)."""
    feature = self.builder.info.features[self.label_key] if self.label_key else None
    return getattr(feature, "num_classes", None)

  @property
  def modality(self):
    return self.cfg.modality

  @property
  def local_batch_size(self):
    return self.cfg.batch_size // self.process_count

  @property
  def clips_per_local_batch(self):
    return self.local_batch_size // self.cfg.num_replicas

  def dataset(self, epoch, skip_batches=0):
    """tf.data.Dataset of the local batches skip_batches .. steps_per_epoch-1 of `epoch`."""
    if not 0 <= skip_batches <= self.steps_per_epoch:
      raise ValueError(f"source {self.name!r}: skip_batches={skip_batches} is not in "
                       f"[0, {self.steps_per_epoch}]")
    clips_needed = self.steps_per_epoch * self.clips_per_local_batch
    records = sources.read_records(
        self.builder, self.process_split, media_key=self.media_key,
        shuffle_seed=derived_seed(self.seed, epoch, self.process_index, 0))
    records = records.map(self._keep_used_features)
    # Repeat so that repeat_factor > 1 and rounding never run the epoch dry; reshuffled per pass.
    records = records.shuffle(self.cfg.shuffle_buffer,
                              seed=derived_seed(self.seed, epoch, self.process_index, 1),
                              reshuffle_each_iteration=True).repeat()
    numbered = records.take(clips_needed).enumerate()
    numbered = numbered.skip(skip_batches * self.clips_per_local_batch)  # before decoding
    epoch_seed = self._epoch_seed(epoch)
    # One record per nested dataset, several decoded at once; every nested dataset yields one
    # element, so the order is the records' order whatever the cycle length.
    decoded = numbered.interleave(
        lambda index, record: self._decoded_or_placeholder(epoch_seed, index, record),
        cycle_length=max(_MIN_RECORDS_IN_FLIGHT, os.cpu_count() or 1), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    samples = decoded.map(lambda element: self._transform(epoch_seed, element),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = samples.batch(self.clips_per_local_batch, drop_remainder=True)
    batches = batches.map(_merge_replicas_into_batch)
    return batches.prefetch(2).with_options(sources.dataset_options())

  def batches(self, epoch, skip_batches=0):
    """Yields (batch, corrupt_ids) for each batch of dataset(epoch, skip_batches).

    batch: NumPy arrays only (record_id taken out). corrupt_ids: the TFDS ids (str) of the batch's
    corrupt records that are among the first LOGGED_CORRUPT_RECORDS of this pass; each is logged.
    Raises CorruptDataError naming the damaged files when the split cannot be read, and once more
    than cfg.max_corrupt_fraction of the records this pass has read (from skip_batches on) are
    corrupt.
    """
    tally = _CorruptTally(self, epoch, batches=self.steps_per_epoch - skip_batches)
    for batch in self._numpy_batches(epoch, skip_batches):
      record_ids = batch.pop("record_id")
      yield batch, tally.add(batch["valid"], record_ids)

  def _numpy_batches(self, epoch, skip_batches):
    iterator = self.dataset(epoch, skip_batches).as_numpy_iterator()
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.DataLossError as error:  # a record failed its checksum or is cut short
        raise sources.read_error_as_corrupt_data(
            self.builder, self.cfg.tfds_name, self.process_split, error,
            what=f"data source {self.name!r}") from error
      yield batch

  def _keep_used_features(self, record):
    kept = {"media": record[self.media_key], "record_id": record["tfds_id"]}
    kept["label"] = (tf.cast(record[self.label_key], tf.int32) if self.label_key
                     else tf.constant(-1, tf.int32))
    if self.modality == "video":
      kept["fps"] = tf.cast(record["fps"], tf.float32)
    return kept

  def _epoch_seed(self, epoch):
    base = tf.constant([self.seed, epoch], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, self.process_index)

  def _decoded_or_placeholder(self, epoch_seed, index, record):
    """A one-element dataset: the record's decode stage, or its placeholder if that raised."""
    return sources.decoded_or_fallback(
        (index, record), lambda index, record: self._decode(epoch_seed, index, record),
        self._placeholder)

  def _decode(self, epoch_seed, index, record):
    """Decode stage: only the pixels the sample uses (image: the crop box [h, w, 3]; video: the
    region of the clip's frames that its replicas' crops cover [T, h, w, 3], and those crops,
    `boxes` [R, 4] in the region). Any error here means the record is corrupt."""
    cfg = self.cfg
    pixel_seed, clip_seed, _ = _record_seeds(epoch_seed, index)
    media = record["media"]
    extra = {}
    if self.modality == "image":
      crop_seed, _ = _crop_and_flip_seeds(pixel_seed)
      shape = transforms.decode_image_shape(media)  # reads the header only
      box = transforms.random_resized_crop_box(shape[0], shape[1], tuple(cfg.crop_scale),
                                               tuple(cfg.crop_ratio), crop_seed)
      pixels = transforms.decode_and_crop(media, box)
    else:
      frame_indices = transforms.clip_frame_indices(
          tf.shape(media)[0], record["fps"], clip_seed, num_frames=cfg.num_frames,
          clip_seconds=cfg.clip_seconds)
      # The replicas' crops are drawn here (from the frames' size in the JPEG header) so that
      # only their union is decoded: a region, once for all replicas.
      height, width = tf.unstack(transforms.frame_shape(media, frame_indices))
      boxes = transforms.video_replica_boxes(
          height, width, pixel_seed, num_replicas=cfg.num_replicas, short_side=cfg.short_side,
          crop_scale=tuple(cfg.crop_scale), crop_ratio=tuple(cfg.crop_ratio))
      region = transforms.decode_region(boxes, height, width)
      pixels = transforms.decode_frames(media, frame_indices, cfg.num_frames, region)
      extra = {"boxes": boxes - tf.stack([region[0], region[1], 0, 0])}  # in the region
    return {"index": index, "pixels": pixels, "label": record["label"],
            "valid": tf.constant(True), "record_id": record["record_id"], **extra}

  def _placeholder(self, index, record):
    """A corrupt record's stand-in: a black 1x1 crop (resized like any crop), label -1."""
    if self.modality == "image":
      size, extra = [1, 1, 3], {}
    else:
      size = [self.cfg.num_frames, 1, 1, 3]
      extra = {"boxes": tf.tile(tf.constant([[0, 0, 1, 1]], tf.int32),
                                [self.cfg.num_replicas, 1])}
    return {"index": index, "pixels": tf.zeros(size, tf.uint8), "label": tf.constant(-1),
            "valid": tf.constant(False), "record_id": record["record_id"], **extra}

  def _transform(self, epoch_seed, element):
    """Transform stage (its errors are raised: bugs, not bad data) -> {pixels [R, ...], mask
    [R, N], keep_idx [R, N_vis], label [R], valid [R], record_id [R]}, R = num_replicas."""
    cfg = self.cfg
    pixel_seed, _, mask_seed = _record_seeds(epoch_seed, element["index"])
    if self.modality == "image":
      _, flip_seed = _crop_and_flip_seeds(pixel_seed)
      pixels = _resize_image_crop(element["pixels"], flip_seed, image_size=cfg.image_size,
                                  flip=cfg.flip)[None]
    else:
      pixels = transforms.train_video_replicas(
          element["pixels"], pixel_seed, num_replicas=cfg.num_replicas,
          image_size=cfg.image_size, short_side=cfg.short_side,
          crop_scale=tuple(cfg.crop_scale), crop_ratio=tuple(cfg.crop_ratio), flip=cfg.flip,
          boxes=element["boxes"])
    if cfg.rand_augment:
      pixels = self._rand_augment(pixels, pixel_seed)
    per_record = {key: tf.fill([cfg.num_replicas], element[key])
                  for key in ("label", "valid", "record_id")}
    if cfg.mask_kind == config_lib.NO_MASK:  # a classification source
      return {"pixels": pixels, **per_record}
    masks, keep_indices = [], []
    for replica_seed in tf.unstack(
        tf.random.experimental.stateless_split(mask_seed, cfg.num_replicas)):
      mask, keep = masking.sample_mask_and_keep_indices(cfg.mask_kind, self.grid,
                                                        cfg.mask_ratio, replica_seed)
      masks.append(mask)
      keep_indices.append(keep)
    return {"pixels": pixels, "mask": tf.stack(masks), "keep_idx": tf.stack(keep_indices),
            **per_record}


  def _rand_augment(self, pixels, pixel_seed):
    """RandAugment of each replica [R, ...] with its own draw (a clip's frames share theirs)."""
    seed = tf.random.experimental.stateless_fold_in(pixel_seed, _RAND_AUGMENT_STREAM)
    replica_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, self.cfg.num_replicas))
    return tf.stack([augment.rand_augment(pixels[r], replica_seed, self.cfg.rand_augment)
                     for r, replica_seed in enumerate(replica_seeds)])


def _resize_image_crop(crop, flip_seed, *, image_size, flip):
  """uint8 crop [h, w, 3] -> [image_size, image_size, 3]: the second half of
  transforms.train_image (bicubic resize, antialiased as torchvision's PIL, then the flip)."""
  resized = tf.image.resize(crop, [image_size, image_size], method="bicubic", antialias=True)
  pixels = transforms.to_uint8(resized)
  return transforms.random_flip(pixels, flip_seed) if flip else pixels


class _CorruptTally:
  """The corrupt records of one pass over an epoch: logs the first few, stops a damaged split."""

  def __init__(self, source, epoch, batches):
    self.source = source
    self.epoch = epoch
    self.batches_left = batches  # in the pass
    self.records = 0
    self.corrupt = 0

  def add(self, valid, record_ids):
    """Counts a batch; returns the ids (str) of its corrupt records that are logged."""
    replicas = self.source.cfg.num_replicas
    clip_valid, clip_ids = valid[::replicas], record_ids[::replicas]  # replicas share a record
    corrupt_ids = [record_id.decode() for record_id in clip_ids[~clip_valid]]
    logged = corrupt_ids[:max(0, LOGGED_CORRUPT_RECORDS - self.corrupt)]
    self._log(logged, now_unlogged=len(logged) < len(corrupt_ids))
    self.records += clip_valid.size
    self.corrupt += len(corrupt_ids)
    self.batches_left -= 1
    if self.records >= _MIN_RECORDS_FOR_CORRUPT_FRACTION or not self.batches_left:
      self._check_fraction()
    return logged

  def _log(self, record_ids, now_unlogged):
    name, tfds_name = self.source.name, self.source.cfg.tfds_name
    for record_id in record_ids:
      logging.warning("data source %r: record %s of %s could not be decoded; its samples are "
                      "invalid (valid=False, label -1) in epoch %d", name, record_id, tfds_name,
                      self.epoch)
    if now_unlogged and self.corrupt <= LOGGED_CORRUPT_RECORDS:  # said once per pass
      logging.warning("data source %r: more than %d corrupt records in epoch %d; the rest are "
                      "counted (valid=False), not logged", name, LOGGED_CORRUPT_RECORDS,
                      self.epoch)

  def _check_fraction(self):
    cfg = self.source.cfg
    if self.corrupt <= cfg.max_corrupt_fraction * self.records:
      return
    raise CorruptDataError(
        f"data source {self.source.name!r}: {self.corrupt} of the {self.records} records read so "
        f"far in epoch {self.epoch} of {cfg.tfds_name} {cfg.split} could not be decoded, more "
        f"than max_corrupt_fraction={cfg.max_corrupt_fraction}. The split is damaged or not "
        f"{cfg.modality} data as the source expects: look at the logged record ids, then "
        f"prepare it again ({sources.how_to_prepare(cfg.tfds_name)}), or raise "
        "max_corrupt_fraction to train on what decodes")


def _merge_replicas_into_batch(batch):
  """[clips, replicas, ...] -> [clips * replicas, ...]: replicas of a clip stay adjacent."""
  return {key: tf.reshape(value, tf.concat([[-1], tf.shape(value)[2:]], axis=0))
          for key, value in batch.items()}


def _process_layout(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # only for the defaults: the data package works without JAX otherwise
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def _check_batch_layout(name, cfg, process_count):
  if cfg.batch_size % process_count:
    raise ValueError(f"data source {name!r}: batch_size={cfg.batch_size} is not divisible by "
                     f"the {process_count} processes")
  local_batch = cfg.batch_size // process_count
  if local_batch % cfg.num_replicas:
    raise ValueError(f"data source {name!r}: the per-process batch {local_batch} is not "
                     f"divisible by num_replicas={cfg.num_replicas}")


def steps_per_epoch(num_examples, cfg):
  """floor(num_examples * repeat_factor / clips per global batch); the same on every host."""
  clips_per_batch = cfg.batch_size // cfg.num_replicas
  # The epsilon keeps e.g. 0.3 * 10 / 3 = 0.9999999 from flooring to 0.
  return math.floor(num_examples * cfg.repeat_factor / clips_per_batch + 1e-9)


def make_source(name, cfg, *, data_dir, patch_size, seed, process_index=None,
                process_count=None):
  """Validates `cfg`, opens its prepared TFDS dataset and returns a Source.

  process_index/process_count default to jax.process_index()/jax.process_count().
  """
  config_lib.validate_source(name, cfg, patch_size)
  process_index, process_count = _process_layout(process_index, process_count)
  _check_batch_layout(name, cfg, process_count)
  builder = sources.ensure_built(cfg.tfds_name, data_dir)
  total_examples = sources.num_examples(builder, cfg.split)
  steps = steps_per_epoch(total_examples, cfg)
  if steps < 1:
    raise ValueError(
        f"data source {name!r}: {cfg.tfds_name} {cfg.split} has {total_examples} examples, "
        f"fewer than one batch of {cfg.batch_size // cfg.num_replicas} clips at repeat_factor="
        f"{cfg.repeat_factor}; lower batch_size or raise repeat_factor")
  process_split = sources.split_for_process(cfg.split, process_index, process_count)
  if sources.num_examples(builder, process_split) < 1:
    raise ValueError(f"data source {name!r}: process {process_index} of {process_count} gets "
                     f"no examples of {cfg.tfds_name} {cfg.split}")
  media_key, label_key = sources.media_and_label_keys(builder, cfg.modality)
  classifies = cfg.mask_kind == config_lib.NO_MASK
  if classifies and label_key is None:
    raise ValueError(f"data source {name!r}: {cfg.tfds_name} {cfg.split} has no labels "
                     f"(features: {list(builder.info.features.keys())}); fine-tuning needs a "
                     "labelled split")
  grid = config_lib.token_grid(cfg, patch_size)
  return Source(
      name=name, cfg=cfg, builder=builder, seed=int(seed), process_index=process_index,
      process_count=process_count, num_examples=total_examples, steps_per_epoch=steps,
      grid=grid, num_visible=0 if classifies else masking.num_visible(cfg.mask_kind, grid,
                                                                       cfg.mask_ratio),
      media_key=media_key, label_key=label_key, process_split=process_split)
