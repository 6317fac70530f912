"""Pretraining end to end on the demo dataset: sharding strategies, exact resume, preemption,
restoring onto other meshes, main.py's outputs and its errors."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import demo_omni
from omnimae_jax.data import sources as sources_lib
from omnimae_jax.train import checkpoint as checkpoint_lib
from omnimae_jax.train import loop, optim, sharding
from omnimae_jax.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in ("omnimae_demo/images", "omnimae_demo/videos"):
    sources_lib.ensure_built(name, data_dir)
  return data_dir


# Two encoder blocks and one decoder block instead of the demo's 4 + 2: every block is its own
# code in the compiled step (no scan), so this halves the compile time of each test's steps.
SHALLOW = {"model.depth": 2, "model.decoder_depth": 1}


def small_config(data_dir, sources="both", **changes):
  """The demo config, shallow (SHALLOW), with batches of 16 (video: 4 clips x 4 replicas),
  logging every step, and the paper's per-patch normalised targets. sources='images': one step to
  compile, not two."""
  config = set_fields(demo_omni.get_config(f"sources={sources}"), SHALLOW)
  with config.unlocked():
    config.data.data_dir = data_dir
    config.loss.norm_pix = True
    for source in config.data.sources.values():
      source.batch_size = 16
      source.shuffle_buffer = 64
    config.total_steps = 6
    config.log_every_steps = 1
    config.recon_every_steps = 0
    config.checkpoint.every_steps = 3
    config.evals = {}  # the k-NN probe has a test of its own
  return set_fields(config, changes)


def set_fields(config, changes):
  """The config with dotted fields ('optim.lr') set: what --config.optim.lr=... does."""
  with config.unlocked():
    config.update_from_flattened_dict(changes)
  return config


def losses_by_step(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: (r["modality"], r["loss"]) for r in records if "eval" not in r}


def run(config, workdir, **kwargs):
  return loop.train(config, str(workdir), stream=io.StringIO(), **kwargs)


# ---------------------------------------------------------------------------------------------
# Sharding strategies on 8 fake devices


@pytest.fixture(scope="module")
def one_device_run(demo_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  config = small_config(demo_data_dir, "images", total_steps=4, sharding="dp", **{
      "model.num_heads": 4, "model.decoder_heads": 4})
  summary = run(config, workdir, devices=jax.devices()[:1])
  return config, workdir, summary


@pytest.mark.parametrize("strategy,mesh", [
    ("dp", (("data", -1), ("model", 1))),
    ("fsdp", (("data", -1), ("model", 1))),
    ("fsdp_tp", (("data", -1), ("model", 2))),
])
def test_strategies_match_one_device(one_device_run, demo_data_dir, tmp_path, strategy, mesh):
  reference_config, reference_dir, reference = one_device_run
  config = small_config(demo_data_dir, "images", total_steps=4, sharding=strategy, mesh=mesh, **{
      "model.num_heads": 4, "model.decoder_heads": 4})
  summary = run(config, tmp_path)
  expected, got = losses_by_step(reference_dir), losses_by_step(tmp_path)
  assert sorted(got) == [1, 2, 3, 4]
  for step in expected:
    assert got[step][0] == expected[step][0]
    np.testing.assert_allclose(got[step][1], expected[step][1], rtol=2e-5)
  kernel = summary["state"]["params"]["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"]  # [192, 768]
  shard_shape = kernel.addressable_shards[0].data.shape
  if strategy == "dp":
    assert shard_shape == (192, 768)
  elif strategy == "fsdp":  # the embedding axis split over 8 data-parallel devices
    assert shard_shape == (24, 768)
    mu = summary["state"]["opt_state"][0][0].mu["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert mu.addressable_shards[0].data.shape == (24, 768)
  else:  # 4-way data x 2-way model
    assert shard_shape == (48, 384)
    qkv = summary["state"]["params"]["trunk"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.addressable_shards[0].data.shape == (48, 3, 2, 48)
  np.testing.assert_allclose(
      jax.device_get(kernel),
      jax.device_get(reference["state"]["params"]["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"]),
      rtol=1e-4, atol=1e-6)


def test_checkpoint_from_8_devices_restores_on_1_and_on_4x2(demo_data_dir, tmp_path):
  config = small_config(demo_data_dir, "images", total_steps=2, sharding="fsdp",
                        **{"model.num_heads": 4, "model.decoder_heads": 4})
  saved = jax.device_get(run(config, tmp_path)["state"])
  model = state_lib.build_model(config.model)
  tx = optim.make_optimizer(config.optim, 2)
  for devices, mesh_axes, strategy in [(jax.devices()[:1], (("data", 1), ("model", 1)), "dp"),
                                       (jax.devices(), (("data", 4), ("model", 2)), "fsdp_tp")]:
    mesh = sharding.make_mesh(mesh_axes, devices)
    abstract, shardings = state_lib.state_shardings(model, tx, mesh, strategy)
    restored = checkpoint_lib.TrainCheckpointer(tmp_path).restore(
        state_lib.with_shardings(abstract, shardings))
    assert int(restored["step"]) == 2
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(a, jax.device_get(b))
    fc1 = restored["params"]["trunk"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.mesh.shape == mesh.shape


def test_the_cpu_step_updates_its_donated_parameters_without_copying_them(demo_data_dir):
  """steps.step_compiler_options: on CPU, region-analysis copy insertion leaves no copy in the
  step's entry computation where the default analysis copies parameters; the numbers are equal."""
  from omnimae_jax import aot  # noqa: PLC0415
  from omnimae_jax.train.benchmark_step import synthetic_batch  # noqa: PLC0415

  config = small_config(demo_data_dir, "images")
  plan = aot.make_plan(aot.set_batch(config, 4, 1), jax.devices()[:1])
  lowered = aot.lower_source(plan, "images", 4)
  region, default = lowered.compile(), lowered.compile(
      compiler_options={"xla_cpu_copy_insertion_use_region_analysis": False})

  def entry_copies(compiled):
    return compiled.as_text().split("\nENTRY ")[1].count(" copy(")

  assert entry_copies(region) == 0 < entry_copies(default)
  batch = synthetic_batch(aot.source_step(plan, "images", 4)[1], None, np.random.default_rng(0))
  results = []
  for compiled in (region, default):
    state = state_lib.create_state(plan.model, plan.tx, plan.shardings, config.seed)
    for _ in range(2):
      state, metrics = compiled(state, batch)
    results.append(jax.device_get((state, metrics)))
  for a, b in zip(*map(jax.tree.leaves, results)):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Exact resume


