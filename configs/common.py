"""Pieces every config shares: the full schema with the paper's pretraining recipe, arg parsing.

A config file defines `get_config(arg)` and returns a *locked* ConfigDict: an override of a key
that does not exist (`--config.optim.lrr=...`) is an error, never a silently created key.
"""
import re

import ml_collections

from omnimae_jax.data.config import default_source_config
from omnimae_jax.data.eval_config import default_eval_source_config

# SPEC §4.1: AdamW (0.9, 0.95), lr 1.6e-3 @ 2048, wd 0.05, 5% warmup from 1e-6, then cosine
# evaluated at the global position ('fixed' interval scaling), 800 epochs.
PAPER_MASK_RATIOS = {"image": 0.9, "video": 0.95}  # the paper's final setting [ABS]
OFFICIAL_MASK_RATIOS = {"image": 0.75, "video": 0.9}  # the released ViT-B yaml (SPEC §2.3)


def parse_arg(arg, **defaults):
  """'official,sources=images' -> ConfigDict(official=True, sources='images') over the defaults.

  A bare word sets a boolean default to True; key=value casts to the default's type; `key=`
  sets a string to '' (e.g. `init=`: no initialisation). Unknown keys are errors naming the
  allowed ones.
  """
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, equals, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config arg {key!r} unknown; allowed: {sorted(defaults)}")
    default = defaults[key]
    if not value:
      if isinstance(default, str) and equals:
        values[key] = ""
      elif not isinstance(default, bool):
        raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
      else:
        values[key] = True
    else:
      values[key] = _cast_arg(key, value, default)
  return ml_collections.ConfigDict(values)


def _cast_arg(key, value, default):
  """`value` as the type of `default`; a value that does not fit is an error naming the arg."""
  if isinstance(default, bool):  # a typo must not silently mean False
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if value.lower() not in words:
      raise ValueError(f"config arg {key}={value!r}; allowed: true/false, yes/no or 1/0")
    return words[value.lower()]
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"config arg {key}={value!r}; allowed: a value of type "
                     f"{type(default).__name__} (default {default!r})") from None


# Known datasets of each modality: `images=video_csv/x` is refused by the config file itself.
_VIDEO_DATASETS = ("video_csv", "something_something_v2", "kinetics400", "kinetics600",
                   "kinetics700", "omnimae_demo/videos")
_IMAGE_DATASETS = ("image_folder", "imagenet2012", "omnimae_demo/images")
# Video datasets whose classes depend on left and right (SSv2's "pushing from left to right", the
# demo's directions): never flipped. Any other video source is, e.g. your own clips.
_NEVER_FLIPPED = ("something_something_v2", "omnimae_demo")
# A TFDS name as `tfds.builder` parses it: dataset[/config][:version].
_TFDS_NAME = re.compile(r"^[A-Za-z]\w*(/[\w+.-]+)?(:[\d*]+\.[\d*]+\.[\d*]+)?$")


def _check_modality(arg, tfds_name, other_modality_datasets):
  """`images=video_csv/x`, `images=my photos` or an empty name is an error naming the arg, not a
  failure (or a TFDS message of 20 lines) once the run starts."""
  base_name = tfds_name.split(":")[0]
  if base_name.split("/")[0] != "omnimae_demo":
    base_name = base_name.split("/")[0]
  if not _TFDS_NAME.match(tfds_name) or base_name in other_modality_datasets:
    example = "image_folder/NAME" if arg == "images" else "video_csv/NAME"
    raise ValueError(f"config arg {arg}={tfds_name!r}; expected a prepared {arg[:-1]} dataset, "
                     f"e.g. {arg}={example}")


