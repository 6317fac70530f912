r"""Build a dataset once from its manual download: `python -m omnimae_jax.data.prepare NAME ...`.

  python -m omnimae_jax.data.prepare imagenet2012 --manual_dir=~/downloads/imagenet \
      --data_dir=~/tensorflow_datasets
  python -m omnimae_jax.data.prepare something_something_v2 --manual_dir=~/downloads/ssv2 \
      --data_dir=~/tensorflow_datasets --num_workers=16
  python -m omnimae_jax.data.prepare kinetics400/short320 --manual_dir=... --data_dir=...
  python -m omnimae_jax.data.prepare omnimae_demo/videos --data_dir=...   # no manual dir needed
  python -m omnimae_jax.data.prepare image_folder/my_photos --manual_dir=~/photos --data_dir=...
  python -m omnimae_jax.data.prepare video_csv/my_clips --manual_dir=~/clips --data_dir=...

Video datasets take a config name for the stored short side: short256 (default), short320,
short160, short128 or original. Your own files (image_folder, video_csv) take a name of your
choice instead, several per data_dir: image_folder/NAME (images kept as given) or
video_csv/NAME (frames at a short side of at most 256); NAME-shortN or NAME-original picks
another size.

A dataset already prepared is not rebuilt: the command says so and prints its splits. --overwrite
rebuilds it from the manual dir into a staging folder and, once that succeeded, replaces only
that dataset's version folder (DATA_DIR/<builder>/<config>/<version>); a failed rebuild keeps the
old one.

Downloads: this project's datasets and imagenet2012 are built from the manual dir only; nothing is
downloaded (TFDS's look-up of ready-made copies on gs://tfds-data is turned off too). Any other
TFDS catalog name may download its files from the internet (mnist, for one, does), so it is
refused unless --allow_download is given.

A missing or malformed input (manual dir, annotation file, CSV row, class folder, a data_dir that
is a file, a bad dataset name) stops the build before any video or image is decoded, with one
line `error: ...` on stderr and exit status 2.
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
import textwrap

import tensorflow_datasets as tfds

from omnimae_jax.data import builders
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

# Stock TFDS builders known to read only the manual dir (imagenet2012 reads its tars and the label
# file shipped in the TFDS wheel). Ours never download either.
_OFFLINE_STOCK = ("imagenet2012",)
_STOCK_MANUAL_FILES = {
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                     "ILSVRC2012_img_test.tar"),
}
_STOCK_LAYOUTS = {
    "imagenet2012": "ILSVRC2012_img_train.tar and/or ILSVRC2012_img_val.tar from image-net.org",
}
_WITH_WORKERS = ("something_something_v2", "kinetics400", "kinetics600", "kinetics700",
                 "video_csv", "image_folder")
EXIT_DATA_ERROR = 2


def _layouts_epilog():
  names_by_layout = {}
  for name in builders.DATASET_NAMES:
    layout = getattr(tfds.builder_cls(name), "LAYOUT", "") or "nothing (generated from a seed)"
    names_by_layout.setdefault(layout, []).append(name)
  for name, layout in _STOCK_LAYOUTS.items():
    names_by_layout.setdefault(layout, []).append(name)
  lines = ["What the manual dir holds:"]
  for layout, names in names_by_layout.items():
    lines += textwrap.wrap(f"{', '.join(names)}: {layout}", width=98, initial_indent="  ",
                           subsequent_indent="      ")
  return "\n".join(lines)


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="python -m omnimae_jax.data.prepare", description=__doc__, epilog=_layouts_epilog(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="TFDS name, e.g. something_something_v2, kinetics400/short320, "
                                   "image_folder/NAME or video_csv/NAME")
  parser.add_argument("--data_dir", required=True, help="where the built dataset is written")
  parser.add_argument("--manual_dir", default=None,
                      help="the downloaded files (default: DATA_DIR/downloads/manual, as TFDS)")
  parser.add_argument("--num_workers", type=int, default=0,
                      help="videos or images decoded at once (our builders; default: all CPUs)")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild the dataset if it is prepared already (replaces only its "
                           "version folder, once the new one is built)")
  parser.add_argument("--allow_download", action="store_true",
                      help="let a TFDS catalog dataset download its files (and TFDS fetch a "
                           "ready-made copy from gs://tfds-data); off by default")
  return parser.parse_args(argv)


def _base_name(name):
  return name.split("/")[0].split(":")[0]


def _builder_class(name):
  """The registered builder class of `name`, or a one-line error for an unknown name or config
  (TFDS's own messages list every catalog dataset, hundreds of lines)."""
  base_name = _base_name(name)
  try:
    builder_class = tfds.builder_cls(base_name)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise DatasetNotPreparedError(
        f"unknown dataset {base_name!r}; expected one of {', '.join(builders.DATASET_NAMES)}, "
        "imagenet2012 or another TFDS catalog name") from error
  config_names = [config.name for config in builder_class.BUILDER_CONFIGS or ()]
  name_without_version = name.split(":")[0]
  config = name_without_version.split("/")[1] if "/" in name_without_version else None
  if config is not None and config not in config_names and base_name in builders.NAMED_DATASETS:
    builder_class.named_config(config)  # any well-formed name is a dataset of the user's own
  elif config is not None and config not in config_names:
    raise DatasetNotPreparedError(
        f"{base_name} has no config {config!r}; expected one of {config_names or 'none'}")
  return builder_class


def _check_data_dir(data_dir):
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DatasetNotPreparedError(
        f"data_dir {data_dir} is a file; expected a directory (created when missing) that holds "
        "the built datasets")


def _check_manual_dir(name, builder_class, manual_dir, given):
  """Fails early, in one line, where TFDS would fail late or in many lines."""
  base_name = _base_name(name)
  layout = getattr(builder_class, "LAYOUT", "") or _STOCK_LAYOUTS.get(base_name)
  expected = f"expected a folder holding {layout}" if layout else "expected the downloaded files"
  where = "manual dir" if given else "default manual dir (no --manual_dir given)"
  if not os.path.exists(manual_dir):
    raise DatasetNotPreparedError(f"{name}: {where} {manual_dir} does not exist; {expected}")
  if not os.path.isdir(manual_dir):
    raise DatasetNotPreparedError(f"{name}: {where} {manual_dir} is not a folder; {expected}")
  required_any = _STOCK_MANUAL_FILES.get(base_name)
  if required_any and not any(os.path.exists(os.path.join(manual_dir, file_name))
                              for file_name in required_any):
    raise DatasetNotPreparedError(
        f"{name}: {where} {manual_dir} holds none of {', '.join(required_any)}; {expected}")


def open_builder(name, data_dir, num_workers=0):
  """The TFDS builder of `name` in data_dir (prepared or not), after checking the name."""
  data_dir = os.path.expanduser(data_dir)
  _check_data_dir(data_dir)
  _builder_class(name)
  kwargs = {"num_workers": num_workers} if num_workers and _base_name(name) in _WITH_WORKERS else {}
  return tfds.builder(name, data_dir=data_dir, **kwargs)


def _check_download_allowed(name, data_dir, allow_download):
  base_name = _base_name(name)
  if base_name in builders.DATASET_NAMES or base_name in _OFFLINE_STOCK or allow_download:
    return
  raise DatasetNotPreparedError(
      f"{name} is a TFDS catalog dataset whose build may download files from the internet "
      f"into {data_dir}; pass --allow_download to permit that (this command builds "
      f"{', '.join(builders.DATASET_NAMES)} and imagenet2012 without downloading)")


def prepare(name, *, data_dir, manual_dir=None, num_workers=0, allow_download=False,
            overwrite=False):
  """Builds `name` into data_dir from manual_dir; returns the builder (its `skipped_files` lists
  the files that could not be decoded, for our builders). A prepared dataset is returned as it
  is, or rebuilt with overwrite=True. Input errors raise DatasetNotPreparedError or
  LabelFileMismatchError with a one-line message, before any decoding."""
  data_dir = os.path.expanduser(data_dir)
  builder = open_builder(name, data_dir, num_workers)
  if builder.is_prepared() and not overwrite:
    return builder
  _check_download_allowed(name, data_dir, allow_download)
  given = manual_dir is not None
  manual_dir = (os.path.expanduser(manual_dir) if given
                else os.path.join(data_dir, "downloads", "manual"))  # TFDS's default
  builder_class = _builder_class(name)
  if builder_class.MANUAL_DOWNLOAD_INSTRUCTIONS:
    _check_manual_dir(name, builder_class, manual_dir, given)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                 try_download_gcs=allow_download)
  if builder.is_prepared():
    return _rebuild(name, builder, data_dir, num_workers, download_config)
  builder.download_and_prepare(download_config=download_config,
                               download_dir=os.path.join(data_dir, "downloads"))
  return builder


