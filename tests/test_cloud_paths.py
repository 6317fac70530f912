"""A workdir on gs:// end to end (checkpoints, metrics.jsonl, TensorBoard, pictures, resume,
the architecture check, eval_results.json) against a fake GCS kept in a local folder.

The fake stands in at the places where bytes leave the program, each of which reads gs://
itself in production: etils.epath (our own files, orbax's directories), TensorStore (orbax's
arrays), TensorFlow's file system (TensorBoard events) and the bucket metadata orbax asks the
google-cloud-storage client for (a flat bucket here). Anything that treated the
URL as a local path (os.path.abspath, open, os.makedirs) would write under the working
directory as './gs:/...', which the tests check stays empty.
"""
import io
import json
import os
import types

import jax
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from omnimae_jax.train import checkpoint as checkpoint_lib
from omnimae_jax.train import evaluate as evaluate_lib
from omnimae_jax.train import loop, metrics as metrics_lib
from test_train import demo_data_dir, small_config  # noqa: F401  (a session fixture)

URL = "gs://bucket/runs/demo"


class FakeGcs:
  """gs://BUCKET/PATH is the local file ROOT/BUCKET/PATH."""

  def __init__(self, root):
    self.root = str(root)

  def local(self, path):
    path = os.fspath(path)
    return os.path.join(self.root, path[len("gs://"):]) if path.startswith("gs://") else path

  def url(self, path):
    return "gs://" + os.path.relpath(path, self.root) if path.startswith(self.root) else path


class FakeGcsBackend:
  """epath's local-file backend behind gs:// names (the methods epath calls on a backend)."""

  def __init__(self, gcs: FakeGcs):
    self.gcs = gcs
    self.os = epath_backend.os_backend

  def __getattr__(self, name):
    method = getattr(self.os, name)

    def call(*args, **kwargs):
      args = [self.gcs.local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
      return method(*args, **kwargs)
    return call

  def glob(self, path):
    return [self.gcs.url(p) for p in self.os.glob(self.gcs.local(path))]

  def walk(self, path, **kwargs):
    for directory, dirs, files in self.os.walk(self.gcs.local(path), **kwargs):
      yield self.gcs.url(directory), dirs, files


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  gcs = FakeGcs(tmp_path / "gcs")
  backend = FakeGcsBackend(gcs)
  real_backend = gpath._GPath._backend  # a property

  def pick_backend(path):
    return backend if path._uri_scheme == "gs" else real_backend.fget(path)

  monkeypatch.setattr(gpath._GPath, "_backend", property(pick_backend))
  real_normalize = tensorstore_utils._normalize_path
  monkeypatch.setattr(tensorstore_utils, "_normalize_path",
                      lambda path: real_normalize(gcs.local(path)))
  monkeypatch.setattr(metrics_lib, "tf_path", gcs.local)
  monkeypatch.setattr(gcs_utils, "get_bucket", lambda name: types.SimpleNamespace(
      name=name, hierarchical_namespace_enabled=False))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield gcs
  assert not os.listdir(cwd), "a URL was used as a local path"


def metric_steps(path):
  with open(path) as f:
    return [r["step"] for r in map(json.loads, f) if "eval" not in r]


def images_only_config(data_dir, **changes):
  """The tiny demo run on its image source only: one compiled step keeps the test short."""
  config = small_config(data_dir, **changes)
  with config.unlocked():
    del config.data.sources["videos"]
  return config


def test_training_on_gs_workdir_saves_logs_and_resumes(demo_data_dir, fake_gcs):  # noqa: F811
  config = images_only_config(demo_data_dir, total_steps=4, recon_every_steps=2,
                              **{"checkpoint.every_steps": 2})
  summary = loop.train(config, URL, stream=io.StringIO(), stop_at_step=2)
  local = fake_gcs.local(URL)
  assert summary["workdir"] == URL and summary["checkpoints"] == URL + "/checkpoints"
  assert sorted(os.listdir(os.path.join(local, "checkpoints"))) == ["2"]
  assert metric_steps(os.path.join(local, "metrics.jsonl")) == [1, 2]
  assert any("tfevents" in name for name in os.listdir(os.path.join(local, "tensorboard")))
  assert "step00000002_images.png" in os.listdir(os.path.join(local, "reconstructions"))

  stream = io.StringIO()
  summary = loop.train(config, URL, stream=stream)
  assert f"Resumed at step 2 in {URL}" in stream.getvalue()
  assert summary["step"] == 4
  assert sorted(os.listdir(os.path.join(local, "checkpoints"))) == ["2", "4"]
  assert metric_steps(os.path.join(local, "metrics.jsonl")) == [1, 2, 3, 4]

  model, variables = checkpoint_lib.load_model(URL)  # a gs:// workdir as a model source
  saved = variables["params"]["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"]
  trained = summary["state"]["params"]["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"]
  np.testing.assert_array_equal(saved, jax.device_get(trained))
  path = evaluate_lib.record_results(URL, {"results": {"top1": 0.5}})
  assert path == URL + "/eval_results.json"
  with open(fake_gcs.local(path)) as f:
    assert json.load(f) == [{"results": {"top1": 0.5}}]

  with config.unlocked():  # the architecture check reads the gs:// checkpoint's description
    config.model.size = "base"
  with pytest.raises(checkpoint_lib.CheckpointError, match=f"{URL}/checkpoints holds"):
    loop.train(config, URL, stream=io.StringIO())
