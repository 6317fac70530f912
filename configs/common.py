"""Pieces every config shares: the full schema with the paper's pretraining recipe, arg parsing.

A config file defines `get_config(arg)` and returns a *locked* ConfigDict: an override of a key
that does not exist (`--config.optim.lrr=...`) is an error, never a silently created key.
"""
import ml_collections

from omnimae_jax.data.config import default_source_config

# SPEC §4.1: AdamW (0.9, 0.95), lr 1.6e-3 @ 2048, wd 0.05, 5% warmup from 1e-6, then cosine
# evaluated at the global position ('fixed' interval scaling), 800 epochs.
PAPER_MASK_RATIOS = {"image": 0.9, "video": 0.95}  # the paper's final setting [ABS]
OFFICIAL_MASK_RATIOS = {"image": 0.75, "video": 0.9}  # the released ViT-B yaml (SPEC §2.3)


def parse_arg(arg, **defaults):
  """'official,sources=images' -> ConfigDict(official=True, sources='images') over the defaults.

  A bare word sets a boolean default to True; key=value casts to the default's type. Unknown
  keys are errors naming the allowed ones.
  """
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config arg {key!r} unknown; allowed: {sorted(defaults)}")
    default = defaults[key]
    if not value:
      if not isinstance(default, bool):
        raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
      values[key] = True
    elif isinstance(default, bool):
      values[key] = value.lower() in ("1", "true", "yes")
    else:
      values[key] = type(default)(value)
  return ml_collections.ConfigDict(values)


def pretrain_sources(*, image_tfds="imagenet2012", video_tfds="something_something_v2",
                     which="both", official=False, batch_size=2048, num_replicas=4):
  """The IN1K + SSv2 sources; which='images' or 'videos' gives a single-modality baseline."""
  if which not in ("both", "images", "videos"):
    raise ValueError(f"sources={which!r}; allowed: both, images, videos")
  ratios = OFFICIAL_MASK_RATIOS if official else PAPER_MASK_RATIOS
  sources = {}
  if which in ("both", "images"):
    image = default_source_config("image")
    image.tfds_name, image.batch_size = image_tfds, batch_size
    image.mask_ratio = ratios["image"]
    if official:  # the released yaml masks images with Tube(Rand): identical to random for T'=1
      image.mask_kind = "tube"
    sources["images"] = image
  if which in ("both", "videos"):
    video = default_source_config("video")
    video.tfds_name, video.batch_size = video_tfds, batch_size
    video.num_replicas, video.repeat_factor = num_replicas, 1.0 / num_replicas
    video.mask_ratio = ratios["video"]
    sources["videos"] = video
  return sources


def pretrain_config(size, *, sources, epochs=800, lr=1.6e-3, compute_dtype="bfloat16"):
  """The whole schema of a pretraining run (every recipe number is a named field)."""
  config = ml_collections.ConfigDict()
  config.mode = "pretrain"
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      size=size,
      compute_dtype=compute_dtype,  # params and optimizer state stay float32
      drop_path=0.0,
      decoder_qkv_bias=False,
      pad_type="repeat",
      img_size=224,
      num_frames=16,
      patch_size=(2, 14, 14) if size == "huge" else (2, 16, 16),
      remat_video=True,  # activation checkpointing on video steps only, as the official code
  ))
  config.loss = ml_collections.ConfigDict(dict(norm_pix=True))

  config.data = ml_collections.ConfigDict(dict(
      data_dir="~/tensorflow_datasets",
      sources=ml_collections.ConfigDict(sources),
      prefetch=2,
      # A resume on another number of processes reads the data in another order: 'warn' | 'error'.
      on_process_count_change="warn",
  ))

  config.epochs = epochs
  config.total_steps = 0  # 0: epochs x (sum of the sources' steps per epoch)
  config.optim = ml_collections.ConfigDict(dict(
      lr=lr,
      init_lr=1e-6,
      end_lr=0.0,
      warmup_fraction=0.05,
      schedule="cosine_fixed",  # 'cosine_fixed' (official pretrain) | 'cosine' (rescaled)
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.05,
      grad_clip_norm=0.0,  # 0: none (the official recipe)
      accum_steps=1,
      layer_decay=1.0,  # layer-wise lr decay v in (0, 1]; 1.0 = off (pretraining)
      layer_decay_convention="official",  # 'official' (head/norm get lr*v) | 'mae' (lr*1)
  ))

  config.mesh = (("data", -1), ("model", 1))
  config.sharding = "fsdp"  # 'dp' | 'fsdp' | 'fsdp_tp'

  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, async_save=True,
      preemption_sync_steps=10,  # multi-host: how often the hosts agree on a SIGTERM
  ))
  config.log_every_steps = 50
  config.recon_every_steps = 5000
  config.peak_flops_per_device = 0.0  # 0: look the device up (unknown devices report no MFU)
  return config
