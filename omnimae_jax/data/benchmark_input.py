"""Input pipeline throughput: samples/s, images/s or clips/s, per CPU core, with and without
replication, and the stored bytes per clip or image. Measures the host pipeline alone (decode,
crop, mask, batch), no device transfer.

  python -m omnimae_jax.benchmark input --tfds_name=omnimae_demo/videos --data_dir=/tmp/tfds
  python -m omnimae_jax.benchmark input --config=configs/demo_omni.py
  python -m omnimae_jax.benchmark input --synthetic=ssv2_like --synthetic_dir=/tmp/bench

Per core is given two ways: by wall time over the cores this process may use (what a dedicated
machine gives), and by the CPU time the process used (per CPU-second; it holds on a machine shared
with other work, where wall time per core understates the pipeline).
"""
import os
import tarfile
import time

import omnimae_jax
from omnimae_jax.config_file import load_config

# Synthetic raw downloads, built once in --synthetic_dir with the real builders:
# ssv2_like: SSv2-like clips (427x240 VP9 .webm at 12 fps, 3-5 s, textured moving scenes: see
# synthetic_files.scene_frames) stored by video_csv (--synthetic_config, default short256) and read
# with the paper's video recipe (16 frames from 2.7 s, ShortSideScale 256, 224 crops);
# imagenet_like: 500x375 textured JPEGs (~100 KB, like ImageNet's) through TFDS's imagenet2012.
SYNTHETIC = {
    "ssv2_like": dict(tfds_name="video_csv/{config}", modality="video"),
    "imagenet_like": dict(tfds_name="imagenet2012", modality="image"),
}


def add_arguments(parser):
  parser.add_argument("--config", help="config FILE[:ARG] (config.data.sources.<name>, "
                      "config.data.data_dir, config.seed, config.model.patch_size)")
  parser.add_argument("--sources", default="", help="comma-separated source names of --config")
  parser.add_argument("--tfds_name", default="omnimae_demo/videos")
  parser.add_argument("--split", default="train")
  parser.add_argument("--data_dir", default="~/tensorflow_datasets")
  parser.add_argument("--modality", choices=("image", "video"), default=None,
                      help="default: video if the dataset has a Video feature")
  parser.add_argument("--batch_size", type=int, default=32, help="samples per step (global)")
  parser.add_argument("--num_replicas", type=int, default=4,
                      help="video replication to compare against 1")
  parser.add_argument("--image_size", type=int, default=None)
  parser.add_argument("--num_frames", type=int, default=None)
  parser.add_argument("--short_side", type=int, default=None)
  parser.add_argument("--patch_size", default="2,16,16")
  parser.add_argument("--steps", type=int, default=20, help="timed batches per setting")
  parser.add_argument("--warmup_steps", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--synthetic", choices=sorted(SYNTHETIC), default=None,
                      help="build and measure a synthetic dataset at full resolution")
  parser.add_argument("--synthetic_dir", default="/tmp/omnimae_bench",
                      help="where --synthetic writes and builds (reused when present)")
  parser.add_argument("--synthetic_count", type=int, default=96,
                      help="videos or images in the synthetic dataset")
  parser.add_argument("--synthetic_config", default="short256",
                      help="ssv2_like: the video_csv config that stores the clips (short256, "
                      "original, short160, or NAME[-shortN] for a dataset of its own)")


def _synthetic_manual_dir(kind, root):
  return os.path.join(root, f"manual_{kind}")


def _build_synthetic(kind, root, count, tfds_name):
  """Writes the raw files and builds them once; returns the data_dir."""
  from omnimae_jax.data import prepare, synthetic_files  # noqa: PLC0415

  data_dir = os.path.join(root, "tfds")
  manual_dir = _synthetic_manual_dir(kind, root)
  if kind == "ssv2_like" and not os.path.exists(manual_dir):
    synthetic_files.write_scene_manual_dir(manual_dir, num_videos=count, num_classes=8)
  if kind == "imagenet_like" and not os.path.exists(manual_dir):
    synsets = ("n01440764", "n01443537", "n01484850", "n01491361")
    synthetic_files.write_imagenet_manual_dir(
        manual_dir, synsets=synsets, images_per_synset=max(1, count // len(synsets)),
        num_validation=1, height=375, width=500, texture_exponent=2.0)
  prepare.prepare(tfds_name, data_dir=data_dir, manual_dir=manual_dir)
  return data_dir


def _source_bytes_per_example(kind, root):
  """Mean bytes of the synthetic raw files (a video file, a JPEG inside the ImageNet tars)."""
  manual_dir = _synthetic_manual_dir(kind, root)
  if kind == "ssv2_like":
    folder = os.path.join(manual_dir, "clips")
    sizes = [os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)]
  else:
    sizes = []
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar")) as train_tar:
      for member in train_tar:
        with tarfile.open(fileobj=train_tar.extractfile(member)) as synset_tar:
          sizes += [image.size for image in synset_tar]
  return sum(sizes) / max(1, len(sizes))


def stored_bytes_per_example(tfds_name, data_dir, split):
  """Mean bytes per example of a prepared split's files (TFRecord framing included)."""
  from omnimae_jax.data import sources  # noqa: PLC0415

  info = sources.ensure_built(tfds_name, data_dir).info
  split_info = info.splits[split]
  return split_info.num_bytes / max(1, split_info.num_examples)


