"""Datasets built by the real builders from synthetic downloads in the official layouts."""
import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_fixtures import (IMAGENET_CORRUPT_TRAIN, IMAGENET_SYNSETS, IMAGENET_TRAIN_PER_SYNSET,
                           IMAGENET_VALIDATION, KINETICS_MISSING, KINETICS_TRAIN,
                           KINETICS_VALIDATION, PATCH_SIZE, SSV2_CORRUPT_ID, SSV2_TEMPLATES,
                           SSV2_TRAIN_IDS, SSV2_VALIDATION_IDS, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE,
                           data, small_source_config)
from omnimae_jax.data import pipeline, sources
from omnimae_jax.data.builders import kinetics
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

assert data  # the session fixture, imported so that pytest finds it here


def _examples(builder, split):
  dataset = builder.as_dataset(split=split, decoders={"video": tfds.decode.SkipDecoding()})
  return sorted(dataset.as_numpy_iterator(), key=lambda example: example["id"])


def test_imagenet2012_from_tars_built_by_the_tfds_builder(data):
  builder = data["imagenet2012"]
  train_count = len(IMAGENET_SYNSETS) * IMAGENET_TRAIN_PER_SYNSET
  assert builder.info.splits["train"].num_examples == train_count
  assert builder.info.splits["validation"].num_examples == IMAGENET_VALIDATION
  names = builder.info.features["label"].names
  labels_path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012",
                             "validation_labels.txt")
  with open(labels_path) as file:
    expected_val_synsets = file.read().split()[:IMAGENET_VALIDATION]
  val = builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
  by_name = {ex["file_name"].decode(): names[ex["label"]] for ex in val.as_numpy_iterator()}
  assert [by_name[n] for n in sorted(by_name)] == expected_val_synsets


def test_imagenet_through_the_pipeline_skips_and_counts_the_corrupt_jpeg(data):
  cfg = small_source_config("image", "imagenet2012", batch_size=4)
  source = pipeline.make_source("in1k", cfg, data_dir=data["data_dir"], patch_size=PATCH_SIZE,
                                seed=0, process_index=0, process_count=1)
  assert source.steps_per_epoch == 12 // 4
  batches = list(source.dataset(0).as_numpy_iterator())
  assert len(batches) == 3
  valid = np.concatenate([batch["valid"] for batch in batches])
  labels = np.concatenate([batch["label"] for batch in batches])
  assert np.count_nonzero(~valid) == IMAGENET_CORRUPT_TRAIN  # the corrupt JPEG keeps its slot
  assert set(labels[valid]) == {0, 1}  # n01440764 and n01443537 are classes 0 and 1
  assert (labels[~valid] == -1).all()
  assert all(batch["pixels"].shape == (4, 32, 32, 3) for batch in batches)


def test_ssv2_from_webm_and_official_json_skips_the_corrupt_video(data):
  builder = data["something_something_v2"]
  assert builder.info.features["label"].names == [
      template.replace("[", "").replace("]", "") for template in SSV2_TEMPLATES]
  skipped = builder.skipped_files["train"]
  assert [os.path.basename(path) for path, _ in skipped] == [f"{SSV2_CORRUPT_ID}.webm"]
  train = _examples(builder, "train")
  good_ids = sorted(set(SSV2_TRAIN_IDS) - {SSV2_CORRUPT_ID})
  assert [ex["id"].decode() for ex in train] == good_ids
  for example in train:
    position = SSV2_TRAIN_IDS.index(example["id"].decode())
    assert example["label"] == position % len(SSV2_TEMPLATES)  # template -> class
    assert example["video"].shape == (VIDEO_FRAMES,) and example["fps"] == VIDEO_FPS
    first_frame = Image.open(io.BytesIO(example["video"][0]))
    assert first_frame.size == (VIDEO_SIZE[1], VIDEO_SIZE[0])
  assert [ex["id"].decode() for ex in _examples(builder, "validation")] == list(
      SSV2_VALIDATION_IDS)


def test_kinetics_from_mp4_and_csv_skips_the_clip_missing_from_the_download(data):
  builder = data["kinetics400"]
  assert builder.info.features["label"].names == ["abseiling", "juggling"]
  train = _examples(builder, "train")
  expected = sorted(kinetics.clip_stem(*row[1:]) for row in KINETICS_TRAIN)
  assert [ex["id"].decode() for ex in train] == expected
  for example in train:
    label = next(row[0] for row in KINETICS_TRAIN if kinetics.clip_stem(*row[1:]) ==
                 example["id"].decode())
    assert builder.info.features["label"].names[example["label"]] == label
    assert example["fps"] == 25 and example["video"].shape == (VIDEO_FRAMES,)
  missing = kinetics.clip_stem(*KINETICS_MISSING[1:])
  assert [os.path.basename(p) for p, _ in builder.skipped_files["train"]] == [f"{missing}.mp4"]
  assert builder.info.splits["validation"].num_examples == len(KINETICS_VALIDATION)


