"""Fine-tunes a pretrained OmniMAE on Something-Something-v2; SPEC §4.2.

    python main.py --config=configs/finetune_ssv2.py:init=workdir/vitb_omni --workdir=workdir/vitb_ssv2
    python main.py --config=configs/finetune_ssv2.py:size=large,init=vitl_pretrain.torch ...

init: our pretraining workdir, a model directory or an official .torch file. size: base (the
official yaml's numbers), large or huge (numbers not released: ViT-B's; override them by name).
"""
from configs import common


def get_config(arg=None):
  return common.finetune_from_arg("ssv2", arg)