def _flag_source(args, tfds_name, data_dir):
  import tensorflow_datasets as tfds  # noqa: PLC0415

  from omnimae_jax.data import config as config_lib, sources  # noqa: PLC0415

  modality = args.modality
  if modality is None:
    features = sources.ensure_built(tfds_name, data_dir).info.features
    has_video = any(isinstance(f, tfds.features.Video) for f in features.values())
    modality = "video" if has_video else "image"
  cfg = config_lib.default_source_config(modality)
  cfg.tfds_name, cfg.split, cfg.batch_size = tfds_name, args.split, args.batch_size
  for field in ("image_size", "num_frames", "short_side"):
    if getattr(args, field) is not None:
      cfg[field] = getattr(args, field)
  if tfds_name.startswith("omnimae_demo") and args.image_size is None:
    cfg.image_size, cfg.short_side = 64, 0  # the demo is 64x64; no upscaling to 224
  return cfg


def _settings(args):
  """[(label, cfg, data_dir, patch_size, seed)] to measure."""
  if args.config:
    config = load_config(args.config)
    wanted = [name for name in args.sources.split(",") if name] or list(config.data.sources)
    return [(name, config.data.sources[name], config.data.data_dir,
             tuple(config.model.patch_size), config.seed) for name in wanted]
  patch_size = tuple(int(v) for v in args.patch_size.split(","))
  tfds_name, data_dir = args.tfds_name, args.data_dir
  if args.synthetic:
    tfds_name = SYNTHETIC[args.synthetic]["tfds_name"].format(config=args.synthetic_config)
    data_dir = _build_synthetic(args.synthetic, args.synthetic_dir, args.synthetic_count,
                                tfds_name)
    args.modality = SYNTHETIC[args.synthetic]["modality"]
  cfg = _flag_source(args, tfds_name, data_dir)
  return [(tfds_name, cfg, data_dir, patch_size, args.seed)]


def _replica_counts(cfg, default_replicas):
  if cfg.modality == "image":
    return [1]
  return sorted({1, cfg.num_replicas if cfg.num_replicas > 1 else default_replicas})


def _make_source_with_enough_steps(name, cfg, data_dir, patch_size, seed, steps_needed):
  """A single-process Source whose epoch has at least `steps_needed` batches (a small dataset
  gets a larger repeat_factor: its clips are read again, which costs the same as new ones)."""
  from omnimae_jax.data import pipeline, sources  # noqa: PLC0415

  num_examples = sources.num_examples(sources.ensure_built(cfg.tfds_name, data_dir), cfg.split)
  clips_per_batch = cfg.batch_size // cfg.num_replicas
  cfg.repeat_factor = max(cfg.repeat_factor, steps_needed * clips_per_batch / num_examples + 1e-6)
  return pipeline.make_source(name, cfg, data_dir=data_dir, patch_size=patch_size, seed=seed,
                              process_index=0, process_count=1)


def measure(source, warmup_steps, steps):
  """(wall seconds, CPU seconds of this process, batch pixel shape) for `steps` batches after
  `warmup_steps` (the warm-up fills the shuffle buffer)."""
  batches = source.dataset(0).as_numpy_iterator()
  for _ in range(warmup_steps):
    next(batches)
  started, cpu_started = time.perf_counter(), time.process_time()
  for _ in range(steps):
    batch = next(batches)
  return (time.perf_counter() - started, time.process_time() - cpu_started,
          batch["pixels"].shape)


def _stored_size_line(name, cfg, data_dir, args):
  unit = "clip" if cfg.modality == "video" else "image"
  stored = stored_bytes_per_example(cfg.tfds_name, data_dir, cfg.split)
  line = f"{name:<28} stored: {stored / 1e3:.1f} KB per {unit}"
  if args.synthetic and not args.config:
    source = _source_bytes_per_example(args.synthetic, args.synthetic_dir)
    kind = "video file" if cfg.modality == "video" else "JPEG"
    line += f" = {stored / source:.2f}x the source {kind} ({source / 1e3:.1f} KB per {unit})"
  return line


def run(args):
  settings = _settings(args)  # builds synthetic data first, so its log precedes the table
  cores = omnimae_jax.usable_cores()
  print(f"input pipeline benchmark: {cores} CPU cores, {args.steps} timed batches per setting "
        f"after {args.warmup_steps} warm-up batches; /core = per core by wall time, /cpu-s = "
        "per CPU-second this process used")
  header = (f"{'source':<28} {'replicas':>8} {'batch pixels':<24} {'samples/s':>10} "
            f"{'decoded/s':>10} {'samples/s/core':>15} {'decoded/s/core':>15} "
            f"{'samples/cpu-s':>14} {'decoded/cpu-s':>14}")
  print(header)
  print("-" * len(header))
  size_lines = []
  for name, base_cfg, data_dir, patch_size, seed in settings:
    for replicas in _replica_counts(base_cfg, args.num_replicas):
      cfg = base_cfg.copy_and_resolve_references()
      cfg.num_replicas = replicas  # batch_size (samples per step) stays, clips per step shrink
      source = _make_source_with_enough_steps(name, cfg, data_dir, patch_size, seed,
                                              args.warmup_steps + args.steps)
      seconds, cpu_seconds, pixel_shape = measure(source, args.warmup_steps, args.steps)
      samples = args.steps * source.local_batch_size
      samples_per_second = samples / seconds
      decoded_per_second = samples_per_second / replicas  # images or clips actually decoded
      samples_per_cpu_second = samples / cpu_seconds
      unit = "clips" if cfg.modality == "video" else "images"
      print(f"{name:<28} {replicas:>8} {str(tuple(pixel_shape)):<24} {samples_per_second:>10.1f} "
            f"{decoded_per_second:>10.1f} {samples_per_second / cores:>15.1f} "
            f"{decoded_per_second / cores:>15.1f} {samples_per_cpu_second:>14.1f} "
            f"{samples_per_cpu_second / replicas:>14.1f}  ({unit})")
    size_lines.append(_stored_size_line(name, base_cfg, data_dir, args))
  for line in size_lines:
    print(line)