def test_generic_csv_builder(data):
  builder = data["video_csv"]
  assert builder.info.features["label"].names == ["class_0", "class_1", "class_2"]
  train = _examples(builder, "train")
  assert len(train) == 6 and builder.info.splits["validation"].num_examples == 2
  assert [ex["label"] for ex in train] == [0, 1, 2, 0, 1, 2]
  assert train[0]["id"].decode() == os.path.join("clips", "000000.mp4")


def _build(name, data_dir, manual_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def test_missing_manual_dir_names_the_path_and_the_command(tmp_path):
  with pytest.raises(DatasetNotPreparedError, match="omnimae_jax.data.prepare") as error:
    _build("something_something_v2/original", tmp_path / "tfds", tmp_path / "nowhere")
  assert str(tmp_path / "nowhere") in str(error.value)


def test_wrong_layout_says_what_is_missing(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "readme.txt").write_text("videos go here")
  with pytest.raises(DatasetNotPreparedError, match="labels.json") as error:
    _build("something_something_v2/original", tmp_path / "tfds", manual)
  assert str(manual) in str(error.value)
  with pytest.raises(DatasetNotPreparedError, match="train.csv"):
    _build("kinetics400/original", tmp_path / "tfds", manual)
  with pytest.raises(DatasetNotPreparedError, match="train.csv"):
    _build("video_csv/original", tmp_path / "tfds", manual)


def _copy_ssv2_labels(data, destination):
  labels = os.path.join(data["manual"]["ssv2"], "labels")
  destination.mkdir()
  for name in ("labels.json", "train.json", "validation.json"):
    (destination / name).write_text(open(os.path.join(labels, name)).read())


def test_label_files_that_do_not_match_the_videos_are_an_error(data, tmp_path):
  manual = tmp_path / "manual"
  _copy_ssv2_labels(data, manual)
  (manual / "999.webm").write_bytes(b"")  # a video folder whose ids the JSON files do not list
  with pytest.raises(LabelFileMismatchError, match="missing") as error:
    _build("something_something_v2/original", tmp_path / "tfds", manual)
  assert str(manual) in str(error.value)
  train = json.loads((manual / "train.json").read_text())
  train[0]["template"] = "Juggling [something]"
  (manual / "train.json").write_text(json.dumps(train))
  with pytest.raises(LabelFileMismatchError, match="Juggling"):
    _build("something_something_v2/original", tmp_path / "tfds", manual)


def test_kinetics_csv_without_the_official_columns(tmp_path):
  manual = tmp_path / "manual"
  (manual / "train").mkdir(parents=True)
  (manual / "train.csv").write_text("name,class\nx,y\n")
  with pytest.raises(LabelFileMismatchError, match="youtube_id"):
    _build("kinetics400/original", tmp_path / "tfds", manual)


def test_unprepared_data_dir_is_an_error_not_a_download(tmp_path):
  cfg = small_source_config("video", "something_something_v2")
  with pytest.raises(DatasetNotPreparedError, match="not prepared") as error:
    pipeline.make_source("ssv2", cfg, data_dir=str(tmp_path), patch_size=PATCH_SIZE, seed=0,
                         process_index=0, process_count=1)
  assert str(tmp_path) in str(error.value) and "prepare" in str(error.value)
  with pytest.raises(DatasetNotPreparedError, match="ILSVRC2012_img_train.tar"):
    sources.ensure_built("imagenet2012", str(tmp_path))
  assert not any(os.scandir(tmp_path))  # nothing was built or downloaded


def test_unknown_dataset_and_unknown_split(data):
  with pytest.raises(DatasetNotPreparedError, match="unknown TFDS dataset"):
    sources.load_builder("no_such_dataset", data["data_dir"])
  cfg = small_source_config("image", "omnimae_demo/images", split="test")
  with pytest.raises(DatasetNotPreparedError, match="no split 'test'.*validation"):
    pipeline.make_source("demo", cfg, data_dir=data["data_dir"], patch_size=PATCH_SIZE, seed=0,
                         process_index=0, process_count=1)


def test_modality_that_does_not_match_the_dataset(data):
  cfg = small_source_config("video", "omnimae_demo/images")
  with pytest.raises(DatasetNotPreparedError, match="no Video feature"):
    pipeline.make_source("demo", cfg, data_dir=data["data_dir"], patch_size=PATCH_SIZE, seed=0,
                         process_index=0, process_count=1)
