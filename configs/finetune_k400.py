"""Fine-tunes a pretrained OmniMAE on Kinetics-400 (no official recipe: SSv2's numbers with flips); SPEC §4.2.

    python main.py --config=configs/finetune_k400.py:init=workdir/vitb_omni --workdir=workdir/vitb_k400
    python main.py --config=configs/finetune_k400.py:size=large,init=vitl_pretrain.torch ...

init: our pretraining workdir, a model directory or an official .torch file. size: base (the
official yaml's numbers), large or huge (numbers not released: ViT-B's; override them by name).
"""
from configs import common


def get_config(arg=None):
  return common.finetune_from_arg("k400", arg)
