"""`prepare`: every bad input is one `error: ...` line on stderr naming the file and what was
expected, exit status 2, no traceback, and no video decoded. The builders raise the same one-line
errors when used through the TFDS Python API."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from data_fixtures import SSV2_TEMPLATES
from omnimae_jax.data import prepare, synthetic_files, video_io
from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError

SSV2 = "something_something_v2/original"
KINETICS = "kinetics400/original"
VIDEO_CSV = "video_csv/original"
SSV2_LABELS = {template.replace("[", "").replace("]", ""): str(index)
               for index, template in enumerate(SSV2_TEMPLATES)}
SSV2_LABELS_EXPECTED = "expected the SSv2 labels file {template: index}"
SSV2_SPLIT_EXPECTED = "expected an SSv2 annotation array"
KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"
KINETICS_EXPECTED = "expected a Kinetics annotation CSV with header label,youtube_id,time_start"
VIDEO_CSV_EXPECTED = "expected a CSV with header path,label"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, content):
  """Writes a str as is and anything else as JSON; returns the path."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as file:
    file.write(content if isinstance(content, str) else json.dumps(content))
  return path


def _ssv2_entries(*ids, template=SSV2_TEMPLATES[0]):
  return [{"id": video_id, "label": "x", "template": template, "placeholders": ["a cup"]}
          for video_id in ids]


def _ssv2_dir(manual, **contents):
  """labels/{labels,train,validation}.json, valid unless given (None leaves the file out); no
  videos: every error below comes before the builder looks for them. Returns {name: path}."""
  files = {"labels": SSV2_LABELS, "train": _ssv2_entries("1", "2"),
           "validation": _ssv2_entries("3")}
  files.update(contents)
  return {f"{name}.json": _write(os.path.join(manual, "labels", f"{name}.json"), content)
          for name, content in files.items() if content is not None}


def _csv_dir(manual, csvs, folders=()):
  """CSV files (name -> text) and empty clip folders; returns {name: path}."""
  for folder in folders:
    os.makedirs(os.path.join(manual, folder), exist_ok=True)
  return {name: _write(os.path.join(manual, name), text) for name, text in csvs.items()}


def _kinetics_dir(manual, train=KINETICS_HEADER + "abseiling,aaaaaaaaaaa,10,20,train\n",
                  validate=None):
  csvs = {"train.csv": train, **({"validate.csv": validate} if validate else {})}
  return _csv_dir(manual, csvs, folders=("train", "val"))


def _video_csv_dir(manual, train="path,label\nclips/a.mp4,cat\n", validation=None):
  return _csv_dir(manual, {"train.csv": train,
                           **({"validation.csv": validation} if validation else {})})


