"""Ahead-of-time compilation for an accelerator this machine does not have: targets, their
compile-only devices, and a config's real train steps compiled on ShapeDtypeStructs.

Nothing is allocated or run: each step is lowered for the target's devices and compiled by the
target's own compiler, and `compiled.memory_analysis()` tells the per-device memory XLA plans (on
TPU an out-of-memory program is a compile error). The command is `benchmark compile`
(omnimae_jax/train/aot_compile.py).

Targets: [SLICESx]GENERATION:TOPOLOGY, e.g. v5e:4x4 (16 chips), v5e:16x16, v4:2x2x1, v5p:4x4x4,
v6e:4x4, 2xv5e:4x4 (two slices); h100:2x8 (2 hosts of 8 GPUs). TPU targets need libtpu (in
requirements-test.txt: `make test` installs it; it loads on a CPU-only machine); GPU targets need jax-cuda12-plugin and
jax-cuda12-pjrt (optional, not in requirements.txt).
"""
import dataclasses
import math
import os
import re
import time

GIB = 2**30
# generation -> (libtpu chip config, HBM GiB per device). Megacore chips (v4, v5p) are one
# device of two cores, so the per-device memory is the chip's.
TPU_GENERATIONS = {"v4": ("megacore", 32), "v5p": ("megacore", 95), "v5e": ("default", 16),
                   "v6e": ("default", 32)}
TPU_DIMS = {"v4": 3, "v5p": 3, "v5e": 2, "v6e": 2}
GPU_GENERATIONS = {"h100": 80}
# Chips per TPU host along (x, y, z): what libtpu's topologies are laid out in.
CHIPS_PER_HOST = (2, 2, 1)
_TARGET = re.compile(r"^(?:(?P<slices>\d+)x)?(?P<generation>[a-z0-9]+):(?P<dims>\d+(?:x\d+)*)$")
ALLOWED_TARGETS = ("[SLICESx]GENERATION:TOPOLOGY with GENERATION in "
                   f"{', '.join(TPU_GENERATIONS)} (TPU, e.g. v5e:4x4, v4:2x2x1, 2xv5e:4x4) or "
                   f"{', '.join(GPU_GENERATIONS)} (HOSTSxGPUS, e.g. h100:2x8)")


class TargetError(ValueError):
  """A bad --target (or a config that does not fit it); raised before anything compiles."""


@dataclasses.dataclass(frozen=True)
class Target:
  spec: str  # as given on the command line
  generation: str  # v5e, h100, ...
  dims: tuple  # TPU: chips along x, y(, z); GPU: (hosts, GPUs per host)
  num_slices: int = 1

  @property
  def is_tpu(self) -> bool:
    return self.generation in TPU_GENERATIONS

  @property
  def hbm_bytes(self) -> int:
    gib = TPU_GENERATIONS[self.generation][1] if self.is_tpu else GPU_GENERATIONS[self.generation]
    return gib * GIB


def parse_target(spec: str) -> Target:
  """'2xv5e:4x4' -> Target; a TargetError names --target and what is allowed."""
  match = _TARGET.match(spec.strip().lower())
  if not match:
    raise TargetError(f"--target={spec!r} is not a target; allowed: {ALLOWED_TARGETS}")
  generation = match["generation"]
  dims = tuple(int(d) for d in match["dims"].split("x"))
  slices = int(match["slices"] or 1)
  if generation not in TPU_GENERATIONS and generation not in GPU_GENERATIONS:
    raise TargetError(f"--target={spec!r}: unknown accelerator {generation!r}; allowed: "
                      f"{ALLOWED_TARGETS}")
  wanted = TPU_DIMS.get(generation, 2)
  if len(dims) != wanted or min(dims) < 1 or slices < 1:
    shape = "x".join("N" * wanted)
    raise TargetError(f"--target={spec!r}: {generation} topologies are {shape} with sizes >= 1 "
                      f"(e.g. {generation}:{'x'.join(['2'] * wanted)})")
  if generation in GPU_GENERATIONS and slices != 1:
    raise TargetError(f"--target={spec!r}: slices are a TPU notion; for GPUs give "
                      f"{generation}:HOSTSxGPUS")
  return Target(spec, generation, dims, slices)


