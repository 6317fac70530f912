"""OmniMAE on the built-in demo data, sized for a 2-core CPU (what `make demo` runs).

A tiny ViT (4 x 192) with 2x8x8 patches on 64x64 synthetic shapes (images) and 8-frame clips of
moving shapes (videos), both modalities in one run, the paper's 90% / 95% random masking and x4
video replication. The demo dataset is generated on first use (seconds) under data.data_dir.

One departure from the paper: the loss targets are plain pixels (loss.norm_pix=False). The demo's
shapes are flat colours, and a flat patch normalised by its own statistics (the paper's target) is
pure JPEG noise; with per-patch targets the demo loss plateaus at ~0.6 within 40 steps, with plain
pixels it falls ~15x in 6 epochs. Every real config keeps the paper's per-patch normalised target.
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, epochs=6, sources="both")
  sources = common.pretrain_sources(image_tfds="omnimae_demo/images",
                                    video_tfds="omnimae_demo/videos", which=args.sources,
                                    batch_size=32)
  for source in sources.values():
    source.image_size = 64
    source.num_frames = 8
    source.clip_seconds = 8 / 12  # 8 consecutive frames of the 12 fps clips
    source.short_side = 0  # clips are stored at 64x64 already
    source.shuffle_buffer = 1000
  config = common.pretrain_config("tiny", sources=sources, epochs=args.epochs, lr=1e-3,
                                  compute_dtype="float32")
  config.model.update(img_size=64, num_frames=8, patch_size=(2, 8, 8), remat="none")
  config.loss.norm_pix = False
  config.data.data_dir = "data/tfds"
  config.sharding = "dp"
  config.checkpoint.every_steps = 200
  config.log_every_steps = 20
  config.recon_every_steps = 200
  # The k-NN probe of the encoder on the labelled demo images (4 shapes; chance is 25%): the 2000
  # training images vote for each of the 1000 validation images (top-1 within about +-1.6%).
  config.evals = {"knn": common.knn_eval("omnimae_demo/images", train_split="train",
                                         val_split="validation", image_size=64,
                                         every_steps=200, batch_size=200)}
  config.lock()
  return config