def _write_bytes(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as file:
    file.write(payload)
  return path


def _ssv2_template_not_in_labels(manual):
  paths = _ssv2_dir(manual, train=_ssv2_entries("1") + _ssv2_entries(
      "2", template="Juggling [something]"))
  return [f"{paths['train.json']}: entry 1 (video 2) has template 'Juggling [something]', which "
          f"is not a class in {paths['labels.json']}",
          "expected label files of the same SSv2 release"]


def _ssv2_without_validation_json(manual):
  _ssv2_dir(manual, validation=None)
  return [f"no validation.json in manual dir {manual}",
          "expected labels.json, train.json and validation.json"]


def _kinetics_without_train_csv(manual):
  _csv_dir(manual, {"val.csv": KINETICS_HEADER}, folders=("train",))
  return [f"no train.csv (top level or annotations/) in manual dir {manual}",
          "expected train.csv (and validate.csv or val.csv"]


def _video_csv_without_train_csv(manual):
  _csv_dir(manual, {"validation.csv": "path,label\na.mp4,cat\n"})
  return [f"no train.csv in manual dir {manual}",
          "expected train.csv (and optionally validation.csv, test.csv) with header path,label"]


def _video_csv_with_binary_validation_csv(manual):
  _video_csv_dir(manual)
  path = _write_bytes(os.path.join(manual, "validation.csv"), b"path,label\n\xff\xfe.mp4,cat\n")
  return [f"{path} is not UTF-8 text (byte 11", VIDEO_CSV_EXPECTED]


# (dataset, setup(manual dir) -> substrings the one error line must contain). The builders raise
# these themselves, so each case also runs through tfds.builder(...).download_and_prepare().
BUILDER_CASES = {
    "ssv2_labels_not_json": (SSV2, lambda m: [
        _ssv2_dir(m, labels='{"Pushing something": "0",\n  "Holding": }\n')["labels.json"]
        + " is not valid JSON (Expecting value: line 2, column 14)", SSV2_LABELS_EXPECTED]),
    "ssv2_labels_is_an_array": (SSV2, lambda m: [
        _ssv2_dir(m, labels=["Pushing something"])["labels.json"] + " holds an array",
        SSV2_LABELS_EXPECTED]),
    "ssv2_labels_index_not_a_number": (SSV2, lambda m: [
        _ssv2_dir(m, labels={"Pushing something": "zero"})["labels.json"]
        + ": class 'Pushing something' has index 'zero'", SSV2_LABELS_EXPECTED]),
    "ssv2_labels_index_gap": (SSV2, lambda m: [
        _ssv2_dir(m, labels={"a": "0", "b": "2"})["labels.json"] + ": no class has index 1",
        "expected each of 0..1 once"]),
    "ssv2_template_not_in_labels": (SSV2, _ssv2_template_not_in_labels),
    "ssv2_entry_without_template": (SSV2, lambda m: [
        _ssv2_dir(m, validation=[{"id": "3"}])["validation.json"]
        + ": entry 0 ({'id': '3'}) has no template", SSV2_SPLIT_EXPECTED]),
    "ssv2_split_file_is_an_object": (SSV2, lambda m: [
        _ssv2_dir(m, train={"1": "Pushing"})["train.json"] + " holds an object",
        SSV2_SPLIT_EXPECTED]),
    "ssv2_split_file_truncated": (SSV2, lambda m: [
        _ssv2_dir(m, validation='[{"id": "3", "templ')["validation.json"]
        + " is not valid JSON (Unterminated string starting at: line 1, column 14)", SSV2_SPLIT_EXPECTED]),
    "ssv2_video_listed_twice": (SSV2, lambda m: [
        _ssv2_dir(m, train=_ssv2_entries("1", "2", "1"))["train.json"]
        + ": video 1 is listed twice (entries 0 and 2)", "expected each video once"]),
    "ssv2_missing_split_file": (SSV2, _ssv2_without_validation_json),
    "ssv2_manual_dir_missing": (SSV2, lambda m: [
        f"manual dir {m} does not exist", "expected", "labels.json"]),
    "kinetics_wrong_header": (KINETICS, lambda m: [
        _kinetics_dir(m, train="name,class\nx,y\n")["train.csv"]
        + ": header 'name,class' lacks label,youtube_id,time_start,time_end", KINETICS_EXPECTED]),
    "kinetics_row_with_too_few_fields": (KINETICS, lambda m: [
        _kinetics_dir(m, train=KINETICS_HEADER + "abseiling,aaaaaaaaaaa,10,20,train\n"
                      "juggling,bbbbbbbbbbb,5\n")["train.csv"]
        + ":3: 3 fields where the header has 5", KINETICS_EXPECTED]),
    "kinetics_empty_label": (KINETICS, lambda m: [
        _kinetics_dir(m, train=KINETICS_HEADER + ",aaaaaaaaaaa,10,20,train\n")["train.csv"]
        + ":2: empty label", KINETICS_EXPECTED]),
    "kinetics_time_not_a_number": (KINETICS, lambda m: [
        _kinetics_dir(m, train=KINETICS_HEADER + "abseiling,aaaaaaaaaaa,ten,20,train\n")[
            "train.csv"] + ":2: time_start 'ten' or time_end '20' is not a number of seconds",
        KINETICS_EXPECTED]),
    "kinetics_validation_csv_wrong_header": (KINETICS, lambda m: [
        _kinetics_dir(m, validate="label;youtube_id\n")["validate.csv"]
        + ": header 'label;youtube_id' lacks", KINETICS_EXPECTED]),
    "kinetics_no_train_csv": (KINETICS, _kinetics_without_train_csv),
    "video_csv_wrong_header": (VIDEO_CSV, lambda m: [
        _video_csv_dir(m, train="file,class\na.mp4,cat\n")["train.csv"]
        + ": header 'file,class' lacks path,label", VIDEO_CSV_EXPECTED]),
    "video_csv_row_with_too_many_fields": (VIDEO_CSV, lambda m: [
        _video_csv_dir(m, train="path,label\na.mp4,cat\nb.mp4,dog,extra\n")["train.csv"]
        + ":3: 3 fields where the header has 2", VIDEO_CSV_EXPECTED]),
    "video_csv_empty_label": (VIDEO_CSV, lambda m: [
        _video_csv_dir(m, train="path,label\na.mp4,cat\nb.mp4,\n")["train.csv"]
        + ":3: empty label", VIDEO_CSV_EXPECTED]),
    "video_csv_video_listed_twice": (VIDEO_CSV, lambda m: [
        _video_csv_dir(m, train="path,label\na.mp4,cat\n./a.mp4,dog\n")["train.csv"]
        + ":3: ./a.mp4 is listed again (first on line 2)", "expected each video once"]),
    "video_csv_only_a_header": (VIDEO_CSV, lambda m: [
        _video_csv_dir(m, train="path,label\n")["train.csv"] + " lists no videos",
        VIDEO_CSV_EXPECTED]),
    "video_csv_not_utf8": (VIDEO_CSV, _video_csv_with_binary_validation_csv),
    "video_csv_no_train_csv": (VIDEO_CSV, _video_csv_without_train_csv),
}


@pytest.fixture
def no_decoding(monkeypatch):
  """Records every video the builders try to decode (none should be)."""
  decoded = []

  def refuse(path, **kwargs):
    decoded.append(path)
    raise video_io.VideoDecodeError(f"{path}: decoding is not expected in this test")

  monkeypatch.setattr(video_io, "encode_jpeg_frames", refuse)
  return decoded


def _run_main(capsys, argv):
  """(exit status, stderr lines) of prepare.main(argv) in this process."""
  status = prepare.main(argv)
  return status, capsys.readouterr().err.splitlines()


def _assert_one_error_line(lines, expected):
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
  for text in expected:
    assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("case", BUILDER_CASES)
def test_prepare_prints_one_error_line(case, tmp_path, capsys, no_decoding):
  name, setup = BUILDER_CASES[case]
  manual = str(tmp_path / "manual")
  expected = setup(manual)
  status, lines = _run_main(capsys, [name, f"--manual_dir={manual}",
                                     f"--data_dir={tmp_path / 'tfds'}"])
  assert status == 2
  _assert_one_error_line(lines, expected)
  assert not no_decoding


@pytest.mark.parametrize("case", BUILDER_CASES)
def test_builders_raise_the_same_one_line_errors(case, tmp_path, no_decoding):
  name, setup = BUILDER_CASES[case]
  manual = str(tmp_path / "manual")
  expected = setup(manual)
  builder = tfds.builder(name, data_dir=str(tmp_path / "tfds"))
  with pytest.raises((DatasetNotPreparedError, LabelFileMismatchError)) as error:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual, try_download_gcs=False))
  message = str(error.value)
  assert "\n" not in message
  for text in expected:
    assert text in message, (text, message)
  assert not no_decoding


