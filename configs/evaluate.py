"""Evaluates a fine-tuned OmniMAE with the official test protocol (SPEC §4.2).

    python main.py --config=configs/evaluate.py:dataset=in1k,checkpoint=vitb_in1k_ft.torch \
        --workdir=workdir/eval_vitb_in1k --config.data.data_dir=~/tensorflow_datasets

dataset: in1k (1 view), ssv2 or k400 (5 temporal clips x 3 spatial crops). checkpoint: an
official fine-tuned .torch file, one of our model directories or a fine-tuning workdir.
batch_size: global examples per batch (0: the official 1024 images or 32 videos).
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, dataset="in1k", checkpoint="", batch_size=0)
  if args.dataset not in common.EVAL_SPLITS:
    raise ValueError(f"config arg dataset={args.dataset!r}; allowed: {sorted(common.EVAL_SPLITS)}")
  config = common.evaluate_config(args.dataset, args.checkpoint, batch_size=args.batch_size)
  config.lock()
  return config