def target_devices(target: Target) -> list:
  """Compile-only devices of the target (no accelerator needed); TargetError if the target's
  compiler is missing or rejects the topology."""
  return _tpu_devices(target) if target.is_tpu else _gpu_devices(target)


def _tpu_devices(target: Target) -> list:
  import importlib.util  # noqa: PLC0415

  if importlib.util.find_spec("libtpu") is None:
    raise TargetError(f"--target={target.spec}: TPU targets need libtpu; install it with "
                      "pip install 'jax[tpu]==0.10.2' (it works on a CPU-only machine)")
  # No metadata server on a non-TPU machine; another process (a test, a run) may hold libtpu.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # else libtpu logs an error
  import jax  # noqa: PLC0415
  from jax.experimental import topologies  # noqa: PLC0415

  dims = target.dims + (1,) * (3 - len(target.dims))
  chip_config = TPU_GENERATIONS[target.generation][0]
  # Full cubes of v4/v5p are tori (wraparound links); smaller slices and v5e/v6e are not.
  torus = chip_config == "megacore" and all(d % 4 == 0 for d in dims)
  try:
    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{target.generation}:{'x'.join(map(str, target.dims))}",
        chip_config_name=chip_config,
        chips_per_host_bounds=tuple(min(d, b) for d, b in zip(dims, CHIPS_PER_HOST)),
        num_slices=target.num_slices, wrap=(torus,) * 3)
  except jax.errors.JaxRuntimeError as error:
    raise TargetError(f"--target={target.spec}: libtpu rejects this topology: "
                      f"{_first_line(error)}; allowed: {ALLOWED_TARGETS}") from error
  return list(topology.devices)


# What XLA's GPU compiler needs to know of a GPU it does not see (GpuTargetConfigProto): the
# public figures of an H100 SXM 80GB (sm_90, 132 SMs, 50 MiB L2, 3.35 TB/s).
GPU_TARGET_CONFIGS = {"h100": """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929216512 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}


def _gpu_devices(target: Target) -> list:
  import importlib.util  # noqa: PLC0415

  if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
    raise TargetError(f"--target={target.spec}: GPU targets need the CUDA plugin (not in "
                      "requirements.txt): pip install jax-cuda12-plugin==0.10.2 "
                      "jax-cuda12-pjrt==0.10.2 (no GPU or CUDA driver needed to compile)")
  # Set before the plugin loads: no driver to check here, and Triton GEMM fusions need
  # autotuning on a real GPU, which a compile-only client cannot do.
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_enable_triton_gemm" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()
  import jax  # noqa: PLC0415
  from jax.experimental import topologies  # noqa: PLC0415

  hosts, per_host = target.dims
  try:
    topology = topologies.get_topology_desc(
        platform="cuda", topology_name=target.generation, topology=f"1x{hosts}x{per_host}",
        target_config=GPU_TARGET_CONFIGS[target.generation])
  except jax.errors.JaxRuntimeError as error:
    raise TargetError(f"--target={target.spec}: the CUDA plugin rejects it: "
                      f"{_first_line(error)}") from error
  return list(topology.devices)


def _first_line(error) -> str:
  return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


@dataclasses.dataclass(frozen=True)
class SourceShape:
  """The static facts of a source that shape its step (what a pipeline.Source has), without
  opening its dataset."""
  name: str
  cfg: object  # the source's ConfigDict
  grid: tuple  # (T', H', W') tokens per sample
  num_visible: int  # 0 for a classification source (no mask)

  @property
  def modality(self):
    return self.cfg.modality


def source_shapes(config, patch_size) -> dict:
  from omnimae_jax.data import config as data_config, masking  # noqa: PLC0415

  shapes = {}
  for name, cfg in config.data.sources.items():
    data_config.validate_source(name, cfg, patch_size)
    grid = data_config.token_grid(cfg, patch_size)
    classifies = cfg.mask_kind == data_config.NO_MASK
    num_visible = 0 if classifies else masking.num_visible(cfg.mask_kind, grid, cfg.mask_ratio)
    shapes[name] = SourceShape(name, cfg, tuple(grid), num_visible)
  return shapes


def abstract_batch(source: SourceShape, batch_size: int, batch_sharding) -> dict:
  """ShapeDtypeStructs of the global batch the loader hands the step (the pipeline's keys and
  the dtypes they have on device: labels are int32 once JAX has them)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  cfg = source.cfg
  frames = (cfg.num_frames,) if source.modality == "video" else ()

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=batch_sharding)

  batch = {"pixels": spec((*frames, cfg.image_size, cfg.image_size, 3), jnp.uint8),
           "label": spec((), jnp.int32), "valid": spec((), jnp.bool_)}
  if source.num_visible:  # pretraining: the mask and the visible tokens' indices
    batch["mask"] = spec((math.prod(source.grid),), jnp.bool_)
    batch["keep_idx"] = spec((source.num_visible,), jnp.int32)
  return batch


