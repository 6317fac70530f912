"""Every malformed command line or config is one line on stderr, exit code 2, no traceback, naming
the flag, file or field; the shipped configs pass the same checks.

Most cases run in-process through main.check_command_line (the same parse and checks as
main.py, without a JAX-importing subprocess each); a few run main.py itself, timed.
"""
import os
import subprocess
import sys
import time

import ml_collections
import pytest

import main
from omnimae_jax.train import config_checks

# ml_collections loads config files with importlib's deprecated load_module(): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo_omni.py")
VITB = os.path.join(ROOT, "configs", "vitb_omni.py")
FINETUNE = os.path.join(ROOT, "configs", "demo_finetune.py")

# Config files a user might write: tmp_path/<name>.py with this text.
BAD_FILES = {
    "syntax_error": "def get_config(:\n  pass\n",
    "no_get_config": "CONFIG = {}\n",
    "bad_import": "import no_such_module_here\n\ndef get_config():\n  return None\n",
    "returns_none": "def get_config():\n  return None\n",
}


def demo_variant(change):
  """A config file that is the demo config with one line run on it (unlocked)."""
  return ("from configs import demo_omni\n\n"
          "def get_config():\n"
          "  config = demo_omni.get_config()\n"
          "  with config.unlocked():\n"
          f"    {change}\n"
          "  return config\n")


DEMO_VARIANTS = {
    "num_heads_5": "config.model.num_heads = 5",
    "decoder_heads_3": "config.model.decoder_heads = 3",
    "num_heads_0": "config.model.num_heads = 0",
    "no_sources": "config.data.sources = {}",
    "batch_size_text": "config.data.sources = {'images': dict(config.data.sources.images, "
                       "batch_size='many')}",
    "no_layer_decay": "del config.optim['layer_decay']",
}


@pytest.fixture
def config_dir(tmp_path):
  for name, text in BAD_FILES.items():
    (tmp_path / f"{name}.py").write_text(text)
  for name, change in DEMO_VARIANTS.items():
    (tmp_path / f"{name}.py").write_text(demo_variant(change))
  (tmp_path / "a_file").write_text("")
  return tmp_path


def demo(*flags):
  return (f"--config={DEMO}",) + flags


