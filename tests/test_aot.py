"""AOT compile for a TPU topology from this CPU machine (libtpu from requirements.txt)."""
import re

import pytest

from omnimae_jax import aot, benchmark

DEMO = "configs/demo_omni.py"


def compile_cli(capsys, *flags):
  """(exit status, stdout, stderr) of `benchmark compile` run in this process."""
  status = benchmark.main(["compile", f"--config={DEMO}", *flags])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


@pytest.mark.parametrize("spec, generation, dims, slices", [
    ("v5e:4x4", "v5e", (4, 4), 1), ("v4:2x2x1", "v4", (2, 2, 1), 1),
    ("2xv5e:16x16", "v5e", (16, 16), 2), ("H100:2x8", "h100", (2, 8), 1)])
def test_parse_target(spec, generation, dims, slices):
  target = aot.parse_target(spec)
  assert (target.generation, target.dims, target.num_slices) == (generation, dims, slices)


@pytest.mark.parametrize("spec, says", [
    ("v5x:4x4", "unknown accelerator 'v5x'"), ("v5e:4x4x4", "v5e topologies are NxN"),
    ("v4:2x2", "v4 topologies are NxNxN"), ("v5e-16", "is not a target"),
    ("2xh100:1x8", "slices are a TPU notion")])
def test_parse_target_rejects_with_the_flag_and_what_is_allowed(spec, says):
  with pytest.raises(aot.TargetError, match=re.escape(says)) as error:
    aot.parse_target(spec)
  assert str(error.value).startswith(f"--target={spec!r}")


def test_largest_fitting_doubles_then_bisects():
  calls = []

  def fits(n):
    calls.append(n)
    return n <= 37

  assert aot.largest_fitting(fits, 8) == 37
  assert calls[:4] == [8, 16, 32, 64]  # doubling, then bisection in (32, 64)
  assert aot.largest_fitting(lambda n: n <= 5, 64) == 5  # the start does not fit
  assert aot.largest_fitting(lambda n: False, 4) == 0
  assert aot.largest_fitting(lambda n: True, 1, limit=100) == 64


@pytest.mark.parametrize("flags, says", [
    (["--target=v5x:4x4"], "--target='v5x:4x4': unknown accelerator"),
    (["--target=v5e:3x3"], "libtpu rejects this topology"),
    (["--target=v5e:4x4", "--set", "mesh=(('data', -1), ('model', 3))"],
     "does not fit 16 devices"),
    (["--target=v5e:4x4", "--set", "model.no_such_field=1"], "--set 'model.no_such_field=1'"),
    (["--target=v5e:4x4", "--sources=audio"], "--sources: ['audio'] not in the config")])
def test_bad_input_is_one_line_and_exit_2_before_compiling(capsys, flags, says):
  status, out, err = compile_cli(capsys, "--batch_per_device=4", *flags)
  assert status == 2
  assert out == ""  # nothing compiled, no table
  assert says in err and len(err.strip().splitlines()) == 1


def test_tiny_step_compiles_for_v5e_and_a_huge_batch_does_not_fit(capsys):
  status, out, _ = compile_cli(capsys, "--target=v5e:4x4", "--sources=images",
                               "--batch_per_device=4")
  assert status == 0, out
  assert "16 x TPU v5 lite (16.0 GiB per device)" in out
  row = next(line for line in out.splitlines() if line.startswith("images"))
  batch, per_device, args_gib, out_gib, temp_gib, peak_gib, fits = row.split()[1:8]
  assert (int(batch), per_device, fits) == (64, "4", "yes")
  assert 0 < float(args_gib) <= float(peak_gib) < 1  # the tiny model's state and batch

  # 2^16 images per chip: far beyond 16 GiB; the compiler says so (or plans past the HBM).
  status, out, _ = compile_cli(capsys, "--target=v5e:4x4", "--sources=images",
                               f"--batch_per_device={1 << 16}")
  assert status == 1, out
  row = next(line for line in out.splitlines() if line.startswith("images"))
  assert row.split()[1] == str(16 << 16) and " no " in row


def test_the_splash_setting_runs_the_pallas_kernel_per_device_in_a_v5e_step():
  from omnimae_jax.config_file import load_config  # noqa: PLC0415

  devices = aot.target_devices(aot.parse_target("v5e:2x2"))
  config = aot.apply_overrides(load_config(DEMO), ["model.attention=splash"])
  plan = aot.make_plan(aot.set_batch(config, 2, len(devices)), devices)
  text = aot.lower_source(plan, "images", 2 * len(devices)).as_text()
  assert "tpu_custom_call" in text  # the Pallas kernel ('auto' vs 'xla': tests/test_attention.py)
  assert "sdy.manual_computation" in text  # shard_map: each device on its own samples