@dataclasses.dataclass
class CompileResult:
  batch_size: int  # global
  seconds: float
  memory: object = None  # CompiledMemoryStats; None when the compiler ran out of memory
  error: str = ""  # the compiler's out-of-memory message

  def peak_bytes(self) -> int:
    m = self.memory
    if m is None:
      return 0
    planned = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return max(getattr(m, "peak_memory_in_bytes", 0), planned + m.temp_size_in_bytes)

  def fits(self, hbm_bytes: int) -> bool:
    return self.memory is not None and self.peak_bytes() <= hbm_bytes


def is_out_of_memory(error) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def lower_step(step_fn, abstract_state, batch, *, mesh, strategy):
  """Lowers the loop's step for the devices its shardings name.

  `step_fn` is make_train_step's jit inside steps.with_mesh_rules (which enters the mesh and the
  logical rules when called): the jit's own `lower` runs inside the same wrapper, so the step is
  traced exactly as the loop traces it, shardings and donation included.
  """
  from omnimae_jax.train import steps as steps_lib  # noqa: PLC0415

  jitted = step_fn.__wrapped__  # set by functools.wraps in with_mesh_rules (one level only)
  return steps_lib.with_mesh_rules(jitted.lower, mesh, strategy)(abstract_state, batch)


def compile_step(step_fn, abstract_state, batch, batch_size, *, mesh, strategy) -> CompileResult:
  """lower_step, then the target's compiler; an out-of-memory compile is a result, not an error."""
  import jax  # noqa: PLC0415

  started = time.perf_counter()
  try:
    compiled = lower_step(step_fn, abstract_state, batch, mesh=mesh, strategy=strategy).compile()
  except jax.errors.JaxRuntimeError as error:
    if not is_out_of_memory(error):
      raise
    return CompileResult(batch_size, time.perf_counter() - started, None, _first_line(error))
  return CompileResult(batch_size, time.perf_counter() - started, compiled.memory_analysis())


def largest_fitting(fits, start: int, limit: int = 1 << 16) -> int:
  """The largest n in [1, limit] with fits(n) (0 if none), for fits monotone in n: doubling
  from `start` until it fails, then bisection between the last fit and the first failure."""
  low, high = 0, None  # fits(low) holds (0: trivially); fits(high) fails
  n = max(start, 1)
  while n <= limit:
    if not fits(n):
      high = n
      break
    low, n = n, n * 2
  if high is None:
    return low
  while high - low > 1:
    middle = (low + high) // 2
    if fits(middle):
      low = middle
    else:
      high = middle
  return low


@dataclasses.dataclass
class Plan:
  """What a source's compile needs: the config's objects, built once on the target's mesh."""
  config: object
  mode: object
  model: object
  tx: object
  schedule: object
  mesh: object
  abstract_state: object  # ShapeDtypeStructs carrying their shardings
  shardings: object
  sources: dict  # name -> SourceShape