# (case id, arguments after main.py, text the one-line message must contain). {tmp} is a
# directory holding the files above; {tmp}/work is the workdir unless the case sets one.
CASES = [
    # The 19 reported failures.
    ("unknown_key", demo("--config.optim.lrr=1"), "--config.optim.lrr: optim has no field 'lrr' "
     "(did you mean optim.lr?)"),
    ("unknown_nested_key", demo("--config.optim.foo.bar=1"), "optim has no field 'foo'"),
    ("unknown_top_key", demo("--config.nope=1"), "the config has no field 'nope'"),
    ("missing_file", ("--config={tmp}/nope.py",), "no such file '{tmp}/nope.py'"),
    ("syntax_error", ("--config={tmp}/syntax_error.py",), "syntax error in {tmp}/syntax_error.py"),
    ("no_get_config", ("--config={tmp}/no_get_config.py",), "no_get_config.py defines no "
     "get_config"),
    ("unknown_config_arg", (f"--config={DEMO}:bogus=1",), "config arg 'bogus' unknown; allowed: "
     "['epochs', 'sources']"),
    ("invalid_config_arg", (f"--config={VITB}:sources=audio",), "sources='audio'; allowed: both"),
    ("num_heads", ("--config={tmp}/num_heads_5.py",), "model.num_heads=5 does not divide "
     "model.width=192"),
    ("prefetch_zero", demo("--config.data.prefetch=0"),
     "data.prefetch=0; allowed: an integer >= 1"),
    ("data_dir_is_a_file", demo("--config.data.data_dir={tmp}/a_file"),
     "data.data_dir='{tmp}/a_file': it is a file"),
    ("workdir_is_a_file", demo("--workdir={tmp}/a_file"),
     "--workdir='{tmp}/a_file': it is a file"),
    ("workdir_under_a_file", demo("--workdir={tmp}/a_file/run1"), "'{tmp}/a_file' is a file"),
    ("negative_total_steps", demo("--config.total_steps=-1"), "total_steps=-1"),
    ("zero_epochs", demo("--config.epochs=0"), "epochs=0"),
    ("negative_epochs", demo("--config.epochs=-2"), "epochs=-2"),
    ("mask_ratio_one", demo("--config.data.sources.images.mask_ratio=1.0"), "mask_ratio"),
    ("mask_ratio_masks_nothing", demo("--config.data.sources.images.mask_ratio=0.001"),
     "mask_ratio"),
    ("keep_zero", demo("--config.checkpoint.keep=0"), "checkpoint.keep=0"),
    ("negative_lr", demo("--config.optim.lr=-0.001"), "optim.lr=-0.001; allowed: a number > 0"),
    ("mesh_one_word", demo("--config.mesh=data"), "mesh=('data',); allowed: a sequence of "
     "(name, size) pairs"),
    # Every other checked field.
    ("lr_nan", demo("--config.optim.lr=nan"), "optim.lr=nan"),
    ("lr_inf", demo("--config.optim.lr=inf"), "optim.lr=inf"),
    ("lr_not_a_number", demo("--config.optim.lr=fast"), "--config.optim.lr=fast: could not "
     "convert"),
    ("seed_not_an_int", demo("--config.seed=1.5"), "--config.seed=1.5"),
    ("init_lr", demo("--config.optim.init_lr=-1"), "optim.init_lr=-1.0"),
    ("end_lr", demo("--config.optim.end_lr=-1"), "optim.end_lr=-1.0"),
    ("warmup_fraction", demo("--config.optim.warmup_fraction=1.0"), "optim.warmup_fraction=1.0; "
     "allowed: a number in [0, 1)"),
    ("b1", demo("--config.optim.b1=1.0"), "optim.b1=1.0"),
    ("b2", demo("--config.optim.b2=-0.5"), "optim.b2=-0.5"),
    ("eps", demo("--config.optim.eps=0"), "optim.eps=0.0; allowed: a number > 0"),
    ("weight_decay", demo("--config.optim.weight_decay=-0.05"), "optim.weight_decay=-0.05"),
    ("grad_clip_norm", demo("--config.optim.grad_clip_norm=-1"), "optim.grad_clip_norm=-1.0"),
    ("accum_steps", demo("--config.optim.accum_steps=0"), "optim.accum_steps=0"),
    ("schedule", demo("--config.optim.schedule=linear"), "optim.schedule='linear'; allowed: one "
     "of ('cosine_fixed', 'cosine')"),
    ("layer_decay_zero", demo("--config.optim.layer_decay=0"), "optim.layer_decay=0.0; allowed: "
     "a number in (0, 1]"),
    ("layer_decay_above_one", demo("--config.optim.layer_decay=1.5"), "optim.layer_decay=1.5"),
    ("layer_decay_convention", demo("--config.optim.layer_decay_convention=beit"),
     "optim.layer_decay_convention='beit'; allowed: one of ('official', 'mae')"),
    ("every_steps", demo("--config.checkpoint.every_steps=0"), "checkpoint.every_steps=0"),
    ("log_every_steps", demo("--config.log_every_steps=0"), "log_every_steps=0"),
    ("recon_every_steps", demo("--config.recon_every_steps=-5"), "recon_every_steps=-5; allowed: "
     "an integer >= 0 (0: no reconstruction pictures)"),
    ("eval_every_steps", demo("--config.evals.knn.every_steps=-1"), "evals.knn.every_steps=-1; "
     "allowed: an integer >= 0 (0: off during training)"),
    ("model_size", demo("--config.model.size=gigantic"), "model.size='gigantic'; allowed: one of"),
    ("compute_dtype", demo("--config.model.compute_dtype=int8"), "model.compute_dtype='int8'"),
    ("patch_size_two_numbers", demo("--config.model.patch_size=(8,8)"),
     "model.patch_size=(8, 8); allowed: three integers"),
    ("patch_size_not_dividing", demo("--config.model.patch_size=(2,7,7)"),
     "model: img_size=64 and num_frames=8 must be divisible by patch_size=(2, 7, 7)"),
    ("drop_path", demo("--config.model.drop_path=1.0"), "model.drop_path=1.0"),
    ("img_size", demo("--config.model.img_size=0"), "model.img_size=0"),
    ("decoder_heads", ("--config={tmp}/decoder_heads_3.py",), "model.decoder_heads=3 does not "
     "divide model.decoder_width=128"),
    ("zero_heads", ("--config={tmp}/num_heads_0.py",), "model.num_heads=0"),
    ("mesh_axis_name", demo("--config.mesh=(('data', -1), ('tensor', 1))"), "mesh=(('data', -1), "
     "('tensor', 1))"),
    ("mesh_two_fill_axes", demo("--config.mesh=(('data', -1), ('model', -1))"), "at most one -1"),
    ("mesh_size_zero", demo("--config.mesh=(('data', 0), ('model', 1))"), "mesh=(('data', 0)"),
    ("sharding", demo("--config.sharding=zero3"), "sharding='zero3'; allowed: one of ('dp', "
     "'fsdp', 'fsdp_tp')"),
    ("mode", demo("--config.mode=train"), "mode='train'; allowed: one of ('pretrain', "
     "'finetune', 'evaluate')"),
    ("no_sources", ("--config={tmp}/no_sources.py",), "data.sources="),
    ("source_batch_size", demo("--config.data.sources.images.batch_size=0"),
     "data source 'images': field 'batch_size'"),
    ("source_batch_size_text", ("--config={tmp}/batch_size_text.py",),
     "data.sources.images: TypeError"),
    ("source_image_size", demo("--config.data.sources.images.image_size=60"),
     "field 'image_size' = 60"),
    ("source_mask_kind", demo("--config.data.sources.images.mask_kind=frame"),
     "field 'mask_kind'"),
    ("video_frames_beyond_model", demo("--config.data.sources.videos.num_frames=16"),
     "data.sources.videos.num_frames=16 exceeds model.num_frames=8"),
    ("unknown_source", demo("--config.data.sources.audio.batch_size=4"),
     "data.sources has no field 'audio'"),
    ("missing_field", ("--config={tmp}/no_layer_decay.py",), "optim.layer_decay is missing"),
    ("value_for_a_group", (f"--config={FINETUNE}", "--config.init_from=/runs/pre"),
     "--config.init_from=/runs/pre: init_from is a group of fields, not a value; set its fields: "
     "--config.init_from.exclude, --config.init_from.expect, --config.init_from.path"),
    # The command line itself.
    ("no_config", (), "--config is required"),
    ("unknown_flag", demo("--bogus=1"), "Unknown command line flag 'bogus'"),
    ("positional_argument", demo("train"), "unexpected arguments: ['train']"),
    ("bool_config_arg", (f"--config={VITB}:official=maybe",), "config arg official='maybe'"),
    ("int_config_arg", (f"--config={DEMO}:epochs=six",), "config arg epochs='six'"),
    ("config_is_a_directory", ("--config={tmp}",), "is not a Python file"),
    ("config_fails_to_import", ("--config={tmp}/bad_import.py",), "ModuleNotFoundError"),
    ("config_returns_none", ("--config={tmp}/returns_none.py",), "get_config returned NoneType"),
    ("override_before_config", ("--config.optim.lr=1", f"--config={DEMO}"), "--config.optim.lr"),
]


