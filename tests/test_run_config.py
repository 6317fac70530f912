"""The run's config lives in its workdir; a resume that changes the schedule or data order is
refused unless asked for; --print_config shows the recipe without compiling."""
import io
import json

import pytest

from omnimae_jax.config_file import ConfigError
from omnimae_jax.train import run_config
from omnimae_jax.train import loop
from test_train import demo_data_dir, demo_flags, main_py, run, small_config

assert demo_data_dir  # the session fixture, imported so that pytest finds it here


def test_every_change_is_found_and_schedule_or_data_fields_are_told_apart():
  saved = {"epochs": 6, "log_every_steps": 20, "optim": {"lr": 1e-3, "b1": 0.9},
           "data": {"sources": {"images": {"batch_size": 32}}, "prefetch": 2}}
  new = {"epochs": 8, "log_every_steps": 1, "optim": {"lr": 2e-3, "b1": 0.9},
         "data": {"sources": {"images": {"batch_size": 16}}, "prefetch": 4}}
  found = run_config.changes(saved, new)
  assert found == [("data.prefetch", 2, 4), ("data.sources.images.batch_size", 32, 16),
                   ("epochs", 6, 8), ("log_every_steps", 20, 1), ("optim.lr", 1e-3, 2e-3)]
  assert [field for field, _, _ in found if run_config.moves_schedule(field)] == [
      "data.sources.images.batch_size", "epochs", "optim.lr"]
  assert run_config.changes(saved, saved) == []


def test_a_resume_with_changed_epochs_is_refused_then_allowed_and_reported(demo_data_dir,
                                                                           tmp_path):
  config = small_config(demo_data_dir, "images", total_steps=0, epochs=1)
  run(config, tmp_path, stop_at_step=2)
  stored = run_config.read(tmp_path)
  assert stored["epochs"] == 1 and stored == run_config.as_dict(config)

  changed = small_config(demo_data_dir, "images", total_steps=0, epochs=2)
  with pytest.raises(ConfigError, match=r"epochs 1 -> 2; .*--allow_config_change") as error:
    run(changed, tmp_path, stop_at_step=3)
  assert "\n" not in str(error.value)
  assert run_config.read(tmp_path)["epochs"] == 1  # nothing written by the refused resume

  stream = io.StringIO()
  summary = loop.train(changed, str(tmp_path), stream=stream, stop_at_step=3,
                       allow_config_change=True)
  assert summary["step"] == 3
  assert "Resuming with changed settings (--allow_config_change): epochs 1 -> 2" in (
      stream.getvalue())
  assert run_config.read(tmp_path)["epochs"] == 2
  with open(tmp_path / "config.until_step_2.json") as file:
    assert json.load(file)["epochs"] == 1  # what the first two steps were trained with
  run(changed, tmp_path, stop_at_step=4)  # the new config is now the stored one: no change
  assert not (tmp_path / "config.until_step_3.json").exists()

  # A change that moves neither the schedule nor the data needs no permission, but is reported
  # and the config it replaces is kept too.
  quieter = small_config(demo_data_dir, "images", total_steps=0, epochs=2, log_every_steps=2)
  stream = io.StringIO()
  loop.train(quieter, str(tmp_path), stream=stream, stop_at_step=5)
  assert ("Resuming with changed settings (not the schedule or data): log_every_steps 1 -> 2"
          in stream.getvalue())
  assert "--allow_config_change" not in stream.getvalue()
  assert run_config.read(tmp_path)["log_every_steps"] == 2
  with open(tmp_path / "config.until_step_4.json") as file:
    assert json.load(file)["log_every_steps"] == 1


def test_main_refuses_a_changed_resume_in_one_line(demo_data_dir, tmp_path):
  base = demo_flags(demo_data_dir, tmp_path, "--config.total_steps=2", sources="images",
                    probe=False)
  proc = main_py(*base, "--stop_at_step=1")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  proc = main_py(*base, "--config.seed=1")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  assert err.startswith("error: ") and "seed 0 -> 1" in err and "Traceback" not in err


def test_print_config_shows_the_recipe_and_exits_without_a_workdir(demo_data_dir, tmp_path):
  proc = main_py(*demo_flags(demo_data_dir, tmp_path / "never", "--print_config"))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "mode: pretrain" in out and "Effective recipe:" in out
  assert "images: omnimae_demo/images[train] 2000 examples" in out
  assert not (tmp_path / "never").exists()
