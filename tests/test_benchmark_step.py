"""`benchmark step` times the training loop's own steps (pretraining or fine-tuning) on synthetic
batches; only that it runs and reports is tested here (figures belong in notes, not tests)."""
import pytest

from omnimae_jax import benchmark


@pytest.mark.parametrize("config, header, source, tokens", [
    ("configs/demo_finetune.py", "finetune tiny", "train", "64"),  # no mask: every token
    ("configs/demo_omni.py:sources=images", "pretrain tiny", "images", "7/64")])
def test_times_the_step_on_8_devices(capsys, config, header, source, tokens):
  status = benchmark.main(["step", f"--config={config}", "--batch_per_device=1", "--steps=1"])
  out = capsys.readouterr().out
  assert not status, out
  assert out.startswith(f"{header} (float32") and "on 8 x cpu" in out
  row = next(line for line in out.splitlines() if line.startswith(source))
  batch, row_tokens, compile_seconds, step_ms, samples_per_second = row.split()[1:6]
  assert (int(batch), row_tokens) == (8, tokens)  # 8 devices x 1
  assert float(step_ms) > 0 and float(samples_per_second) > 0


@pytest.mark.parametrize("flags, says", [
    (["--sources=audio"], "--sources: ['audio'] not in the config; allowed: ['images', 'videos']"),
    (["--sharding=zero3"], "sharding='zero3'; allowed: one of")])
def test_bad_input_is_one_line_and_exit_2_before_compiling(capsys, flags, says):
  status = benchmark.main(["step", "--config=configs/demo_omni.py", *flags])
  captured = capsys.readouterr()
  assert status == 2 and captured.out == ""
  assert says in captured.err and len(captured.err.strip().splitlines()) == 1
