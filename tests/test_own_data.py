"""The README's "Your own data" walk-through on files made here: prepare photos in class folders
and two named CSV video datasets, rebuild one with --overwrite, pretrain a tiny model on them
through main.py with the config arg, and reconstruct one of the photos from the workdir."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import main
from omnimae_jax import config_file, reconstruct, visualize
from omnimae_jax.data import prepare, synthetic_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES = 32, 4  # the tiny model's image size and clip length
# (class, file name, format, (height, width)) of the photos' training split.
TRAIN_PHOTOS = [("cat", "a.jpg", "JPEG", (40, 50)), ("cat", "b.jpeg", "JPEG", (36, 36)),
                ("dog", "c.png", "PNG", (48, 40)), ("dog", "deeper/d.webp", "WEBP", (40, 40))]
VALIDATION_PHOTOS = [("dog", "e.jpg", "JPEG", (40, 44))]
# Tiny-model overrides of the walk-through's pretraining command (the test's only additions).
TINY = ["--config.model.size=tiny", f"--config.model.img_size={SIZE}",
        f"--config.model.num_frames={FRAMES}", "--config.model.patch_size=(2, 8, 8)",
        "--config.model.compute_dtype=float32", "--config.sharding=dp",
        f"--config.data.sources.images.image_size={SIZE}",
        f"--config.data.sources.videos.image_size={SIZE}",
        f"--config.data.sources.videos.num_frames={FRAMES}",
        "--config.data.sources.images.batch_size=4", "--config.data.sources.videos.batch_size=4",
        "--config.data.sources.images.shuffle_buffer=8",
        "--config.data.sources.videos.shuffle_buffer=8", "--config.total_steps=2",
        "--config.log_every_steps=1", "--config.recon_every_steps=0",
        "--config.checkpoint.every_steps=2"]


def _photo(path, image_format, shape, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
  mode = "RGBA" if image_format == "PNG" else "RGB"  # a PNG with alpha is kept as given too
  picture = Image.fromarray(pixels).convert(mode)
  picture.save(path, format=image_format)
  return path


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
  """{photos, clips_a, clips_b, data_dir}: a photo folder with train/ and val/ (and one broken
  file) and two video folders with train.csv, as a user would have them."""
  root = tmp_path_factory.mktemp("own")
  photos = root / "photos"
  for seed, (split, (label, name, image_format, shape)) in enumerate(
      [("train", p) for p in TRAIN_PHOTOS] + [("val", p) for p in VALIDATION_PHOTOS]):
    _photo(str(photos / split / label / name), image_format, shape, seed)
  (photos / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
  (photos / "train" / "dog" / "notes.txt").write_text("not an image either, and not counted")
  clips = {}
  for name, count in (("clips_a", 4), ("clips_b", 2)):
    clips[name] = str(root / name)
    synthetic_files.write_video_csv_manual_dir(clips[name], num_videos=count, num_classes=count,
                                               num_frames=6, height=24, width=32, fps=12)
  return dict(photos=str(photos), data_dir=str(root / "tfds"), **clips)


def _prepare(capsys, name, manual_dir, data_dir, *flags):
  """(exit status, stdout, stderr) of `python -m omnimae_jax.data.prepare`, run in-process."""
  status = prepare.main([name, f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", *flags])
  out, err = capsys.readouterr()
  return status, out, err


def _examples(name, data_dir, split, media):
  builder = tfds.builder(name, data_dir=data_dir)
  dataset = builder.as_dataset(split=split, decoders={media: tfds.decode.SkipDecoding()})
  return builder, {ex["id"].decode(): ex for ex in dataset.as_numpy_iterator()}


@pytest.fixture(scope="module")
def prepared(own_files):
  """The walk-through's first command, for the photos and for clips_a."""
  data_dir = own_files["data_dir"]
  for name, manual_dir in (("image_folder/photos", own_files["photos"]),
                           ("video_csv/clips-original", own_files["clips_a"])):
    assert prepare.main([name, f"--manual_dir={manual_dir}", f"--data_dir={data_dir}"]) == 0
  return own_files


def test_photos_keep_their_class_folders_and_bytes(prepared):
  builder, train = _examples("image_folder/photos", prepared["data_dir"], "train", "image")
  _, validation = _examples("image_folder/photos", prepared["data_dir"], "validation", "image")
  names = builder.info.features["label"].names
  assert names == ["cat", "dog"]
  expected = {os.path.join("train", label, name): label for label, name, _, _ in TRAIN_PHOTOS}
  assert {key: names[ex["label"]] for key, ex in train.items()} == expected  # broken.jpg skipped
  assert {key: names[ex["label"]] for key, ex in validation.items()} == {
      os.path.join("val", "dog", "e.jpg"): "dog"}
  for key in (os.path.join("train", "cat", "a.jpg"), os.path.join("train", "dog", "c.png")):
    with open(os.path.join(prepared["photos"], key), "rb") as file:
      assert train[key]["image"] == file.read()  # JPEG and 8-bit PNG are stored as given
  webp = train[os.path.join("train", "dog", "deeper", "d.webp")]["image"]
  assert webp[:2] == b"\xff\xd8"  # WebP is stored as JPEG, same size
  assert tfds.features.Image().decode_example(webp).shape == (40, 40, 3)


