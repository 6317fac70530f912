"""Our TFDS builders; importing this package registers them with TFDS by name:
something_something_v2, kinetics400, kinetics600, kinetics700, video_csv, image_folder,
omnimae_demo."""
from omnimae_jax.data.builders.image_folder import ImageFolder
from omnimae_jax.data.builders.kinetics import Kinetics400, Kinetics600, Kinetics700
from omnimae_jax.data.builders.omnimae_demo import OmnimaeDemo
from omnimae_jax.data.builders.something_something_v2 import SomethingSomethingV2
from omnimae_jax.data.builders.video_csv import VideoCsv

# The TFDS names they register (snake_case of the class names).
DATASET_NAMES = ("something_something_v2", "kinetics400", "kinetics600", "kinetics700",
                 "video_csv", "image_folder", "omnimae_demo")
# Of those, the ones that hold the user's own files: `video_csv/NAME`, several per data_dir.
NAMED_DATASETS = ("video_csv", "image_folder")

__all__ = ["DATASET_NAMES", "ImageFolder", "Kinetics400", "Kinetics600", "Kinetics700",
           "NAMED_DATASETS", "OmnimaeDemo", "SomethingSomethingV2", "VideoCsv"]
