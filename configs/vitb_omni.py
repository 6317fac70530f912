"""OmniMAE ViT-B/16 pretraining on ImageNet-1K + Something-Something-v2 (the paper's recipe).

    python main.py --config=configs/vitb_omni.py --workdir=DIR
    --config=configs/vitb_omni.py:official         # the released yaml: 75% image / 90% video masks
    --config=configs/vitb_omni.py:sources=images   # MAE on ImageNet only (single-modality baseline)
    --config=configs/vitb_omni.py:sources=videos   # video MAE on SSv2 only
    --config=configs/vitb_omni.py:images=image_folder/NAME,videos=video_csv/NAME   # your own data
    --config=configs/vitb_omni.py:images=image_folder/NAME,sources=images   # your photos alone

images= / videos= name any prepared dataset of that modality (`python -m omnimae_jax.data.prepare
image_folder/NAME ...`); the recipe stays the paper's: 16 frames from 2.7 s windows rescaled to a
256-pixel short side, 224-pixel crops. Only the ImageNet k-NN probe is left out when images= names
another dataset (it needs ImageNet prepared).
"""
from configs import common

SIZE = "base"


def get_config(arg=None):
  return make(SIZE, arg)


def make(size, arg):
  """Shared by the ViT-B/L/H configs: only the size differs in what the paper describes."""
  args = common.parse_arg(arg, official=False, sources="both", epochs=800, batch_size=2048,
                          images="imagenet2012", videos="something_something_v2")
  sources = common.pretrain_sources(image_tfds=args.images, video_tfds=args.videos,
                                    which=args.sources, official=args.official,
                                    batch_size=args.batch_size)
  config = common.pretrain_config(size, sources=sources, epochs=args.epochs)
  if args.sources != "videos" and args.images == "imagenet2012":  # probe the encoder on it
    config.evals = {"knn": common.knn_eval("imagenet2012", train_split="train[:1%]",
                                           val_split="validation[:10%]")}
  config.lock()
  return config