def test_resume_is_exact(demo_data_dir, tmp_path):
  config = small_config(demo_data_dir)
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  run(config, straight)
  first = run(config, interrupted, stop_at_step=3)
  assert first["step"] == 3
  again = run(config, interrupted, stop_at_step=3)  # already there: returns without training
  assert again["step"] == 3 and not again["losses"]
  second = run(config, interrupted)
  assert second["step"] == 6
  assert losses_by_step(straight) == losses_by_step(interrupted)
  _, straight_vars = checkpoint_lib.load_model(str(straight))
  _, resumed_vars = checkpoint_lib.load_model(str(interrupted))
  for a, b in zip(jax.tree.leaves(straight_vars), jax.tree.leaves(resumed_vars)):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# main.py as a user runs it


def main_py(*args, extra_env=None, **kwargs):
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", **(extra_env or {}))
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def demo_flags(data_dir, workdir, *extra, sources="both", probe=True):
  """main.py's flags for the demo pretraining in batches of 8. sources='images' compiles one
  step instead of two, probe=False turns the k-NN probe off (what the tests of saving, resuming
  and stopping need)."""
  names = ("images", "videos") if sources == "both" else (sources,)
  # The probe on 200 validation images, its neighbours from 200 others rather than the 2000
  # training images: it runs at the start and the end of every run, and only its plumbing is
  # tested here.
  knn = (["--config.evals.knn.source.split=validation[:200]",
          "--config.evals.knn.train_source.split=validation[200:400]"] if probe
         else ["--config.evals.knn.every_steps=0"])
  return [f"--config=configs/demo_omni.py:sources={sources}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}",
          *[f"--config.data.sources.{name}.batch_size=8" for name in names], *knn, *extra]