def pretrain_sources(*, image_tfds="imagenet2012", video_tfds="something_something_v2",
                     which="both", official=False, batch_size=2048, num_replicas=4):
  """The IN1K + SSv2 sources; which='images' or 'videos' gives a single-modality baseline.

  image_tfds / video_tfds point the sources at other prepared datasets (e.g. your own
  `image_folder/NAME`, `video_csv/NAME`): same recipe, except that videos are flipped unless
  their classes depend on left and right (SSv2, the demo).
  """
  if which not in ("both", "images", "videos"):
    raise ValueError(f"sources={which!r}; allowed: both, images, videos")
  _check_modality("images", image_tfds, _VIDEO_DATASETS)
  _check_modality("videos", video_tfds, _IMAGE_DATASETS)
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
    video.flip = not video_tfds.startswith(_NEVER_FLIPPED)
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
      remat="auto",  # none on CPU; on accelerators: video steps, large/huge models (models/remat.py)
      # cuDNN on CUDA where it can run, splash on TPU for sequences of 1024+ tokens, explicit on
      # CPU, XLA otherwise (models/attention.py)
      attention="auto",
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

  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  # Compiled steps are cached here, so a resumed (preempted) run does not compile again: 'auto'
  # = $JAX_COMPILATION_CACHE_DIR if set, else <workdir>/compile_cache; 'off' turns it off.
  config.compilation_cache = "auto"
  config.log_every_steps = 50
  config.recon_every_steps = 5000
  config.peak_flops_per_device = 0.0  # 0: look the device up (unknown devices report no MFU)
  # Start from other weights when the workdir has no checkpoint yet: an official .torch file, a
  # model directory or a training workdir. Glob patterns over '/'-joined parameter paths that
  # are not loaded (they keep their fresh init).
  # expect: the kind of checkpoint wanted ('pretrain'; 'classifier' or 'any' to start from a
  # fine-tuned trunk, e.g. IN1K -> SSv2).
  config.init_from = ml_collections.ConfigDict(dict(path="", exclude=(), expect="pretrain"))
  return config


# SPEC §1.6: the fine-tuning model starts from the pretrained trunk without its final norm (it
# becomes the post-pool norm and starts at 1/0), the decoder (with the mask token) and any head.
FINETUNE_EXCLUDE = ("trunk/norm/*", "decoder/*", "head/*")

# SPEC §4.2, the official ViT-B fine-tuning yamls; K400 has no released recipe (SSv2's numbers
# with flips on) and neither have ViT-L/H (ViT-B's numbers; override them by name).
FINETUNE_RECIPES = {
    # IN1K erasing is torchvision's RandomErasing before Normalize: black boxes, area <= 0.33,
    # aspect in [0.3, 3.3]; the video recipes use omnivision's cube erasing with noise.
    "in1k": dict(tfds_name="imagenet2012", modality="image", num_classes=1000, batch_size=1024,
                 lr=4e-3, warmup_fraction=0.05, weight_decay=1e-4, layer_decay=0.65,
                 head_init_std=2e-5, flip=True, rand_augment="rand-m9-mstd0.5-inc1",
                 erase_mode="black", erase_max_area=0.33, erase_max_aspect=3.3),
    "ssv2": dict(tfds_name="something_something_v2", modality="video", num_classes=174,
                 batch_size=256, lr=1e-3, warmup_fraction=0.125, weight_decay=0.05,
                 layer_decay=0.75, head_init_std=0.01, flip=False,
                 rand_augment="video-m7-n4-p0.5", erase_mode="pixel", erase_max_area=1 / 3,
                 erase_max_aspect=0.0),
    "k400": dict(tfds_name="kinetics400", modality="video", num_classes=400, batch_size=256,
                 lr=1e-3, warmup_fraction=0.125, weight_decay=0.05, layer_decay=0.75,
                 head_init_std=0.01, flip=True, rand_augment="video-m7-n4-p0.5",
                 erase_mode="pixel", erase_max_area=1 / 3, erase_max_aspect=0.0),
}


def finetune_source(recipe):
  """The training source of a fine-tuning recipe: no masks, no replication, RandAugment."""
  source = default_source_config(recipe["modality"])
  source.update(tfds_name=recipe["tfds_name"], batch_size=recipe["batch_size"], num_replicas=1,
                repeat_factor=1.0, crop_scale=(0.08, 1.0), flip=recipe["flip"],
                mask_kind="none", rand_augment=recipe["rand_augment"])
  return source


def finetune_config(size, dataset, *, epochs=100, init_from=""):
  """The whole schema of a fine-tuning run on `dataset` ('in1k' | 'ssv2' | 'k400')."""
  recipe = FINETUNE_RECIPES[dataset]
  config = pretrain_config(size, sources={"train": finetune_source(recipe)}, epochs=epochs,
                           lr=recipe["lr"])
  config.mode = "finetune"
  del config["loss"], config["recon_every_steps"]
  config.model.update(drop_path=0.1, num_classes=recipe["num_classes"],
                      head_init_std=recipe["head_init_std"])
  config.optim.update(b1=0.9, b2=0.999, warmup_fraction=recipe["warmup_fraction"],
                      schedule="cosine", end_lr=1e-6, weight_decay=recipe["weight_decay"],
                      layer_decay=recipe["layer_decay"])
  config.init_from.update(path=init_from, exclude=FINETUNE_EXCLUDE)
  # Batch-level augmentation, on device, each data shard mixing within itself (timm's 'batch'
  # mode): mixup / cutmix / label smoothing, and per-sample random erasing ('cube' for videos).
  config.augment = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5, label_smoothing=0.1,
      erase_prob=0.25, erase_mode=recipe["erase_mode"], erase_max_area=recipe["erase_max_area"],
      erase_max_aspect=recipe["erase_max_aspect"]))
  config.checkpoint.every_steps = 1000
  config.log_every_steps = 50
  return config


