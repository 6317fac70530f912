"""pretrained.load and init_from: a fine-tuning classifier initialised from an official-format
file, a model directory and a training workdir (tiny layout); and the errors that must be clear."""
import re

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omnimae_jax import models, pretrained
from omnimae_jax.train import checkpoint, state as state_lib
from test_convert import official_entries, official_state, tiny_pretrain_file
from test_convert_torchfile import save_torch_zip

NUM_CLASSES, HEAD_STD = 10, 0.01  # the SSv2 head init (SPEC §1.6)
REINITIALISED = "trunk/norm/* [trunk/norm/bias, trunk/norm/scale], head/* [head/bias, head/kernel]"


def flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def classifier(**overrides):
  return models.build("tiny", "classifier", num_classes=NUM_CLASSES, head_init_std=HEAD_STD,
                      img_size=32, num_frames=4, **overrides)


def fresh_params(model, seed=0):
  init = jax.jit(lambda rng: nn.unbox(model.init(rng, *state_lib.init_inputs(model))["params"]),
                 compiler_options=state_lib.init_compiler_options())
  return init(jax.random.PRNGKey(seed))


def abstract_params(model):
  """Shapes only: enough for the checks, nothing compiled."""
  return jax.eval_shape(
      lambda: nn.unbox(model.init(jax.random.PRNGKey(0), *state_lib.init_inputs(model)))["params"])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """{'official': .torch file, 'model_dir': ..., 'workdir': ...} and the values each holds."""
  root = tmp_path_factory.mktemp("sources")
  official = root / "tiny_pretrain.torch"
  tiny_pretrain_file(official)
  model, variables = pretrained.load(official, expect="pretrain")
  values = {"official": flat(variables["params"])}
  # The directories hold other values than the file, so a mix-up between sources shows.
  model_dir_params = jax.tree.map(lambda v: v + 1.0, variables["params"])
  checkpoint.export_model(str(root / "model"), model, {"params": model_dir_params})
  values["model_dir"] = flat(model_dir_params)
  workdir_params = jax.tree.map(lambda v: v * 2.0, variables["params"])
  saver = checkpoint.TrainCheckpointer(str(root / "workdir"), async_save=False)
  saver.save(7, {"step": np.int32(7), "params": workdir_params,
                 "opt_state": optax.adamw(1e-3).init(workdir_params)}, model)
  saver.close()
  values["workdir"] = flat(workdir_params)
  paths = {"official": official, "model_dir": root / "model", "workdir": root / "workdir"}
  return paths, values


@pytest.fixture(scope="module")
def target():
  model = classifier()
  return model, fresh_params(model)


@pytest.mark.parametrize("name", ["official", "model_dir", "workdir"])
def test_trunk_loaded_norm_and_head_fresh(sources, target, name):
  paths, values = sources
  model, fresh = target
  params, report = pretrained.init_from(paths[name], model, fresh)
  ours, source, before = flat(params), values[name], flat(fresh)
  trunk = [k for k in before if k.startswith("trunk/") and not k.startswith("trunk/norm/")]
  assert sorted(report.loaded) == sorted(trunk) and len(trunk) == 4 * 12 + 2
  for key in trunk:
    np.testing.assert_array_equal(ours[key], source[key], err_msg=key)
  np.testing.assert_array_equal(ours["trunk/norm/scale"], np.ones(192))
  np.testing.assert_array_equal(ours["trunk/norm/bias"], np.zeros(192))
  kernel = np.asarray(ours["head/kernel"])
  np.testing.assert_array_equal(kernel, before["head/kernel"])
  np.testing.assert_array_equal(ours["head/bias"], np.zeros(NUM_CLASSES))
  assert kernel.shape == (192, NUM_CLASSES) and abs(kernel.std() / HEAD_STD - 1) < 0.1
  assert report.excluded["trunk/norm/*"] == ["trunk/norm/bias", "trunk/norm/scale"]
  assert "decoder/mask_token" in report.excluded["decoder/*"]
  assert report.reinitialised == {"trunk/norm/*": ["trunk/norm/bias", "trunk/norm/scale"],
                                  "decoder/*": [], "head/*": ["head/bias", "head/kernel"]}
  text = str(report)
  assert "50 of 54 parameters loaded" in text and f"re-initialised: {REINITIALISED}" in text
  assert "excluded from the source: trunk/norm/* [" in text and "decoder/* (27)" in text
  assert len(text.splitlines()) == 3


def test_loaded_params_keep_the_target_sharding_and_run(sources, target):
  paths, values = sources
  model, fresh = target
  mesh = Mesh(np.array(jax.devices()[:8]), ("model",))
  sharded = jax.device_put(fresh, NamedSharding(mesh, PartitionSpec()))
  key = "trunk/blocks_0/mlp/fc1/kernel"  # [192, 768]: split over 8 devices
  spread = NamedSharding(mesh, PartitionSpec(None, "model"))
  sharded["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"] = jax.device_put(flat(fresh)[key], spread)
  params, _ = pretrained.init_from(paths["workdir"], model, sharded)
  leaf = flat(params)[key]
  assert isinstance(leaf, jax.Array) and leaf.sharding == spread
  np.testing.assert_array_equal(leaf, values["workdir"][key])
  logits = jax.jit(model.apply)({"params": params}, np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, NUM_CLASSES) and np.isfinite(np.asarray(logits)).all()