def test_annotations_are_checked_before_any_video_is_decoded(tmp_path, capsys, no_decoding):
  """train.csv is fine and its clip exists, but validation.csv is broken: nothing is decoded."""
  manual = str(tmp_path / "manual")
  paths = _video_csv_dir(manual, validation="path,label\nclips/a.mp4\n")
  _write_bytes(os.path.join(manual, "clips", "a.mp4"), b"the clip train.csv lists")
  status, lines = _run_main(capsys, [VIDEO_CSV, f"--manual_dir={manual}",
                                     f"--data_dir={tmp_path / 'tfds'}"])
  assert status == 2
  _assert_one_error_line(lines, [paths["validation.csv"] + ":2: 1 fields where the header has 2"])
  assert no_decoding == []


def _a_file(tmp_path):
  return _write(str(tmp_path / "a_file"), "not a folder")


def _folder_without_tars(tmp_path):
  os.makedirs(tmp_path / "manual" / "unrelated")
  return str(tmp_path / "manual")


# Errors prepare finds itself, before any builder runs: case -> (tmp_path, data_dir) -> (argv,
# substrings the one error line must contain).
PREPARE_CASES = {
    "data_dir_is_a_file": lambda tmp, tfds_dir: (
        [VIDEO_CSV, f"--manual_dir={tmp}", f"--data_dir={_a_file(tmp)}"],
        [f"data_dir {tmp / 'a_file'} is a file; expected a directory"]),
    "unknown_dataset": lambda tmp, tfds_dir: (
        ["no_such_dataset", f"--data_dir={tfds_dir}"],
        ["unknown dataset 'no_such_dataset'; expected one of something_something_v2"]),
    "unknown_config": lambda tmp, tfds_dir: (
        ["kinetics400/short999", f"--data_dir={tfds_dir}"],
        ["kinetics400 has no config 'short999'; expected one of ['short256'"]),
    "catalog_dataset_that_downloads": lambda tmp, tfds_dir: (
        ["mnist", f"--data_dir={tfds_dir}"],
        ["mnist is a TFDS catalog dataset whose build may download files",
         "pass --allow_download"]),
    "imagenet_without_tars": lambda tmp, tfds_dir: (
        ["imagenet2012", f"--manual_dir={_folder_without_tars(tmp)}", f"--data_dir={tfds_dir}"],
        [f"manual dir {tmp / 'manual'} holds none of ILSVRC2012_img_train.tar",
         "expected a folder holding ILSVRC2012_img_train.tar"]),
    "default_manual_dir_missing": lambda tmp, tfds_dir: (
        [KINETICS, f"--data_dir={tfds_dir}"],
        [f"default manual dir (no --manual_dir given) {tfds_dir}/downloads/manual does not exist",
         "expected a folder holding train.csv"]),
    "manual_dir_is_a_file": lambda tmp, tfds_dir: (
        [SSV2, f"--manual_dir={_a_file(tmp)}", f"--data_dir={tfds_dir}"],
        [f"manual dir {tmp / 'a_file'} is not a folder", "expected a folder holding labels.json"]),
}


