"""Launching: the arguments main.py gives jax.distributed from a SLURM or TPU environment, the
backend guard, the compilation cache, multi-slice meshes, and the launch scripts themselves
(syntax, the SLURM time-limit requeue with stand-ins for srun and scontrol, the TPU commands)."""
import os
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

import main
from omnimae_jax.train import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def slurm_env(nodes, tasks, **extra):
  return {"SLURM_JOB_ID": "42", "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(nodes),
          "SLURM_PROCID": "0", "SLURM_LOCALID": "0", **extra}


def test_one_slurm_task_per_node_drives_every_visible_gpu():
  env = slurm_env(4, 4, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
  assert main.distributed_arguments(env) == {"local_device_ids": list(range(8))}
  # Without cgroups SLURM names the node's physical GPUs, which CUDA renumbers 0..n-1.
  env = slurm_env(2, 2, CUDA_VISIBLE_DEVICES="4,5,6,7")
  assert main.distributed_arguments(env) == {"local_device_ids": [0, 1, 2, 3]}
  env = slurm_env(2, 2, SLURM_STEP_GPUS="2,3")  # no CUDA_VISIBLE_DEVICES: physical ids
  assert main.distributed_arguments(env) == {"local_device_ids": [2, 3]}
  assert main.distributed_arguments(slurm_env(2, 2, SLURM_GPUS_ON_NODE="8")) == {
      "local_device_ids": list(range(8))}


def test_other_slurm_layouts_keep_jax_defaults():
  # One task per GPU: JAX's own choice (GPU number SLURM_LOCALID) is right.
  assert main.distributed_arguments(slurm_env(2, 16, CUDA_VISIBLE_DEVICES="0,1")) == {}
  env = slurm_env(2, 2, CUDA_VISIBLE_DEVICES="0,1", JAX_LOCAL_DEVICE_IDS="1")
  assert main.distributed_arguments(env) == {}  # the user's choice; JAX reads it
  assert main.distributed_arguments(slurm_env(1, 1, CUDA_VISIBLE_DEVICES="0,1")) is None


def test_tpu_needs_the_explicit_switch():
  # A TPU VM's environment is no evidence of a pod: only --distributed joins the workers.
  assert main.distributed_arguments({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) is None
  assert main.distributed_arguments({}, distributed=True) == {}
  assert main.distributed_arguments({"JAX_COORDINATOR_ADDRESS": "h:1"}) == {}
  assert main.distributed_arguments({}, coordinator_address="10.0.0.1:1234", num_processes=2,
                                    process_id=1) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
  assert main.distributed_arguments({}) is None


def test_backend_guard_and_compilation_cache():
  assert main.backend_error(None, "cpu", []) == ""
  assert main.backend_error("gpu", "gpu", []) == ""
  assert main.backend_error("gpu", "cpu", ["cpu:0"]).startswith(
      "--require_backend=gpu but JAX runs on 'cpu'")
  assert main.compilation_cache_dir("auto", "gs://b/w", {}) == "gs://b/w/compile_cache"
  assert main.compilation_cache_dir("auto", "rel/w", {}) == os.path.join(
      os.getcwd(), "rel/w/compile_cache")
  assert main.compilation_cache_dir("auto", "w", {"JAX_COMPILATION_CACHE_DIR": "/c"}) == "/c"
  assert main.compilation_cache_dir("off", "w", {}) == ""
  assert main.compilation_cache_dir("/cache", "w", {}) == "/cache"


def test_bad_require_backend_is_a_flag_error():
  code, message = main.check_command_line(["main.py", "--config=configs/demo_omni.py",
                                           "--require_backend=cuda"])
  assert code == 2 and "require_backend" in message


# ---------------------------------------------------------------------------------------------
# Multi-slice meshes


def fake_slices(num_slices, per_slice):
  """Devices as mesh_utils sees them on a multi-slice system (ids as on TPU: slice-major)."""
  return [types.SimpleNamespace(id=s * 1000 + i, slice_index=s, platform="fake",
                                device_kind="fake", process_index=s)
          for s in range(num_slices) for i in range(per_slice)]


def test_hybrid_mesh_puts_data_across_slices_and_model_inside_one():
  devices = fake_slices(2, 4)
  axes = (("data", -1), ("model", 2))
  array = sharding.hybrid_device_array(axes, sharding.mesh_sizes(axes, 8), devices, 2)
  assert array.shape == (4, 2)
  slices = np.vectorize(lambda d: d.slice_index)(array)
  np.testing.assert_array_equal(slices, [[0, 0], [0, 0], [1, 1], [1, 1]])  # slice-major data
  swapped = (("model", 2), ("data", -1))
  array = sharding.hybrid_device_array(swapped, sharding.mesh_sizes(swapped, 8), devices, 2)
  np.testing.assert_array_equal(np.vectorize(lambda d: d.slice_index)(array),
                                [[0, 0, 1, 1], [0, 0, 1, 1]])


def test_mesh_that_does_not_fit_the_slices_names_the_field():
  with pytest.raises(ValueError, match=r"mesh=.*does not fit 2 slices of 4 devices.*'model' "
                                       r"\(8\)"):
    sharding.make_mesh((("data", 1), ("model", 8)), fake_slices(2, 4))
  with pytest.raises(ValueError, match=r"mesh=.*does not fit 8 devices"):
    sharding.make_mesh((("data", 3), ("model", -1)), fake_slices(2, 4))


def test_single_slice_cpu_mesh_is_unchanged():
  mesh = sharding.make_mesh((("data", -1), ("model", 2)))
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert sharding.num_slices(jax.devices()) == 1


TPU_SCRIPT = """
import jax, jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec
from omnimae_jax.train import sharding
topology = topologies.get_topology_desc(
    platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
    chips_per_host_bounds=(2, 2, 1), num_slices=2, wrap=(False,) * 3)
mesh = sharding.make_mesh((("data", -1), ("model", 2)), topology.devices)
rows = [[d.slice_index for d in row] for row in mesh.devices]
batch = jax.ShapeDtypeStruct((8, 64), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("data", "model")))
compiled = jax.jit(lambda x: (x * 2).sum(axis=0)).lower(batch).compile()
print("SLICES", rows, "COMPILED", type(compiled).__name__)
"""


def test_multislice_mesh_on_compile_only_tpu_devices():
  # libtpu comes with `make test` (requirements-test.txt); without it this fails, never skips.
  env = {**os.environ, "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
         "PYTHONPATH": os.pathsep.join([ROOT] + sys.path)}
  env.pop("JAX_PLATFORMS", None)
  result = subprocess.run([sys.executable, "-c", TPU_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "SLICES [[0, 0], [0, 0], [1, 1], [1, 1]] COMPILED" in result.stdout


# ---------------------------------------------------------------------------------------------
# Launch scripts


@pytest.mark.parametrize("script", sorted(os.listdir(LAUNCH)))
def test_launch_script_syntax(script):
  result = subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr


def test_gpu_tuning_flags_parse_in_this_jaxlib():
  """XLA aborts at start on an unknown XLA_FLAGS entry; the GPU flags parse on CPU too."""
  probe = f"{sys.executable} -c 'import jax; jax.numpy.zeros(1).block_until_ready()'"

  def run(extra_flags=""):
    env = {**os.environ, "OMNIMAE_GPU_TUNING": "1", "XLA_FLAGS": extra_flags}
    return subprocess.run(["bash", "-c", f"source {LAUNCH}/gpu_tuning.sh && "
                           "echo FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION && " + probe],
                          env=env, capture_output=True, text=True, timeout=120)

  result = run()
  assert result.returncode == 0, result.stderr[-2000:]
  assert "FRACTION=0.9" in result.stdout
  assert run("--xla_gpu_no_such_flag=true").returncode != 0  # the check can fail


FAKE_SRUN = """#!/bin/bash
# srun stand-in: a "training" that saves on SIGTERM and exits 0.
echo "$@" > "$FAKE_DIR/srun_args"
sleep 60 &
trap 'echo TERM > "$FAKE_DIR/srun_signal"; kill $!; exit 0' TERM
touch "$FAKE_DIR/srun_started"
wait $!
"""


def test_slurm_time_limit_saves_then_requeues(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" > "$FAKE_DIR/scontrol_args"\n')
  for tool in ("srun", "scontrol"):
    os.chmod(bin_dir / tool, 0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
         "SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": ROOT}
  proc = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"),
                           "configs/vitb_omni.py", "/shared/w", "--config.seed=1"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 30
  while not (tmp_path / "srun_started").exists() and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends before the limit
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert (tmp_path / "srun_signal").read_text().strip() == "TERM"
  assert (tmp_path / "scontrol_args").read_text().strip() == "requeue 42"
  args = (tmp_path / "srun_args").read_text()
  assert "--require_backend=gpu" in args and "--workdir=/shared/w --config.seed=1" in args


def test_slurm_normal_end_does_not_requeue(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")
  (bin_dir / "scontrol").write_text('#!/bin/bash\ntouch "$FAKE_DIR/requeued"\n')
  for tool in ("srun", "scontrol"):
    os.chmod(bin_dir / tool, 0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
         "SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": ROOT}
  result = subprocess.run(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "c.py", "w"],
                          env=env, capture_output=True, text=True, timeout=30)
  assert result.returncode == 0 and not (tmp_path / "requeued").exists()


def test_tpu_launcher_queues_spot_slices_and_passes_the_switch():
  env = {**os.environ, "DRY_RUN": "1", "SLICES": "2", "OMNIMAE_GIT_URL": "https://git.example/r"}
  result = subprocess.run(
      ["bash", os.path.join(LAUNCH, "tpu_pod.sh"), "qr", "us-east5-a", "v5litepod-16",
       "configs/vitb_omni.py", "gs://bucket/w", "--config.data.data_dir=gs://bucket/tfds"],
      env=env, capture_output=True, text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  create, setup, train = result.stdout.strip().splitlines()
  assert "queued-resources create qr" in create and "--spot" in create
  assert "--node-count=2" in create and "--accelerator-type=v5litepod-16" in create
  assert "--node=all --worker=all" in train and "jax[tpu]==0.10.2" in setup
  assert ("main.py --require_backend=tpu --distributed --config=configs/vitb_omni.py "
          "--workdir=gs://bucket/w --config.data.data_dir=gs://bucket/tfds") in train
