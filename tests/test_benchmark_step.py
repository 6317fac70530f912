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
