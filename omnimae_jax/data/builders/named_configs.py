"""Several datasets of your own files in one data_dir: `video_csv/NAME`, `image_folder/NAME`.

Besides its fixed configs (e.g. `video_csv/short256`), a builder with named configs accepts any
config name `NAME` or `NAME-SIZE`: NAME (letters, digits, `_`) names the dataset, stored under
DATA_DIR/<builder>/<config name>/<version>, so two of them never overwrite each other. SIZE is
`shortN` (frames or images shrunk to an N-pixel short side, never enlarged) or `original` (the
files' size); without it the builder's default storage applies (videos short256, images as
given).
"""
import re

from omnimae_jax.data.errors import DatasetNotPreparedError

_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:-(?P<size>short[1-9][0-9]*|original))?$")
NAME_EXPECTED = ("{builder}/NAME, {builder}/NAME-shortN or {builder}/NAME-original, NAME made of "
                 "letters, digits and _ (e.g. {builder}/mine, {builder}/mine-short320)")


def short_side_of(size):
  """'short320' -> 320, 'original' -> 0 (keep the files' size)."""
  return 0 if size == "original" else int(size[len("short"):])


class NamedConfigs:
  """Mixin (listed before the TFDS builder base) that turns an unknown config name into a new
  dataset of that name. Subclasses set CONFIG_CLASS (a BuilderConfig with a `short_side` field)
  and DEFAULT_SHORT_SIDE (for a NAME without -SIZE)."""

  CONFIG_CLASS = None
  DEFAULT_SHORT_SIDE = 0

  @classmethod
  def named_config(cls, config_name):
    """The BuilderConfig of `config_name`, or a one-line error saying what a name looks like."""
    match = _NAMED.match(config_name)
    if not match:
      raise DatasetNotPreparedError(
          f"{cls.name}/{config_name}: not a dataset name; expected "
          f"{NAME_EXPECTED.format(builder=cls.name)}")
    size = match["size"]
    short_side = cls.DEFAULT_SHORT_SIDE if size is None else short_side_of(size)
    stored = f"short side {short_side}" if short_side else "the files' size"
    return cls.CONFIG_CLASS(name=config_name, short_side=short_side,
                            description=f"your dataset {match['name']!r}, stored at {stored}")

  def _create_builder_config(self, builder_config, version):
    # TFDS only knows BUILDER_CONFIGS; any other name is one of the user's own datasets. Built
    # here directly: handing TFDS a custom config would log a warning on every load.
    if isinstance(builder_config, str):
      config_name = builder_config.split(":")[0]
      if self.get_builder_config(config_name) is None:
        return self.named_config(config_name)
    return super()._create_builder_config(builder_config, version)