@pytest.mark.parametrize("case", PREPARE_CASES)
def test_prepare_level_errors(case, tmp_path, capsys):
  tfds_dir = tmp_path / "tfds"
  argv, expected = PREPARE_CASES[case](tmp_path, tfds_dir)
  status, lines = _run_main(capsys, argv)
  assert status == 2
  _assert_one_error_line(lines, expected)
  assert not tfds_dir.exists()  # nothing was created, let alone downloaded


@pytest.mark.parametrize("name, setup", [
    (SSV2, lambda m: [_ssv2_dir(m, labels="{oops")["labels.json"] + " is not valid JSON",
                      SSV2_LABELS_EXPECTED]),
    (KINETICS, lambda m: [_kinetics_dir(m, train="name,class\nx,y\n")["train.csv"]
                          + ": header 'name,class' lacks", KINETICS_EXPECTED]),
], ids=["ssv2_labels_not_json", "kinetics_wrong_header"])
def test_command_line_exits_2_with_one_line(name, setup, tmp_path):
  manual = str(tmp_path / "manual")
  expected = setup(manual)
  result = subprocess.run(
      [sys.executable, "-m", "omnimae_jax.data.prepare", name, f"--manual_dir={manual}",
       f"--data_dir={tmp_path / 'tfds'}"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=120, check=False)
  assert result.returncode == 2, result.stderr
  _assert_one_error_line(result.stderr.splitlines(), expected)


def test_a_good_manual_dir_still_builds(tmp_path, capsys):
  manual = str(tmp_path / "manual")
  synthetic_files.write_video_csv_manual_dir(manual, num_videos=2, num_classes=2, num_frames=4,
                                             height=16, width=24, fps=12)
  status = prepare.main([VIDEO_CSV, f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}"])
  out, err = capsys.readouterr()
  assert status == 0 and "error:" not in err
  assert "train: 2 examples, 0 files skipped" in out
