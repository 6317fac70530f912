"""Your own photos, one sub-folder per class, as a TFDS builder: `image_folder/NAME`.

Two layouts of the manual dir:
  CLASS/.../*.jpg                        every sub-folder is a class; one split, train
  train/CLASS/...  [val/CLASS/... or validation/CLASS/...]   a validation split as well
Labels are the class folders' names in sorted order (train's folders; a validation folder must be
one of them). Images may sit at any depth below their class folder.

Storage: JPEG (colour or grey) and 8-bit PNG files are kept byte for byte; any other format
(WebP, BMP, GIF's first frame, TIFF, CMYK JPEG, 16-bit PNG) and any photo whose EXIF says it is
rotated are stored as JPEG (quality 95), upright. `image_folder/NAME-shortN` also shrinks images
whose short side exceeds N (never enlarging one). A file that cannot be decoded is skipped and
counted like a corrupt video.
"""
import dataclasses
import io
import os

from absl import logging
from PIL import Image, ImageOps
import tensorflow_datasets as tfds

from omnimae_jax.data.builders import named_configs, video_builder
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VALIDATION_FOLDERS = ("validation", "val")
# Formats the training input decodes as they are (tf.io.decode_image gives 8-bit RGB for them).
_KEPT_AS_GIVEN = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "RGBA", "L", "LA", "P")}
_EXIF_ORIENTATION = 0x0112

INSTRUCTIONS = """\
Put your images into the manual dir in one sub-folder per class (CLASS/*.jpg; a single folder is
fine when there are no classes), or into train/CLASS/ plus val/CLASS/ (or validation/CLASS/) for a
validation split. Any image format Pillow reads works; labels are the sorted folder names.
"""
LAYOUT = ("one sub-folder of images per class (CLASS/*.jpg), or train/CLASS/ and val/CLASS/ "
          "(or validation/CLASS/) for a validation split")


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """short_side: 0 keeps every image's size; N shrinks larger images to an N-pixel short side."""
  short_side: int = 0
  jpeg_quality: int = 95


def _size_configs(sizes=(256, 320, 160, 128)):
  return [ImageFolderConfig(name="original", description="images as given")] + [
      ImageFolderConfig(name=f"short{size}", short_side=size,
                        description=f"images shrunk to a short side of at most {size} pixels")
      for size in sizes]


@dataclasses.dataclass(frozen=True)
class ImageItem:
  key: str  # the path relative to the manual dir: unique, and the stored `id`
  path: str
  label: str  # class folder name


def _is_image(file_name):
  # Hidden files include macOS's "._photo.jpg" resource forks, which are not images.
  extension = os.path.splitext(file_name)[1].lower()
  return extension in IMAGE_EXTENSIONS and not file_name.startswith(".")


def _images_under(folder):
  """Every image file below `folder`, sorted, at any depth."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, name) for name in sorted(files) if _is_image(name)]
  return found


def _class_folders(root):
  return sorted(name for name in os.listdir(root)
                if os.path.isdir(os.path.join(root, name)) and not name.startswith("."))


def split_roots(name, manual_dir):
  """{split: folder of class folders}: train/ (+ val/ or validation/) when train/ exists, else
  the manual dir itself is train's."""
  train = os.path.join(manual_dir, "train")
  validation = next((os.path.join(manual_dir, folder) for folder in VALIDATION_FOLDERS
                     if os.path.isdir(os.path.join(manual_dir, folder))), None)
  if os.path.isdir(train):
    return {"train": train, **({"validation": validation} if validation else {})}
  if validation:  # a class called "val" is far less likely than a forgotten train/ folder
    raise DatasetNotPreparedError(
        f"{name}: manual dir {manual_dir} has {os.path.basename(validation)}/ but no train/; "
        f"expected {LAYOUT}")
  return {"train": manual_dir}


def _split_items(name, split, root, class_names, manual_dir):
  loose = [file_name for file_name in sorted(os.listdir(root)) if _is_image(file_name)]
  if loose:
    raise DatasetNotPreparedError(
        f"{name}: {os.path.join(root, loose[0])} is not inside a class folder; expected {LAYOUT} "
        "(put photos without classes into one folder, e.g. all/)")
  folders = _class_folders(root)
  unknown = sorted(set(folders) - set(class_names))
  if unknown:
    raise LabelFileMismatchError(
        f"{name}: {split} folder {root} has class folders that train/ lacks: {unknown[:5]}; "
        "expected the same class folders in every split")
  return [ImageItem(key=os.path.relpath(path, manual_dir), path=path, label=folder)
          for folder in folders for path in _images_under(os.path.join(root, folder))]


def _rotated(picture):
  return picture.getexif().get(_EXIF_ORIENTATION, 1) != 1


def stored_bytes(path, short_side=0, jpeg_quality=95):
  """The bytes to store for the image at `path`; raises OSError/ValueError for a bad file."""
  with Image.open(path) as picture:
    picture.load()  # decodes it all: a truncated file fails here, not in training
    fits = not short_side or min(picture.size) <= short_side
    if picture.mode in _KEPT_AS_GIVEN.get(picture.format, ()) and fits and not _rotated(picture):
      with open(path, "rb") as file:
        return file.read()
    upright = ImageOps.exif_transpose(picture).convert("RGB")
  if not fits:
    scale = short_side / min(upright.size)
    upright = upright.resize((max(1, round(upright.width * scale)),
                              max(1, round(upright.height * scale))), Image.BICUBIC)
  buffer = io.BytesIO()
  upright.save(buffer, format="JPEG", quality=jpeg_quality)
  return buffer.getvalue()


def _encode_item(item, short_side, jpeg_quality):
  """(item, bytes or None, reason or None); never raises for a bad file."""
  try:
    return item, stored_bytes(item.path, short_side, jpeg_quality), None
  except (OSError, ValueError, Image.DecompressionBombError) as error:
    return item, None, f"cannot read the image ({error})"


class ImageFolder(named_configs.NamedConfigs, video_builder.ManualDirBuilder,
                  tfds.core.GeneratorBasedBuilder):
  """Images in one folder per class. `image_folder/NAME` is a dataset of its own.

  Constructor argument `num_workers` (default: all CPUs) sets how many images are read at once.
  """

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = _size_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  LAYOUT = LAYOUT
  CONFIG_CLASS = ImageFolderConfig
  DEFAULT_SHORT_SIDE = 0

  def _info(self):
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),  # JPEG or PNG bytes as stored
        "label": tfds.features.ClassLabel(),  # names are the class folders, set while building
        "id": tfds.features.Text(),
    })
    return self.dataset_info_from_configs(features=features, supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(self._manual_dir_or_raise(dl_manager))
    name = self.full_config_name
    roots = split_roots(name, manual_dir)
    class_names = _class_folders(roots["train"])
    items = {split: _split_items(name, split, root, class_names, manual_dir)
             for split, root in roots.items()}
    if not items["train"]:
      raise DatasetNotPreparedError(
          f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under "
          f"{roots['train']}; expected {LAYOUT}")
    self.info.features["label"].names = class_names
    return {split: self._generate_examples(split_items, split)
            for split, split_items in items.items()}

  def _generate_examples(self, items, split):
    for item, payload in self._encoded(items, split, _encode_item, "image"):
      yield item.key, {"image": payload, "label": item.label, "id": item.key}
    logging.info("%s/%s: %d of %d images stored", self.name, split,
                 len(items) - len(self.skipped_files[split]), len(items))