def test_shrinking_config_and_a_broken_file_is_counted(own_files, capsys):
  status, out, err = _prepare(capsys, "image_folder/small-short32", own_files["photos"],
                              own_files["data_dir"])
  assert status == 0, err
  assert "train: 4 examples, 1 files skipped" in out and "broken.jpg" in out
  assert "validation: 1 examples, 0 files skipped" in out
  _, train = _examples("image_folder/small-short32", own_files["data_dir"], "train", "image")
  shapes = {key: tfds.features.Image().decode_example(ex["image"]).shape[:2]
            for key, ex in train.items()}
  assert shapes[os.path.join("train", "cat", "a.jpg")] == (32, 40)  # 40x50 -> short side 32
  assert shapes[os.path.join("train", "cat", "b.jpeg")] == (32, 32)


def test_flat_class_folders_are_one_train_split(tmp_path, capsys):
  for index, label in enumerate(["zebra", "ant", "ant"]):
    _photo(str(tmp_path / "manual" / label / f"{index}.jpg"), "JPEG", (20, 24), index)
  status, out, err = _prepare(capsys, "image_folder/flat", tmp_path / "manual", tmp_path / "tfds")
  assert status == 0 and "train: 3 examples, 0 files skipped" in out, err
  builder, train = _examples("image_folder/flat", str(tmp_path / "tfds"), "train", "image")
  assert list(builder.info.splits) == ["train"]
  names = builder.info.features["label"].names
  assert names == ["ant", "zebra"]  # sorted folder names
  assert {key: names[ex["label"]] for key, ex in train.items()} == {
      os.path.join("zebra", "0.jpg"): "zebra", os.path.join("ant", "1.jpg"): "ant",
      os.path.join("ant", "2.jpg"): "ant"}


def _flat_with_loose_photo(root):
  _photo(str(root / "cat" / "a.jpg"), "JPEG", (20, 20), 0)
  _photo(str(root / "loose.jpg"), "JPEG", (20, 20), 1)
  return [f"{root / 'loose.jpg'} is not inside a class folder", "one sub-folder of images"]


def _val_without_train(root):
  _photo(str(root / "val" / "cat" / "a.jpg"), "JPEG", (20, 20), 0)
  return [f"manual dir {root} has val/ but no train/", "expected one sub-folder"]


def _validation_class_not_in_train(root):
  _photo(str(root / "train" / "cat" / "a.jpg"), "JPEG", (20, 20), 0)
  _photo(str(root / "validation" / "cow" / "b.jpg"), "JPEG", (20, 20), 1)
  return [f"validation folder {root / 'validation'} has class folders that train/ lacks: ['cow']"]


def _no_images(root):
  (root / "cat").mkdir(parents=True)
  (root / "cat" / "readme.txt").write_text("photos go here")
  return [f"no images (.jpg, .jpeg, .png", f"in class folders under {root}"]


@pytest.mark.parametrize("name, setup", [
    ("image_folder/x", _flat_with_loose_photo),
    ("image_folder/x", _val_without_train),
    ("image_folder/x", _validation_class_not_in_train),
    ("image_folder/x", _no_images),
    ("image_folder/my photos", lambda root: [
        "image_folder/my photos: not a dataset name; expected image_folder/NAME"]),
    ("video_csv/clips-short", lambda root: [
        "video_csv/clips-short: not a dataset name; expected video_csv/NAME, "
        "video_csv/NAME-shortN or video_csv/NAME-original"]),
], ids=["loose_photo", "val_without_train", "unknown_validation_class", "no_images", "space",
        "bad_size"])
def test_bad_input_is_one_error_line(name, setup, tmp_path, capsys):
  root = tmp_path / "manual"
  root.mkdir()
  expected = setup(root)
  status, out, err = _prepare(capsys, name, root, tmp_path / "tfds")
  assert status == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
  for text in expected:
    assert text in err, (text, err)
  assert not list((tmp_path / "tfds").glob("**/1.1.0*"))  # nothing built, not even partly


def _num_train(name, data_dir):
  return tfds.builder(name, data_dir=data_dir).info.splits["train"].num_examples


