"""Fine-tunes a pretrained OmniMAE on ImageNet-1K (imagenet2012); SPEC §4.2.

    python main.py --config=configs/finetune_in1k.py:init=workdir/vitb_omni --workdir=workdir/vitb_in1k
    python main.py --config=configs/finetune_in1k.py:size=large,init=vitl_pretrain.torch ...

init: our pretraining workdir, a model directory or an official .torch file. size: base (the
official yaml's numbers), large or huge (numbers not released: ViT-B's; override them by name).
"""
from configs import common


def get_config(arg=None):
  return common.finetune_from_arg("in1k", arg)