def apply_overrides(config, overrides):
  """`field.path=value` items onto the (locked) config; a value is a Python literal or a bare
  string. An unknown field or a value of the wrong type is a TargetError naming --set."""
  import ast  # noqa: PLC0415

  for item in overrides:
    path, equals, text = item.partition("=")
    if not equals:
      raise TargetError(f"--set {item!r}: expected FIELD=VALUE, e.g. model.compute_dtype=float32")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = {"true": True, "false": False}.get(text.lower(), text)
    *groups, key = path.split(".")
    node = config
    try:
      for group in groups:
        node = node[group]
      with config.unlocked():  # unlocked for assignment only: the key must exist already
        if key not in node:
          raise KeyError(key)
        node[key] = value
    except (KeyError, TypeError, AttributeError) as error:
      raise TargetError(f"--set {item!r}: {type(error).__name__}: {error}") from error
  return config


def set_batch(config, batch_per_device: int, num_devices: int):
  """Every source's global batch = batch_per_device x devices (0 keeps the config's)."""
  if batch_per_device:
    with config.unlocked():
      for source in config.data.sources.values():
        source.batch_size = batch_per_device * num_devices
  return config


def make_plan(config, devices) -> Plan:
  """Mesh, model, optimizer and abstract sharded state of `config` on the target's devices;
  a TargetError (one line) when the config or its mesh does not fit them."""
  from omnimae_jax.train import loop, optim, sharding, state as state_lib  # noqa: PLC0415
  from omnimae_jax.train.config_checks import ConfigError, check_config  # noqa: PLC0415

  try:
    check_config(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    loop.validate(config, mesh)
  except (ConfigError, ValueError) as error:
    raise TargetError(f"on {len(devices)} device(s): {error}") from error
  mode = loop.MODES[config.mode]
  model = state_lib.build_model(config.model, mode.model_kind)
  total_steps = max(config.total_steps or 1000, 1)  # the schedule's length changes no shape
  tx = optim.make_optimizer(config.optim, total_steps)
  schedule = optim.learning_rate_schedule(config.optim, total_steps)
  abstract, shardings = state_lib.state_shardings(model, tx, mesh, config.sharding)
  return Plan(config, mode, model, tx, schedule, mesh,
              state_lib.with_shardings(abstract, shardings), shardings,
              source_shapes(config, model.config.patch_size))


def selected_sources(plan: Plan, names: str) -> list:
  """The source names of a --sources flag (comma-separated; empty: all of the plan's), checked."""
  selected = [name for name in names.split(",") if name] or list(plan.sources)
  unknown = sorted(set(selected) - set(plan.sources))
  if unknown:
    raise TargetError(f"--sources: {unknown} not in the config; allowed: {sorted(plan.sources)}")
  return selected


def source_step(plan: Plan, name: str, batch_size: int):
  """(step_fn, abstract batch) of source `name`'s train step for a global batch of `batch_size`."""
  from omnimae_jax.train import loop, sharding  # noqa: PLC0415

  source = plan.sources[name]
  step_fn = loop.make_source_step(plan.config, plan.mode, plan.model, plan.tx, plan.schedule,
                                  source, plan.mesh, plan.shardings)
  return step_fn, abstract_batch(source, batch_size, sharding.batch_sharding(plan.mesh))


def lower_source(plan: Plan, name: str, batch_size: int):
  """Source `name`'s train step lowered (jax.stages.Lowered: its text shows the kernels it calls)."""
  step_fn, batch = source_step(plan, name, batch_size)
  return lower_step(step_fn, plan.abstract_state, batch, mesh=plan.mesh,
                    strategy=plan.config.sharding)


def compile_source(plan: Plan, name: str, batch_size: int) -> CompileResult:
  """Compiles source `name`'s train step for a global batch of `batch_size` samples."""
  step_fn, batch = source_step(plan, name, batch_size)
  return compile_step(step_fn, plan.abstract_state, batch, batch_size, mesh=plan.mesh,
                      strategy=plan.config.sharding)