def test_named_csv_datasets_coexist_and_overwrite_rebuilds_only_one(prepared, capsys):
  data_dir, name_a, name_b = prepared["data_dir"], "video_csv/clips-original", "video_csv/other"
  status, out, _ = _prepare(capsys, name_b, prepared["clips_b"], data_dir)
  assert status == 0 and "train: 2 examples" in out
  assert (_num_train(name_a, data_dir), _num_train(name_b, data_dir)) == (4, 2)
  _, clips_b = _examples(name_b, data_dir, "train", "video")
  frames = tfds.features.Image().decode_example(clips_b["clips/000000.mp4"]["video"][0])
  assert frames.shape == (24, 32, 3)  # a NAME without size: short side <= 256, never enlarged

  # Pointing an existing name at other files says so, and changes nothing.
  status, out, _ = _prepare(capsys, name_a, prepared["clips_b"], data_dir)
  assert status == 0
  assert f"{name_a} is already prepared in {data_dir}/video_csv/clips-original/1.1.0" in out
  assert "nothing was built" in out and "add --overwrite" in out and "video_csv/NAME" in out
  assert _num_train(name_a, data_dir) == 4

  # A rebuild from a manual dir that does not fit fails and keeps the old dataset.
  status, _, err = _prepare(capsys, name_a, prepared["photos"], data_dir, "--overwrite")
  assert status == 2 and "no train.csv in manual dir" in err
  assert _num_train(name_a, data_dir) == 4

  b_info = os.path.join(data_dir, "video_csv", "other", "1.1.0", "dataset_info.json")
  b_written = os.path.getmtime(b_info)
  status, out, _ = _prepare(capsys, name_a, prepared["clips_b"], data_dir, "--overwrite")
  assert status == 0 and "train: 2 examples, 0 files skipped" in out
  assert (_num_train(name_a, data_dir), _num_train(name_b, data_dir)) == (2, 2)
  assert os.path.getmtime(b_info) == b_written
  assert not [entry for entry in os.listdir(data_dir) if entry.startswith(".rebuild")]

  # Back to clips_a for the walk-through's pretraining.
  assert _prepare(capsys, name_a, prepared["clips_a"], data_dir, "--overwrite")[0] == 0
  assert _num_train(name_a, data_dir) == 4


def _main_py(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=240, check=False)


def test_pretrain_and_reconstruct_on_own_data(prepared, tmp_path, capsys):
  workdir = tmp_path / "workdir"
  config = ("--config=configs/vitb_omni.py:images=image_folder/photos,"
            "videos=video_csv/clips-original")
  result = _main_py(config, f"--workdir={workdir}",
                    f"--config.data.data_dir={prepared['data_dir']}", *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Training finished at step 2 of 2" in result.stdout
  with open(workdir / "metrics.jsonl") as file:
    records = [json.loads(line) for line in file if '"eval"' not in line]
  assert [r["step"] for r in records] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in records)

  photo = os.path.join(prepared["photos"], "train", "cat", "a.jpg")
  out = tmp_path / "recon" / "cat"
  assert reconstruct.main(["--checkpoint", str(workdir), "--input", photo, "--out",
                           str(out)]) == 0
  assert f"wrote {out}.png" in capsys.readouterr().out
  panels = np.asarray(Image.open(f"{out}.png"))
  # One row of 5 panels (normalised targets: the config's default), each upscaled to 224 px.
  assert panels.shape == visualize.picture_shape(1, 5, (224, 224))


@pytest.mark.parametrize("arg, message", [
    ("images=video_csv/clips", "config arg images='video_csv/clips'; expected a prepared image "
                               "dataset, e.g. images=image_folder/NAME"),
    ("videos=image_folder/photos", "config arg videos='image_folder/photos'; expected a prepared "
                                   "video dataset, e.g. videos=video_csv/NAME"),
    ("images=image_folder/my photos", "config arg images='image_folder/my photos'; expected a "
                                      "prepared image dataset"),
    ("image=image_folder/photos", "config arg 'image' unknown; allowed: ['batch_size', 'epochs', "
                                  "'images', 'official', 'sources', 'videos']"),
])
def test_bad_config_arg_is_one_clear_line(arg, message, tmp_path):
  """What main.py prints after `error: ` (exit status 2), checked without starting JAX."""
  spec = f"configs/vitb_omni.py:{arg}"
  code, line = main.check_command_line(["main.py", f"--config={spec}", f"--workdir={tmp_path}"])
  assert code == 2 and line.startswith(f"--config={spec}: {message}"), line


def test_config_arg_points_the_sources_and_keeps_the_recipe():
  config = config_file.load_config(
      "configs/vitl_omni.py:images=image_folder/photos,videos=video_csv/clips")
  images, videos = config.data.sources.images, config.data.sources.videos
  assert (images.tfds_name, videos.tfds_name) == ("image_folder/photos", "video_csv/clips")
  assert (videos.num_frames, videos.clip_seconds, videos.short_side) == (16, 2.7, 256)
  assert videos.flip and not config_file.load_config("configs/vitl_omni.py").data.sources[
      "videos"].flip  # only SSv2's classes depend on left and right
  assert "evals" not in config  # the k-NN probe needs ImageNet