def test_main_writes_metrics_checkpoints_and_pictures(demo_data_dir, tmp_path):
  proc = main_py(*demo_flags(demo_data_dir, tmp_path, "--config.total_steps=4",
                             "--config.log_every_steps=1", "--config.recon_every_steps=2",
                             "--config.checkpoint.every_steps=2"))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Training finished at step 4 of 4" in out
  with open(tmp_path / "metrics.jsonl") as f:
    entries = [json.loads(line) for line in f]
  records = [r for r in entries if "eval" not in r]
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  # The demo's k-NN probe of the encoder, at the start and at the end.
  probes = [r for r in entries if r.get("eval") == "knn"]
  assert [r["step"] for r in probes] == [0, 4]
  assert all(r["knn/examples"] == 200 and 0 <= r["knn/knn_top1"] <= 1 for r in probes)
  assert "eval knn: step 0" in out and "corrupt records: none" in out
  for key in ("step", "modality", "loss", "lr", "grad_norm", "samples_per_sec", "step_time",
              "data_wait_time", "mfu"):
    assert key in records[0]
  assert all(np.isfinite(r["loss"]) and r["samples_per_sec"] > 0 for r in records)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  pictures = sorted(os.listdir(tmp_path / "reconstructions"))
  # At every picture step, one picture per modality seen so far (an image PNG; a video GIF and
  # a frame strip).
  for step in (2, 4):
    for modality in {r["modality"] for r in records if r["step"] <= step}:
      suffix = ".png" if modality == "images" else ".gif"
      assert f"step{step:08d}_{modality}{suffix}" in pictures, pictures
  assert os.listdir(tmp_path / "tensorboard")


def saved_params(workdir):
  _, variables = checkpoint_lib.load_model(str(workdir))
  return jax.tree.leaves(variables)


