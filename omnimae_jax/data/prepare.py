"""Build a dataset once from its manual download: `python -m omnimae_jax.data.prepare NAME ...`.

  python -m omnimae_jax.data.prepare imagenet2012 --manual_dir=~/downloads/imagenet \
      --data_dir=~/tensorflow_datasets
  python -m omnimae_jax.data.prepare something_something_v2 --manual_dir=~/downloads/ssv2 \
      --data_dir=~/tensorflow_datasets --num_workers=16
  python -m omnimae_jax.data.prepare kinetics400/short320 --manual_dir=... --data_dir=...
  python -m omnimae_jax.data.prepare omnimae_demo/videos --data_dir=...   # no manual dir needed

Video datasets take a config name for the stored short side: short256 (default), short320,
short160, short128 or original. Nothing is downloaded.
"""
import argparse
import os
import sys

import tensorflow_datasets as tfds

from omnimae_jax.data import builders


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="python -m omnimae_jax.data.prepare", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="TFDS name, e.g. something_something_v2 or kinetics400/short320")
  parser.add_argument("--data_dir", required=True, help="where the built dataset is written")
  parser.add_argument("--manual_dir", default=None,
                      help="the downloaded files (see the README's 'Preparing data')")
  parser.add_argument("--num_workers", type=int, default=0,
                      help="videos decoded at once (our video builders; default: all CPUs)")
  return parser.parse_args(argv)


def _builder_kwargs(name, num_workers):
  base_name = name.split("/")[0]
  ours_with_workers = {"something_something_v2", "kinetics400", "kinetics600", "kinetics700",
                       "video_csv"}
  return {"num_workers": num_workers} if num_workers and base_name in ours_with_workers else {}


def prepare(name, *, data_dir, manual_dir=None, num_workers=0):
  """Builds `name` into data_dir from manual_dir; returns the builder (its `skipped_files` lists
  the videos that could not be decoded, for our video builders)."""
  assert builders  # imported for its side effect: registering our builders with TFDS
  data_dir = os.path.expanduser(data_dir)
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  builder = tfds.builder(name, data_dir=data_dir, **_builder_kwargs(name, num_workers))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  builder = prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                    num_workers=args.num_workers)
  print(f"{builder.info.full_name} in {builder.data_dir}")
  for split, info in builder.info.splits.items():
    skipped = getattr(builder, "skipped_files", {}).get(split, [])
    print(f"  {split}: {info.num_examples} examples, {len(skipped)} files skipped")
    for path, reason in skipped:
      print(f"    skipped {path}: {reason}")


if __name__ == "__main__":
  main()
