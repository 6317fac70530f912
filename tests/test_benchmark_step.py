"""`benchmark step` times the training loop's own steps (pretraining or fine-tuning) on synthetic
batches; only that it runs and reports is tested here (figures belong in notes, not tests)."""
from omnimae_jax import benchmark


def test_times_a_finetuning_step_on_8_devices(capsys):
  status = benchmark.main(["step", "--config=configs/demo_finetune.py", "--batch_per_device=1",
                           "--steps=1"])
  out = capsys.readouterr().out
  assert not status, out
  assert out.startswith("finetune tiny (float32") and "on 8 x cpu" in out
  row = next(line for line in out.splitlines() if line.startswith("train"))
  batch, tokens, compile_seconds, step_ms, samples_per_second = row.split()[1:6]
  assert (int(batch), tokens) == (8, "64")  # 8 devices x 1; no mask: every token
  assert float(step_ms) > 0 and float(samples_per_second) > 0
