"""Per-source data configuration: defaults that follow the paper (SPEC §2, §3) and validation.

A *source* is one TFDS dataset split that the trainer draws whole batches from. Global settings
(data_dir, seed, the model's patch_size) are passed separately as plain arguments.
"""
import ml_collections

MODALITIES = ("image", "video")
MASK_KINDS = ("random", "tube", "causal", "frame")
# A classification (fine-tuning) source: no mask, every token is seen.
NO_MASK = "none"


def default_source_config(modality):
  """A ConfigDict with every source field, set to the paper's pretraining recipe for `modality`.

  Images: ImageNet-1K train, RandomResizedCrop(224, scale=(0.2, 1)), flip, 90% random masking.
  Videos: SSv2 train, 16 frames from a 2.7 s window, ShortSideScale(256) + RandomResizedCrop(224,
  scale=(0.08, 1)), no flip, x4 replication with repeat factor 1/4, 95% random masking.
  Both fields sets are present for either modality so that configs share one schema; an image
  source ignores the video-only fields (num_frames, clip_seconds, short_side).
  """
  if modality not in MODALITIES:
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
  is_video = modality == "video"
  num_replicas = 4 if is_video else 1
  return ml_collections.ConfigDict(dict(
      tfds_name="something_something_v2" if is_video else "imagenet2012",
      split="train",
      modality=modality,
      batch_size=2048,  # global samples per step, replicas included (SPEC §3.4)
      num_replicas=num_replicas,
      repeat_factor=1.0 / num_replicas,  # an epoch walks 1/num_replicas of the clips
      image_size=224,
      crop_scale=(0.08, 1.0) if is_video else (0.2, 1.0),
      crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
      flip=not is_video,  # SSv2 classes depend on left/right, so never flip it
      num_frames=16,
      clip_seconds=2.7,
      short_side=256 if is_video else 0,
      mask_kind="random",
      mask_ratio=0.95 if is_video else 0.9,
      shuffle_buffer=1_000 if is_video else 10_000,  # video records are ~0.5 MB each
      # Undecodable records are placeholders (valid=False); past this fraction of an epoch's
      # samples the run stops (CorruptDataError): the split is damaged, not a few files.
      max_corrupt_fraction=0.5,
      # RandAugment per sample after the crop ('' off): timm's 'rand-m9-mstd0.5-inc1' for
      # images, 'video-m7-n4-p0.5' (pytorchvideo, one draw per clip) for videos.
      rand_augment="",
  ))


def token_grid(cfg, patch_size):
  """(T', H', W') token grid of one sample of the source (images are one temporal slice)."""
  patch_t, patch_h, patch_w = patch_size
  frames_in_time = cfg.num_frames // patch_t if cfg.modality == "video" else 1
  return (frames_in_time, cfg.image_size // patch_h, cfg.image_size // patch_w)


def _fail(name, field, value, allowed):
  raise ValueError(f"data source {name!r}: field {field!r} = {value!r} is invalid; {allowed}")


def _validate_pair(name, cfg, field, low_bound, high_bound):
  pair = tuple(cfg[field])
  if len(pair) != 2 or not (low_bound < pair[0] <= pair[1] <= high_bound):
    _fail(name, field, pair, f"expected (low, high) with {low_bound} < low <= high <= {high_bound}")


def _validate_masking(name, cfg, patch_size):
  # Imported here, not at the top: config files import this module for the defaults and should
  # not pay for importing TensorFlow (masking needs it).
  from omnimae_jax.data import masking

  if cfg.mask_kind not in MASK_KINDS:
    _fail(name, "mask_kind", cfg.mask_kind, f"expected one of {MASK_KINDS}")
  if cfg.mask_kind == "frame" and cfg.modality == "image":
    _fail(name, "mask_kind", cfg.mask_kind,
          "frame masking drops whole time slices and an image has only one")
  if not 0.0 < float(cfg.mask_ratio) < 1.0:
    _fail(name, "mask_ratio", cfg.mask_ratio, "expected a fraction strictly between 0 and 1")
  grid = token_grid(cfg, patch_size)
  num_tokens = grid[0] * grid[1] * grid[2]
  visible = masking.num_visible(cfg.mask_kind, grid, cfg.mask_ratio)
  if not 0 < visible < num_tokens:
    _fail(name, "mask_ratio", cfg.mask_ratio,
          f"mask_kind={cfg.mask_kind!r} on token grid {grid} leaves {visible} of {num_tokens} "
          "tokens visible; at least one token must be visible and one masked")


def validate_source(name, cfg, patch_size):
  """Raises ValueError naming the field for any value the pipeline cannot honour."""
  if cfg.modality not in MODALITIES:
    _fail(name, "modality", cfg.modality, f"expected one of {MODALITIES}")
  for field in ("tfds_name", "split"):
    if not isinstance(cfg[field], str) or not cfg[field]:
      _fail(name, field, cfg[field], "expected a non-empty string")
  if len(tuple(patch_size)) != 3:
    raise ValueError(f"patch_size must be (pt, ph, pw), got {patch_size!r}")
  patch_t, patch_h, patch_w = patch_size
  if cfg.num_replicas < 1:
    _fail(name, "num_replicas", cfg.num_replicas, "expected an integer >= 1")
  if cfg.batch_size < 1 or cfg.batch_size % cfg.num_replicas:
    _fail(name, "batch_size", cfg.batch_size,
          f"expected a positive multiple of num_replicas={cfg.num_replicas}")
  if not cfg.repeat_factor > 0:
    _fail(name, "repeat_factor", cfg.repeat_factor, "expected a positive number")
  if cfg.image_size < 1 or cfg.image_size % patch_h or cfg.image_size % patch_w:
    _fail(name, "image_size", cfg.image_size,
          f"expected a positive multiple of the patch size {(patch_h, patch_w)}")
  if cfg.modality == "video":
    if cfg.num_frames < 1 or cfg.num_frames % patch_t:
      _fail(name, "num_frames", cfg.num_frames,
            f"expected a positive multiple of the temporal patch size {patch_t}")
    if not cfg.clip_seconds > 0:
      _fail(name, "clip_seconds", cfg.clip_seconds, "expected a positive number of seconds")
    if cfg.short_side < 0:
      _fail(name, "short_side", cfg.short_side, "expected 0 (keep stored size) or a size > 0")
  _validate_pair(name, cfg, "crop_scale", 0.0, 1.0)
  _validate_pair(name, cfg, "crop_ratio", 0.0, float("inf"))
  if cfg.shuffle_buffer < 1:
    _fail(name, "shuffle_buffer", cfg.shuffle_buffer, "expected an integer >= 1")
  if not 0.0 < cfg.max_corrupt_fraction <= 1.0:
    _fail(name, "max_corrupt_fraction", cfg.max_corrupt_fraction,
          "expected a fraction in (0, 1] (1 never stops the run)")
  _validate_rand_augment(name, cfg)
  if cfg.mask_kind != NO_MASK:
    _validate_masking(name, cfg, patch_size)


def _validate_rand_augment(name, cfg):
  if not cfg.rand_augment:
    return
  from omnimae_jax.data import augment  # noqa: PLC0415  (TensorFlow)

  try:
    spec = augment.parse_rand_augment(cfg.rand_augment)
  except ValueError as error:
    _fail(name, "rand_augment", cfg.rand_augment, str(error))
  if (spec.kind == "video") != (cfg.modality == "video"):
    _fail(name, "rand_augment", cfg.rand_augment,
          f"a {spec.kind} RandAugment spec on a {cfg.modality} source")
