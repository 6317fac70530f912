r"""Build a dataset once from its manual download: `python -m omnimae_jax.data.prepare NAME ...`.

  python -m omnimae_jax.data.prepare imagenet2012 --manual_dir=~/downloads/imagenet \
      --data_dir=~/tensorflow_datasets
  python -m omnimae_jax.data.prepare something_something_v2 --manual_dir=~/downloads/ssv2 \
      --data_dir=~/tensorflow_datasets --num_workers=16
  python -m omnimae_jax.data.prepare kinetics400/short320 --manual_dir=... --data_dir=...
  python -m omnimae_jax.data.prepare omnimae_demo/videos --data_dir=...   # no manual dir needed

Video datasets take a config name for the stored short side: short256 (default), short320,
short160, short128 or original.

Downloads: this project's datasets and imagenet2012 are built from the manual dir only; nothing is
downloaded (TFDS's look-up of ready-made copies on gs://tfds-data is turned off too). Any other
TFDS catalog name may download its files from the internet (mnist, for one, does), so it is
refused unless --allow_download is given; a dataset already built is never touched.

A missing or malformed input (manual dir, annotation file, CSV row, a data_dir that is a file) stops
the build before any video is decoded, with one line `error: ...` on stderr and exit status 2.
"""
import argparse
import logging
import os
import sys
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
                 "video_csv")
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
  parser.add_argument("name", help="TFDS name, e.g. something_something_v2 or kinetics400/short320")
  parser.add_argument("--data_dir", required=True, help="where the built dataset is written")
  parser.add_argument("--manual_dir", default=None,
                      help="the downloaded files (default: DATA_DIR/downloads/manual, as TFDS)")
  parser.add_argument("--num_workers", type=int, default=0,
                      help="videos decoded at once (our video builders; default: all CPUs)")
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
  if config is not None and config not in config_names:
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


def prepare(name, *, data_dir, manual_dir=None, num_workers=0, allow_download=False):
  """Builds `name` into data_dir from manual_dir; returns the builder (its `skipped_files` lists
  the videos that could not be decoded, for our video builders). Input errors raise
  DatasetNotPreparedError or LabelFileMismatchError with a one-line message, before any decoding."""
  data_dir = os.path.expanduser(data_dir)
  _check_data_dir(data_dir)
  builder_class = _builder_class(name)
  base_name = _base_name(name)
  kwargs = {"num_workers": num_workers} if num_workers and base_name in _WITH_WORKERS else {}
  builder = tfds.builder(name, data_dir=data_dir, **kwargs)
  if builder.is_prepared():
    return builder
  offline = base_name in builders.DATASET_NAMES or base_name in _OFFLINE_STOCK
  if not offline and not allow_download:
    raise DatasetNotPreparedError(
        f"{name} is a TFDS catalog dataset whose build may download files from the internet "
        f"into {data_dir}; pass --allow_download to permit that (this command builds "
        f"{', '.join(builders.DATASET_NAMES)} and imagenet2012 without downloading)")
  given = manual_dir is not None
  manual_dir = (os.path.expanduser(manual_dir) if given
                else os.path.join(data_dir, "downloads", "manual"))  # TFDS's default
  if builder_class.MANUAL_DOWNLOAD_INSTRUCTIONS:
    _check_manual_dir(name, builder_class, manual_dir, given)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=allow_download))
  return builder


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


def main(argv=None):
  """Returns the exit status: 0 built (or already built), 2 for an input error, printed as one
  `error: ...` line on stderr. Other exceptions are bugs and keep their traceback."""
  args = _parse(sys.argv[1:] if argv is None else argv)
  logging.getLogger("absl").addFilter(_NOT_BUILT_YET_FILTER)  # adding it again is a no-op
  try:
    builder = prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                      num_workers=args.num_workers, allow_download=args.allow_download)
  except (DatasetNotPreparedError, LabelFileMismatchError) as error:
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return EXIT_DATA_ERROR
  _print_summary(builder)
  return 0


if __name__ == "__main__":
  sys.exit(main())