def test_ctrl_c_saves_and_the_run_resumes_exactly(demo_data_dir, tmp_path):
  """Ctrl-C (SIGINT) mid-run saves; the resumed run (main.py again) reaches the parameters and
  losses of a run that was never stopped, step for step. SIGTERM takes the same path: the
  two-process test below sends it."""
  workdir, straight = tmp_path / "signalled", tmp_path / "straight"
  flags = ("--config.total_steps=100000", "--config.log_every_steps=1",
           "--config.recon_every_steps=0", "--config.checkpoint.every_steps=100000")
  proc = main_py(*demo_flags(demo_data_dir, workdir, *flags, sources="images", probe=False))
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert "Preempted: saved step" in out and "Traceback" not in err
  saved_step = checkpoint_lib.TrainCheckpointer(workdir).latest_step()
  assert saved_step >= 3
  outputs = []
  procs = [main_py(*demo_flags(demo_data_dir, run_dir, *flags, f"--stop_at_step={saved_step + 2}",
                               sources="images", probe=False))
           for run_dir in (workdir, straight)]  # at once: each is mostly start-up
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    outputs.append(out)
  assert f"Resumed at step {saved_step}" in outputs[0]
  assert "eval knn: knn on omnimae_demo/images[validation] off (every_steps=0)" in outputs[0]
  assert not any("eval" in json.loads(line) for line in (workdir / "metrics.jsonl").open())
  assert f"stopped (--stop_at_step) at step {saved_step + 2}" in outputs[1]
  assert losses_by_step(workdir) == losses_by_step(straight)  # one entry per step, same losses
  assert max(losses_by_step(workdir)) == saved_step + 2
  for a, b in zip(saved_params(workdir), saved_params(straight)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_in_a_single_process_stops_the_loop_at_the_next_step():
  from omnimae_jax.train import preemption  # noqa: PLC0415
  handler = preemption.PreemptionHandler()
  stopped_loader = []
  handler.on_signal(lambda: stopped_loader.append(True))
  try:
    assert not handler.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert handler.should_stop(2) and stopped_loader == [True]
  finally:
    handler.restore()
  assert signal.getsignal(signal.SIGTERM) is not handler._handle  # pylint: disable=protected-access


def free_port():
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def run_two_processes(data_dir, workdir, total_steps, *extra):
  """main.py as two JAX processes (one CPU device each) joined by jax.distributed."""
  address = f"localhost:{free_port()}"
  procs = [main_py(*demo_flags(data_dir, workdir, f"--config.total_steps={total_steps}", *extra,
                               "--config.log_every_steps=1", "--config.recon_every_steps=0",
                               "--config.checkpoint.every_steps=3",
                               f"--coordinator_address={address}", "--num_processes=2",
                               f"--process_id={index}", sources="images", probe=False),
                   extra_env={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"})
           for index in range(2)]
  outputs = [proc.communicate(timeout=300) for proc in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def test_sigterm_to_one_of_two_processes_stops_both_and_both_resume(demo_data_dir, tmp_path):
  address = f"localhost:{free_port()}"
  procs = [main_py(*demo_flags(demo_data_dir, tmp_path, "--config.total_steps=100000",
                               "--config.log_every_steps=1", "--config.recon_every_steps=0",
                               "--config.checkpoint.every_steps=100000",
                               f"--coordinator_address={address}", "--num_processes=2",
                               f"--process_id={index}", sources="images", probe=False),
                   extra_env={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"})
           for index in range(2)]
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)  # a preemption notice that reaches one host only
  outputs = [proc.communicate(timeout=180) for proc in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  saved = checkpoint_lib.TrainCheckpointer(tmp_path).latest_step()
  assert saved is not None
  assert "Starting at step 0" in outputs[0][0] and "on 2 device(s)" in outputs[0][0]
  assert f"Preempted: saved step {saved}" in outputs[0][0]
  # Both processes resume from the common checkpoint.
  resumed = run_two_processes(demo_data_dir, tmp_path, 100000, f"--stop_at_step={saved + 2}")
  assert f"Resumed at step {saved}" in resumed[0]
  assert f"stopped (--stop_at_step) at step {saved + 2}" in resumed[0]
  assert "stopped" not in resumed[1]  # only process 0 reports
  records = losses_by_step(tmp_path)
  assert sorted(records) == list(range(1, saved + 3))  # one entry per step, by process 0
  assert all(np.isfinite(loss) for _, loss in records.values())
  assert checkpoint_lib.TrainCheckpointer(tmp_path).latest_step() == saved + 2


def test_vitb_without_prepared_data_says_how_to_prepare(tmp_path):
  proc = main_py("--config=configs/vitb_omni.py", f"--workdir={tmp_path / 'w'}",
                 f"--config.data.data_dir={tmp_path / 'empty'}")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  assert "Traceback" not in err
  assert "imagenet2012" in err and "prepare" in err


# ---------------------------------------------------------------------------------------------
# Bad configurations fail before anything compiles


@pytest.mark.parametrize("changes,match", [
    ({"data.sources.images.mask_ratio": 1.5}, "mask_ratio"),
    ({"data.sources.videos.mask_ratio": 0.0}, "mask_ratio"),
    ({"data.sources.images.batch_size": 12}, "batch_size"),
    ({"data.sources.images.image_size": 60}, "image_size"),
    ({"sharding": "zero3"}, "sharding"),
    ({"mesh": (("data", 3), ("model", -1))}, "mesh"),
    ({"data.sources.videos.num_frames": 16}, "num_frames"),
    ({"log_every_steps": 0}, "log_every_steps"),
    ({"optim.schedule": "linear"}, "optim.schedule"),
])
def test_bad_config_is_a_clear_error(demo_data_dir, tmp_path, changes, match):
  config = small_config(demo_data_dir, **changes)
  with pytest.raises(loop.ConfigError, match=match):
    run(config, tmp_path)


def finite_params(workdir):
  restored = checkpoint_lib.load_model(str(workdir))[1]
  return all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(restored))


def test_huge_but_finite_parameters_are_not_kept_as_good(demo_data_dir, tmp_path):
  # lr 1e30 sends the parameters to ~1e30 after the first update (finite, saved at step 1); the
  # second step's loss, computed from them, overflows: checkpoint 1 would stop every resume.
  config = small_config(demo_data_dir, "images", total_steps=4, **{"optim.lr": 1e30,
                                                         "optim.warmup_fraction": 0.0,
                                                         "checkpoint.every_steps": 1})
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 2 on '(images|videos)'.*"
                     r"checkpoint of step 1.*moved.*No good checkpoint"):
    run(config, tmp_path)
  assert os.listdir(tmp_path / "checkpoints") == []
  assert os.listdir(tmp_path / "rejected_checkpoints") == ["1"]  # kept for inspection


@pytest.mark.parametrize("bad_lr,bad_step", [(1e39, 4), (1e30, 5)])
def test_an_overflowing_update_on_a_save_step_never_poisons_the_last_good_checkpoint(
    demo_data_dir, tmp_path, bad_lr, bad_step):
  """1e39 is inf in float32: step 4's update is not finite (its own save is skipped). 1e30 gives
  finite ~1e30 parameters, saved at step 4, whose loss overflows at step 5 (checkpoint 4 is moved
  aside). Either way the checkpoint called good is finite and a sane lr trains on from it."""
  sane = small_config(demo_data_dir, "images", total_steps=6,
                      **{"checkpoint.every_steps": 1, "optim.warmup_fraction": 0.0})
  run(sane, tmp_path, stop_at_step=3)
  bad = small_config(demo_data_dir, "images", total_steps=6,
                     **{"checkpoint.every_steps": 1, "optim.warmup_fraction": 0.0,
                        "optim.lr": bad_lr})
  with pytest.raises(loop.NonFiniteLossError,
                     match=rf"at step {bad_step} .*last good checkpoint is step 3"):
    run(bad, tmp_path, allow_config_change=True)
  assert checkpoint_lib.TrainCheckpointer(tmp_path).latest_step() == 3
  assert finite_params(tmp_path)
  resumed = run(sane, tmp_path, allow_config_change=True)
  assert resumed["step"] == 6 and all(np.isfinite(v) for v in resumed["losses"].values())
  assert finite_params(tmp_path)


def test_keep_zero_is_refused_before_anything_is_deleted(demo_data_dir, tmp_path):
  run(small_config(demo_data_dir, "images", total_steps=1), tmp_path)
  with pytest.raises(loop.ConfigError, match="checkpoint.keep"):
    run(small_config(demo_data_dir, "images", total_steps=2, **{"checkpoint.keep": 0}), tmp_path)
  assert os.listdir(tmp_path / "checkpoints") == ["1"]


def event_steps(workdir, tag):
  from omnimae_jax.data._tf import tf
  from tensorboard.compat.proto import event_pb2

  steps = []
  for name in sorted(os.listdir(workdir / "tensorboard")):
    for record in tf.data.TFRecordDataset(str(workdir / "tensorboard" / name)):
      event = event_pb2.Event.FromString(record.numpy())
      steps += [event.step for value in event.summary.value if value.tag == tag]
  return steps


def test_history_after_a_kill_has_one_entry_per_step(demo_data_dir, tmp_path):
  """A kill after steps 4-6 were logged but before checkpoint 6 existed: the resumed run rewrites
  metrics.jsonl and the TensorBoard events, so each step appears once."""
  config = small_config(demo_data_dir, "images")  # checkpoints at 3 and 6, a log every step
  run(config, tmp_path)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "loss": 0.1')  # a line cut short by the kill
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  run(config, tmp_path)
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [1, 2, 3, 4, 5, 6]
  assert sorted(event_steps(tmp_path, "loss")) == [1, 2, 3, 4, 5, 6]


def test_resume_on_another_process_count_warns_or_refuses(demo_data_dir, tmp_path):
  config = small_config(demo_data_dir)
  meta = {"process_count": 4}
  stream = io.StringIO()
  with jax.default_device(jax.devices()[0]):
    loop.check_process_count(meta, config, stream)
  assert "written by 4 process(es)" in stream.getvalue()
  with config.unlocked():
    config.data.on_process_count_change = "error"
  with pytest.raises(checkpoint_lib.CheckpointError, match="on_process_count_change"):
    loop.check_process_count(meta, config, io.StringIO())
  loop.check_process_count({"process_count": 1}, config, io.StringIO())  # same count: silent


def test_workdir_of_another_model_is_refused(demo_data_dir, tmp_path):
  run(small_config(demo_data_dir, "images", total_steps=1), tmp_path)
  other = small_config(demo_data_dir, "images", total_steps=2, **{"model.num_heads": 4})
  with pytest.raises(checkpoint_lib.CheckpointError, match="num_heads"):
    run(other, tmp_path)