def test_fine_tuned_trunk_transfers_when_asked(tmp_path, target):
  """IN1K-ft -> SSv2: a classifier source is refused by default, taken with expect='classifier'."""
  model, fresh = target
  source = save_torch_zip(tmp_path / "in1k_ft.torch", official_state(
      official_entries("tiny", 8, kind="classifier", num_classes=5)))
  with pytest.raises(pretrained.PretrainedError, match="classifier .*5 classes.* checkpoint, "
                     "but a pretrained trunk was expected; .*expect='classifier'"):
    pretrained.init_from(source, model, fresh)
  _, variables = pretrained.load(source, expect="classifier")
  params, report = pretrained.init_from(source, model, fresh, expect="classifier",
                                        exclude=("head/*",))  # keep its post-pool norm
  np.testing.assert_array_equal(flat(params)["trunk/norm/scale"],
                                flat(variables["params"])["trunk/norm/scale"])
  np.testing.assert_array_equal(flat(params)["head/kernel"], flat(fresh)["head/kernel"])
  assert report.reinitialised == {"head/*": ["head/bias", "head/kernel"]}


def test_pretraining_source_where_a_classifier_was_expected(sources):
  paths, _ = sources
  for name in ("official", "workdir"):
    with pytest.raises(pretrained.PretrainedError, match=f"{paths[name]}: a pretraining "
                       f"checkpoint .* but a classifier \\(fine-tuned\\) checkpoint was expected"):
      pretrained.load(paths[name], expect="classifier")


def test_paths_that_are_not_checkpoints(tmp_path):
  (tmp_path / "notes.txt").write_text("hi")
  (tmp_path / "empty").mkdir()
  cases = {tmp_path / "absent": "no such file or directory; expected an official OmniMAE "
                                ".torch file, one of our model directories",
           tmp_path / "notes.txt": "not a PyTorch checkpoint",
           tmp_path / "empty": "a directory that is neither a model directory nor a training "
                               "workdir; expected an official"}
  for path, message in cases.items():
    with pytest.raises(checkpoint.CheckpointError, match="^" + re.escape(f"{path}: {message}")):
      pretrained.load(path)


@pytest.mark.parametrize("overrides,messages", [
    (dict(width=256, num_heads=4), [
        "the trunks differ: width 192 (source) vs 256 (target), num_heads 3 (source) vs 4",
        "trunk/blocks_0/mlp/fc1/bias: shape (768,) in the source, (1024,) in the target",
        "... and "]),
    (dict(patch_size=(2, 8, 8)), [
        "patch_size (2, 16, 16) (source) vs (2, 8, 8) (target)", "(1 problem(s)",
        "trunk/patch_embed/proj/kernel: shape (2, 16, 16, 3, 192) in the source, "
        "(2, 8, 8, 3, 192) in the target"]),
    (dict(depth=2), ["in the source, not in the target: trunk/blocks_2/*: 12 parameters",
                     "in the source, not in the target: trunk/blocks_3/*: 12 parameters"]),
], ids=["width", "patch", "depth"])
def test_another_architecture_is_refused_before_anything_compiles(sources, overrides, messages):
  paths, _ = sources
  model = classifier(**overrides)
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.init_from(paths["model_dir"], model, abstract_params(model))
  text = str(error.value)
  assert text.startswith(f"{paths['model_dir']}: cannot initialise")
  for message in messages:
    assert message in text


def test_other_misuse(sources, target):
  paths, _ = sources
  model, fresh = target
  with pytest.raises(pretrained.PretrainedError, match="head/kernel: shape \\(128, 1536\\) in "
                     "the source, \\(192, 10\\) in the target(.|\n)*exclude pattern"):
    pretrained.init_from(paths["official"], model, fresh, exclude=("trunk/norm/*", "decoder/*"))
  with pytest.raises(pretrained.PretrainedError, match="the target is a MAEPretrain"):
    pretrained.init_from(paths["official"], models.build("tiny"), {})
  with pytest.raises(pretrained.PretrainedError, match="change the architecture .*'width'"):
    pretrained.load(paths["model_dir"], width=256)
  loaded, _ = pretrained.load(paths["model_dir"], img_size=64, compute_dtype="bfloat16")
  assert (loaded.config.img_size, loaded.config.compute_dtype) == (64, "bfloat16")
  _, report = pretrained.init_from(paths["official"], model, fresh,
                                   exclude=pretrained.DEFAULT_EXCLUDE + ("trunk/blokcs_3/*",))
  assert report.unused_patterns == ["trunk/blokcs_3/*"]
  wrapped, _ = pretrained.init_from(paths["official"], model, {"params": fresh})  # variables
  assert set(wrapped) == {"params"} and set(wrapped["params"]) == {"trunk", "head"}
  assert "exclude patterns that matched nothing: trunk/blokcs_3/*" in str(report)