def command_line(args, tmp):
  args = [arg.replace("{tmp}", str(tmp)) for arg in args]
  if not any(arg.startswith("--workdir") for arg in args):
    args.append(f"--workdir={tmp}/work")
  return ["main.py", *args]


@pytest.mark.parametrize("args,expected", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_command_line_is_one_clear_line(config_dir, args, expected):
  code, message = main.check_command_line(command_line(args, config_dir))
  assert code == 2, f"accepted: {args}"
  assert expected.replace("{tmp}", str(config_dir)) in message
  assert message.strip() and "\n" not in message and "Traceback" not in message


def test_case_ids_are_unique():
  assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("spec", ["demo_omni.py", "vitb_omni.py", "vitb_omni.py:official",
                                  "vitb_omni.py:sources=images", "vitb_omni.py:sources=videos",
                                  "vitl_omni.py", "vith_omni.py"])
def test_shipped_configs_pass(tmp_path, spec):
  code, message = main.check_command_line(
      ["main.py", f"--config={os.path.join(ROOT, 'configs', spec)}", f"--workdir={tmp_path}"])
  assert (code, message) == (0, "")


def test_overrides_that_are_fine_pass(tmp_path):
  code, message = main.check_command_line(list(command_line(demo(
      "--config.optim.lr=2e-3", "--config.total_steps=10", "--config.epochs=0",
      "--config.mesh=(('model', 1), ('data', -1))", "--config.sharding=fsdp",
      f"--config.data.data_dir={tmp_path}/not_yet/tfds", "--noconfig.loss.norm_pix",
      "--config.optim.layer_decay=0.75"), tmp_path)))
  assert (code, message) == (0, "")


def test_check_config_is_mode_aware():
  """An evaluate config has no optimizer or training fields; its own fields are checked."""
  config = ml_collections.ConfigDict(dict(
      mode="evaluate", checkpoint="model_dir", compute_dtype="bfloat16",
      data=dict(data_dir="~/tensorflow_datasets"), mesh=(("data", -1), ("model", 1)),
      sharding="fsdp"))
  config_checks.check_config(config)
  config.checkpoint = ""
  with pytest.raises(config_checks.ConfigError, match="checkpoint=''"):
    config_checks.check_config(config)


def main_py(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  env.pop("XLA_FLAGS", None)
  started = time.time()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  return proc, time.time() - started


SUBPROCESS_CASES = ["unknown_key", "missing_file", "syntax_error", "unknown_config_arg",
                    "keep_zero", "mesh_one_word"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_main_py_prints_one_line_and_exits_2(config_dir, case_id):
  _, args, expected = next(case for case in CASES if case[0] == case_id)
  proc, seconds = main_py(*command_line(args, config_dir)[1:])
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: ")
  assert expected.replace("{tmp}", str(config_dir)) in lines[0]
  assert "Traceback" not in proc.stderr and not proc.stdout
  assert not (config_dir / "work").exists()  # nothing was created
  assert seconds < 20
