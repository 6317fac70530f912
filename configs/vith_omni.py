"""OmniMAE ViT-H/14 pretraining on ImageNet-1K + SSv2 (2x14x14 patches, 8-block decoder). The
official ViT-H recipe is not released (SPEC §4.1): this uses the ViT-B recipe. Args as in
vitb_omni.py (e.g. your own data: `:images=image_folder/NAME,videos=video_csv/NAME`)."""
from configs import vitb_omni


def get_config(arg=None):
  return vitb_omni.make("huge", arg)
