"""OmniMAE ViT-L/16 pretraining on ImageNet-1K + SSv2. The official ViT-L recipe is not released
(SPEC §4.1): this uses the ViT-B recipe with the ViT-L model. Args as in vitb_omni.py (e.g. your
own data: `:images=image_folder/NAME,videos=video_csv/NAME`)."""
from configs import vitb_omni


def get_config(arg=None):
  return vitb_omni.make("large", arg)
