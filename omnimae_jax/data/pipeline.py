"""One data source -> one epoch of local batches, exactly resumable (DESIGN §1, SPEC §3.4).

Per epoch and process: read this process's part of the split (files shuffled from (seed, epoch)),
shuffle records in a buffer, walk steps_per_epoch batches' worth of records, number them, skip the
ones already consumed (before any decoding), then decode + augment + mask each record with
randomness drawn from (seed, epoch, process, record number) only. So `dataset(epoch, k)` yields
exactly the batches k, k+1, ... of `dataset(epoch)`, which is how the trainer resumes.

Batches (NumPy after iteration) hold uint8 pixels; normalise on the device with
`omnimae_jax.pixels.normalize`:
  image: pixels uint8 [B, H, W, 3], mask bool [B, N], keep_idx int32 [B, N_vis], label int32 [B]
  video: pixels uint8 [B, T, H, W, 3], same other keys; B = clips x num_replicas, the replicas of
         a clip adjacent, each with its own crop, flip and mask.
"""
import dataclasses
import math

import numpy as np

from omnimae_jax.data import config as config_lib
from omnimae_jax.data import masking, sources, transforms
from omnimae_jax.data._tf import tf

# Records read beyond an epoch's needs, so that a few undecodable ones (skipped and counted) do
# not shorten the epoch.
CORRUPT_RECORD_SLACK = 64
# Live gap trackers kept per source (one per dataset() call); older ones belong to finished epochs.
_MAX_LIVE_TRACKERS = 8


def derived_seed(*parts):
  """A 31-bit integer seed from integer parts (for TFDS file shuffling and tf.data.shuffle)."""
  return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1)[0] >> 1)


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
  _corrupt_records: object = dataclasses.field(default=None, repr=False)
  _live_trackers: list = dataclasses.field(default_factory=list, repr=False)

  def __post_init__(self):
    self._corrupt_records = tf.Variable(0, dtype=tf.int64, trainable=False)

  @property
  def modality(self):
    return self.cfg.modality

  @property
  def local_batch_size(self):
    return self.cfg.batch_size // self.process_count

  @property
  def clips_per_local_batch(self):
    return self.local_batch_size // self.cfg.num_replicas

  @property
  def corrupt_records(self):
    """Records skipped so far because they could not be decoded (this process, all epochs)."""
    return int(self._corrupt_records.numpy())

  def dataset(self, epoch, skip_batches=0):
    """tf.data.Dataset of the local batches skip_batches .. steps_per_epoch-1 of `epoch`."""
    if not 0 <= skip_batches <= self.steps_per_epoch:
      raise ValueError(f"source {self.name!r}: skip_batches={skip_batches} is not in "
                       f"[0, {self.steps_per_epoch}]")
    clips_needed = self.steps_per_epoch * self.clips_per_local_batch
    clips_skipped = skip_batches * self.clips_per_local_batch
    records = sources.read_records(
        self.builder, self.process_split, media_key=self.media_key,
        shuffle_seed=derived_seed(self.seed, epoch, self.process_index, 0))
    records = records.map(self._keep_used_features)
    # Repeat so that repeat_factor > 1 and rounding never run the epoch dry; reshuffled per pass.
    records = records.shuffle(self.cfg.shuffle_buffer,
                              seed=derived_seed(self.seed, epoch, self.process_index, 1),
                              reshuffle_each_iteration=True).repeat()
    numbered = records.take(clips_needed + CORRUPT_RECORD_SLACK).enumerate()
    numbered = numbered.skip(clips_skipped)  # resume: drop consumed records before decoding
    epoch_seed = self._epoch_seed(epoch)
    samples = numbered.map(lambda index, record: (index, self._sample(epoch_seed, index, record)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    samples = samples.ignore_errors(log_warning=True)
    samples = samples.map(self._gap_counter(first_index=clips_skipped))
    samples = samples.take(clips_needed - clips_skipped)
    batches = samples.batch(self.clips_per_local_batch, drop_remainder=True)
    batches = batches.map(_merge_replicas_into_batch)
    options = tf.data.Options()
    options.deterministic = True
    return batches.prefetch(2).with_options(options)

  def _keep_used_features(self, record):
    kept = {"media": record[self.media_key]}
    kept["label"] = (tf.cast(record[self.label_key], tf.int32) if self.label_key
                     else tf.constant(-1, tf.int32))
    if self.modality == "video":
      kept["fps"] = tf.cast(record["fps"], tf.float32)
    return kept

  def _epoch_seed(self, epoch):
    base = tf.constant([self.seed, epoch], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, self.process_index)

  def _sample(self, epoch_seed, index, record):
    """One record -> {pixels [R, ...], mask [R, N], keep_idx [R, N_vis], label [R]}."""
    cfg = self.cfg
    record_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
    pixel_seed, clip_seed, mask_seed = tf.unstack(
        tf.random.experimental.stateless_split(record_seed, 3))
    if self.modality == "image":
      pixels = transforms.train_image(record["media"], pixel_seed, image_size=cfg.image_size,
                                      crop_scale=tuple(cfg.crop_scale),
                                      crop_ratio=tuple(cfg.crop_ratio), flip=cfg.flip)[None]
    else:
      frame_indices = transforms.clip_frame_indices(
          tf.shape(record["media"])[0], record["fps"], clip_seed, num_frames=cfg.num_frames,
          clip_seconds=cfg.clip_seconds)
      frames = transforms.decode_frames(record["media"], frame_indices, cfg.num_frames)
      pixels = transforms.train_video_replicas(
          frames, pixel_seed, num_replicas=cfg.num_replicas, image_size=cfg.image_size,
          short_side=cfg.short_side, crop_scale=tuple(cfg.crop_scale),
          crop_ratio=tuple(cfg.crop_ratio), flip=cfg.flip)
    masks, keep_indices = [], []
    for replica_seed in tf.unstack(
        tf.random.experimental.stateless_split(mask_seed, cfg.num_replicas)):
      mask, keep = masking.sample_mask_and_keep_indices(cfg.mask_kind, self.grid,
                                                        cfg.mask_ratio, replica_seed)
      masks.append(mask)
      keep_indices.append(keep)
    return {"pixels": pixels, "mask": tf.stack(masks), "keep_idx": tf.stack(keep_indices),
            "label": tf.fill([cfg.num_replicas], record["label"])}

  def _gap_counter(self, first_index):
    """A map that counts records missing from the numbered stream (dropped by ignore_errors)."""
    next_index = tf.Variable(first_index, dtype=tf.int64, trainable=False)
    self._live_trackers = self._live_trackers[-(_MAX_LIVE_TRACKERS - 1):] + [next_index]
    corrupt_records = self._corrupt_records

    def count_and_strip_index(index, sample):
      corrupt_records.assign_add(index - next_index)
      next_index.assign(index + 1)
      return sample

    return count_and_strip_index


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
  grid = config_lib.token_grid(cfg, patch_size)
  return Source(
      name=name, cfg=cfg, builder=builder, seed=int(seed), process_index=process_index,
      process_count=process_count, num_examples=total_examples, steps_per_epoch=steps,
      grid=grid, num_visible=masking.num_visible(cfg.mask_kind, grid, cfg.mask_ratio),
      media_key=media_key, label_key=label_key, process_split=process_split)
