"""Fine-tuning end to end on the demo data: init_from a pretraining workdir, exact resume,
evaluations at the start and the end, and the bad inputs that must fail before compiling."""
import io
import json
import os

import jax
import numpy as np
import pytest

from configs import common, demo_finetune, demo_omni
from omnimae_jax import pretrained
from omnimae_jax.train import checkpoint as checkpoint_lib
from omnimae_jax.train import evaluate, loop
from data_fixtures import DEMO_IMAGE_VALIDATION
from test_train import SHALLOW, demo_data_dir, set_fields

assert demo_data_dir  # the session fixture, imported so that pytest finds it here


@pytest.fixture(scope="module")
def pretrained_workdir(demo_data_dir, tmp_path_factory):
  """A few steps of the demo pretraining (images only, shallow): a real workdir to start from."""
  workdir = tmp_path_factory.mktemp("pretrain")
  config = set_fields(demo_omni.get_config("sources=images"), {
      **SHALLOW, "data.data_dir": demo_data_dir, "total_steps": 2, "recon_every_steps": 0,
      "evals": {}, "data.sources.images.batch_size": 16, "data.sources.images.shuffle_buffer": 64})
  loop.train(config, str(workdir), stream=io.StringIO())
  return str(workdir)


def finetune_config(data_dir, init, **changes):
  config = demo_finetune.get_config(f"init={init}")
  return set_fields(config, {
      "model.depth": SHALLOW["model.depth"], "data.data_dir": data_dir, "total_steps": 4,
      "log_every_steps": 1, "checkpoint.every_steps": 2, "data.sources.train.batch_size": 16,
      "data.sources.train.shuffle_buffer": 64, "evals.val.every_steps": 1000,
      "evals.val.source.batch_size": 40, "evals.val.source.split": DEMO_IMAGE_VALIDATION,
      **changes})


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_finetune_from_a_pretraining_workdir_resumes_exactly(demo_data_dir, pretrained_workdir,
                                                             tmp_path):
  config = finetune_config(demo_data_dir, pretrained_workdir)
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  stream = io.StringIO()
  summary = loop.train(config, str(straight), stream=stream)
  assert "initialised from" in stream.getvalue() and "re-initialised" in stream.getvalue()
  loop.train(config, str(interrupted), stream=io.StringIO(), stop_at_step=2)
  resumed = io.StringIO()
  loop.train(config, str(interrupted), stream=resumed)
  assert "Resumed at step 2" in resumed.getvalue()
  assert "initialised from" not in resumed.getvalue()  # the workdir's own checkpoint wins

  def losses(workdir):
    return {m["step"]: m["loss"] for m in metrics(workdir) if "loss" in m}

  assert sorted(losses(straight)) == [1, 2, 3, 4]
  assert losses(straight) == losses(interrupted)
  for a, b in zip(jax.tree.leaves(checkpoint_lib.load_model(str(straight))[1]),
                  jax.tree.leaves(checkpoint_lib.load_model(str(interrupted))[1])):
    np.testing.assert_array_equal(a, b)
  # Validation top-1 at the start and at the end, in metrics.jsonl and in the summary.
  evals = [m for m in metrics(straight) if m.get("eval") == "val"]
  assert [m["step"] for m in evals] == [0, 4]
  assert all(m["val/examples"] == 200 and 0.0 <= m["val/top1"] <= 1.0 for m in evals)
  assert sorted(summary["evals"]["val"]) == [0, 4]

  # mode=evaluate on the fine-tuning workdir measures what the loop measured at its last step,
  # and keeps the earlier results of eval_results.json.
  eval_config = common.evaluate_config("in1k", str(straight), batch_size=40)
  with eval_config.unlocked():
    eval_config.compute_dtype = "float32"
    eval_config.data.data_dir = demo_data_dir
    eval_config.evals.val.source.update(config.evals.val.source)
  eval_dir = tmp_path / "evaluate"
  for _ in range(2):
    results = evaluate.evaluate(eval_config, str(eval_dir), stream=io.StringIO())
  assert results["val"]["top1"] == summary["evals"]["val"][4]["top1"]
  assert results["val"]["examples"] == 200
  with open(eval_dir / "eval_results.json") as f:
    assert len(json.load(f)) == 2


def test_first_step_starts_from_the_pretrained_trunk(demo_data_dir, pretrained_workdir,
                                                      tmp_path):
  config = finetune_config(demo_data_dir, pretrained_workdir, total_steps=1, **{
      "optim.lr": 1e-30, "optim.init_lr": 1e-30, "evals": {}})  # a step that changes nothing
  summary = loop.train(config, str(tmp_path), stream=io.StringIO())
  _, source = pretrained.load(pretrained_workdir)
  params = jax.device_get(summary["state"]["params"])
  np.testing.assert_allclose(params["trunk"]["blocks_0"]["attn"]["qkv"]["kernel"],
                             source["params"]["trunk"]["blocks_0"]["attn"]["qkv"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(params["trunk"]["norm"]["scale"], 1.0, rtol=1e-6)  # fresh


@pytest.mark.parametrize("changes,error,match", [
    ({"init_from.path": "/nonexistent/ckpt"}, checkpoint_lib.CheckpointError,
     "no such file or directory"),
    ({"model.num_classes": 7}, loop.ConfigError, "num_classes"),
    ({"data.sources.train.split": "validation[:0%]"}, loop.ConfigError, "validation"),
    ({"optim.layer_decay": 1.5}, loop.ConfigError, "optim.layer_decay"),
    ({"augment.mixup_alpha": -0.2}, loop.ConfigError, "augment.mixup_alpha"),
    ({"data.sources.train.rand_augment": "rand-m9-bogus3"}, loop.ConfigError, "rand_augment"),
    ({"evals.val.source.resize_size": 32}, loop.ConfigError, "resize_size"),
])
def test_bad_fine_tuning_input_fails_before_compiling(demo_data_dir, pretrained_workdir, tmp_path,
                                                      changes, error, match):
  config = finetune_config(demo_data_dir, pretrained_workdir, **changes)
  with pytest.raises(error, match=match):
    loop.train(config, str(tmp_path), stream=io.StringIO())
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_a_classifier_where_a_pretrained_trunk_was_expected_is_refused(demo_data_dir,
                                                                      pretrained_workdir,
                                                                      tmp_path):
  classifier_dir = tmp_path / "classifier"
  loop.train(finetune_config(demo_data_dir, pretrained_workdir, total_steps=1, evals={}),
             str(classifier_dir), stream=io.StringIO())
  config = finetune_config(demo_data_dir, str(classifier_dir))
  with pytest.raises(checkpoint_lib.CheckpointError, match="pretrained trunk was expected"):
    loop.train(config, str(tmp_path / "again"), stream=io.StringIO())
