"""Source config defaults follow the paper; validation names the offending field."""
import pytest

from omnimae_jax.data import config as config_lib

VIT_B_PATCH = (2, 16, 16)


def test_defaults_follow_the_paper_recipe():
  image = config_lib.default_source_config("image")
  video = config_lib.default_source_config("video")
  assert (image.tfds_name, image.num_replicas, image.repeat_factor) == ("imagenet2012", 1, 1.0)
  assert tuple(image.crop_scale) == (0.2, 1.0) and image.flip and image.mask_ratio == 0.9
  assert (video.tfds_name, video.num_replicas, video.repeat_factor) == (
      "something_something_v2", 4, 0.25)
  assert tuple(video.crop_scale) == (0.08, 1.0) and not video.flip
  assert (video.num_frames, video.clip_seconds, video.short_side) == (16, 2.7, 256)
  assert video.mask_ratio == 0.95
  config_lib.validate_source("image", image, VIT_B_PATCH)
  config_lib.validate_source("video", video, VIT_B_PATCH)
  assert config_lib.token_grid(image, VIT_B_PATCH) == (1, 14, 14)
  assert config_lib.token_grid(video, VIT_B_PATCH) == (8, 14, 14)


@pytest.mark.parametrize("modality, field, value", [
    ("image", "mask_ratio", 1.0),
    ("image", "mask_ratio", 0.0),
    ("image", "mask_kind", "block"),
    ("image", "modality", "audio"),
    ("image", "image_size", 200),  # not a multiple of 16
    ("video", "num_frames", 15),  # not a multiple of 2
    ("video", "batch_size", 30),  # not a multiple of 4 replicas
    ("image", "crop_scale", (0.5, 0.2)),
    ("image", "repeat_factor", 0.0),
    ("video", "clip_seconds", -1.0),
    ("image", "mask_kind", "frame"),  # an image has a single time slice to mask
    ("image", "tfds_name", ""),
])
def test_each_bad_value_is_reported_with_its_field(modality, field, value):
  cfg = config_lib.default_source_config(modality)
  cfg[field] = value
  with pytest.raises(ValueError, match=f"'{field}'") as error:
    config_lib.validate_source("my_source", cfg, VIT_B_PATCH)
  assert "my_source" in str(error.value)


def test_unknown_modality_for_defaults():
  with pytest.raises(ValueError, match="modality"):
    config_lib.default_source_config("audio")