# SPEC §4.2 test views: images resized to 224 (crop ratio 1.0) and centre-cropped, one view;
# videos 5 temporal clips x 3 spatial crops (short side 224, left/centre/right), logits averaged.
EVAL_SPLITS = {"in1k": ("imagenet2012", "validation"),
               "ssv2": ("something_something_v2", "validation"),
               "k400": ("kinetics400", "validation")}


def classification_eval(dataset, *, every_steps=2500, batch_size=None):
  """The validation evaluator of a fine-tuning dataset with the official test protocol.

  batch_size: global examples per batch, views included (default: 1024 images or 32 videos,
  the official runs; a 15-view video is 36 MB of uint8 at 224 px).
  """
  tfds_name, split = EVAL_SPLITS[dataset]
  source = default_eval_source_config(FINETUNE_RECIPES[dataset]["modality"])
  source.update(tfds_name=tfds_name, split=split)
  if batch_size:
    source.batch_size = batch_size
  if dataset == "k400":  # MP4 streams know their duration; WebM (SSv2) use the last frame's time
    source.video_duration = "frame_count"
  return ml_collections.ConfigDict(dict(
      kind="classification", every_steps=every_steps, source=source,
      average="logits",  # 'logits' (official) | 'softmax': what is averaged over the views
      view_chunk=3,  # views per forward pass: bounds the memory of 15-view batches
  ))


def finetune_from_arg(dataset, arg):
  """A fine-tuning config file's get_config: `size=base|large|huge`, `init=PATH`, `epochs=N`."""
  args = parse_arg(arg, size="base", init="", epochs=100)
  if args.size not in ("base", "large", "huge"):
    raise ValueError(f"config arg size={args.size!r}; allowed: base, large, huge")
  config = finetune_config(args.size, dataset, epochs=args.epochs, init_from=args.init)
  config.evals = ml_collections.ConfigDict({"val": classification_eval(dataset)})
  config.lock()
  return config


def evaluate_config(dataset, checkpoint, *, batch_size=0):
  """`mode=evaluate`: the checkpoint's classifier on `dataset`'s validation split."""
  config = ml_collections.ConfigDict()
  config.mode = "evaluate"
  config.checkpoint = checkpoint  # an official .torch file, a model directory or a workdir
  config.compute_dtype = "bfloat16"
  config.data = ml_collections.ConfigDict(dict(data_dir="~/tensorflow_datasets"))
  config.evals = ml_collections.ConfigDict(
      {"val": classification_eval(dataset, batch_size=batch_size)})
  config.mesh = (("data", -1), ("model", 1))
  config.sharding = "fsdp"
  return config


def knn_eval(tfds_name, *, train_split, val_split, image_size=224, every_steps=5000,
             batch_size=256, k=20, temperature=0.07, modality="image", num_frames=16,
             clip_seconds=2.7):
  """A frozen-feature k-NN probe during pretraining: the unmasked encoder's mean token of a
  labelled train split votes (exp(similarity / temperature), k neighbours) for each validation
  example; `knn_top1` shows the representation improving as pretraining goes on. Videos: one
  centred clip of `num_frames` from the middle `clip_seconds`, short side `image_size`."""
  def source(split):
    cfg = default_eval_source_config(modality)
    cfg.update(tfds_name=tfds_name, split=split, batch_size=batch_size, image_size=image_size,
               resize_size=image_size, eval_short_side=image_size, num_frames=num_frames,
               clip_seconds=clip_seconds, num_temporal_clips=1, num_spatial_crops=1)
    return cfg

  return ml_collections.ConfigDict(dict(
      kind="knn", every_steps=every_steps, k=k, temperature=temperature,
      train_source=source(train_split), source=source(val_split)))