def _rebuild(name, old, data_dir, num_workers, download_config):
  """Builds `name` afresh in a staging folder inside data_dir, then swaps its version folder for
  the old one: a rebuild that fails (bad manual dir, Ctrl-C) leaves the old dataset as it was.
  Only the dataset's own version folder is ever deleted."""
  staging = tempfile.mkdtemp(prefix=".rebuild_", dir=data_dir)
  try:
    new = open_builder(name, staging, num_workers)
    new.download_and_prepare(download_config=download_config,
                             download_dir=os.path.join(data_dir, "downloads"))
    old_path, new_path = os.fspath(old.data_path), os.fspath(new.data_path)
    # The version folder, e.g. DATA_DIR/video_csv/my_clips/1.0.0, and nothing above it.
    assert os.path.basename(old_path) == str(old.version), old_path
    shutil.rmtree(old_path)
    shutil.move(new_path, old_path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  rebuilt = open_builder(name, data_dir, num_workers)
  rebuilt.skipped_files = getattr(new, "skipped_files", {})
  return rebuilt


class _DropNotBuiltYetWarning(logging.Filter):
  """TFDS warns "Variant folder ... has no dataset_info.json" whenever it looks at a dataset that
  is not built yet, which is every dataset this command is asked to build."""

  def filter(self, record):
    return not record.getMessage().endswith("has no dataset_info.json")


_NOT_BUILT_YET_FILTER = _DropNotBuiltYetWarning()


def _one_line(error):
  # Our messages are one line already; this guards the contract for any that are not.
  return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _print_summary(builder):
  print(f"{builder.info.full_name} in {builder.data_dir}")
  for split, info in builder.info.splits.items():
    skipped = getattr(builder, "skipped_files", {}).get(split, [])
    print(f"  {split}: {info.num_examples} examples, {len(skipped)} files skipped")
    for path, reason in skipped:
      print(f"    skipped {path}: {reason}")


def _print_exists(name, builder):
  """A dataset that exists is reported as such, never as if it had just been built from the
  manual dir given (which may hold other files)."""
  splits = ", ".join(f"{split} {info.num_examples} examples"
                     for split, info in builder.info.splits.items())
  other = (f"; to keep it and prepare another, give that one its own name: "
           f"{_base_name(name)}/NAME" if _base_name(name) in builders.NAMED_DATASETS else "")
  print(f"{name} is already prepared in {builder.data_path} ({splits}): nothing was built. To "
        f"rebuild it from the manual dir, add --overwrite{other}")


def main(argv=None):
  """Returns the exit status: 0 built (or already built), 2 for an input error, printed as one
  `error: ...` line on stderr. Other exceptions are bugs and keep their traceback."""
  args = _parse(sys.argv[1:] if argv is None else argv)
  logging.getLogger("absl").addFilter(_NOT_BUILT_YET_FILTER)  # adding it again is a no-op
  try:
    existing = open_builder(args.name, args.data_dir)
    if existing.is_prepared() and not args.overwrite:
      _print_exists(args.name, existing)
      return 0
    builder = prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                      num_workers=args.num_workers, allow_download=args.allow_download,
                      overwrite=args.overwrite)
  except (DatasetNotPreparedError, LabelFileMismatchError) as error:
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return EXIT_DATA_ERROR
  _print_summary(builder)
  return 0


if __name__ == "__main__":
  sys.exit(main())
