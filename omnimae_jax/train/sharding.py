"""The device mesh, and the only place where logical axis names meet mesh axes.

Strategies (config.sharding):
- 'dp':      parameters and optimizer state replicated; the batch split over 'data'.
- 'fsdp':    parameters and optimizer state split along their embedding axis over 'data' too
             (ZeRO-3 style); XLA gathers each layer's weights when it needs them.
- 'fsdp_tp': fsdp, plus attention heads and MLP hidden units split over 'model' (Megatron-style
             tensor parallelism).
The batch is always split over 'data' (and 'model' holds copies of it).
"""
from typing import List, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"
_BATCH = [("batch", DATA)]
RULES = {
    "dp": _BATCH,
    "fsdp": _BATCH + [("embed", DATA), ("decoder_embed", DATA)],
    "fsdp_tp": _BATCH + [("embed", DATA), ("decoder_embed", DATA), ("mlp", MODEL),
                         ("heads", MODEL), ("classes", MODEL)],
}


def logical_rules(strategy: str):
  if strategy not in RULES:
    raise ValueError(f"sharding={strategy!r}; allowed: {sorted(RULES)}")
  return RULES[strategy]


def make_mesh(axes: Sequence[Tuple[str, int]], devices=None) -> jax.sharding.Mesh:
  """A mesh from config.mesh, e.g. (('data', -1), ('model', 2)); one -1 takes what is left.

  Devices from several TPU slices (multi-slice: each device has a `slice_index`) make a hybrid
  mesh: the slow network between slices (DCN) only carries the data-parallel gradient
  reduction, so 'data' spans the slices (slice-major: slice 0's devices first) and the
  configured strategy ('model', fsdp's 'data' part) stays on each slice's fast network (ICI).
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  if set(names) != {DATA, MODEL} or len(names) != 2:
    raise ValueError(f"mesh: axes must be named {DATA!r} and {MODEL!r}, got {names}")
  sizes = mesh_sizes(axes, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  slices = num_slices(devices)
  if slices == 1:
    return jax.make_mesh(tuple(sizes), names, axis_types=auto, devices=devices)
  return jax.sharding.Mesh(hybrid_device_array(axes, sizes, devices, slices), names,
                           axis_types=auto)


def mesh_sizes(axes, num_devices: int) -> List[int]:
  """The axis sizes of config.mesh on `num_devices` devices (the -1 resolved)."""
  sizes = [int(size) for _, size in axes]
  known = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1 or known < 1 or num_devices % known:
    raise ValueError(f"mesh={tuple(axes)} does not fit {num_devices} devices (at most one -1; "
                     f"the fixed sizes must divide the device count)")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh={tuple(axes)} uses {int(np.prod(sizes))} devices but "
                     f"{num_devices} are present")
  return sizes


def num_slices(devices) -> int:
  """How many TPU slices the devices come from (1 for devices that have no slice_index)."""
  return len({getattr(device, "slice_index", 0) for device in devices})


def hybrid_device_array(axes, sizes, devices, slices: int) -> np.ndarray:
  """The devices arranged for a multi-slice mesh: each slice holds the whole 'model' axis and
  an equal block of 'data'; the blocks follow each other in slice order."""
  names = [name for name, _ in axes]
  per_slice = len(devices) // slices
  data = sizes[names.index(DATA)]
  model = sizes[names.index(MODEL)]
  if len(devices) % slices or data % slices or per_slice % model:
    raise ValueError(
        f"mesh={tuple(axes)} does not fit {slices} slices of {per_slice} devices: 'data' "
        f"({data}) must be a multiple of the slice count {slices} and 'model' ({model}) must "
        f"divide the {per_slice} devices of one slice (the slices are joined by the slow "
        f"network, which only the data-parallel reduction crosses); e.g. "
        f"(('data', -1), ('model', 1))")
  ici = [data // slices if name == DATA else model for name in names]
  dcn = [slices if name == DATA else 1 for name in names]
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                              allow_split_physical_axes=True)


def platform(mesh) -> str:
  """The platform of `mesh`'s devices ('cpu', 'gpu', 'tpu'): a compile-only target's, not
  necessarily this host's backend."""
  return mesh.devices.flat[0].platform


def data_parallel_size(mesh) -> int:
  return mesh.shape[DATA]


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis over 'data'; valid for arrays of any rank."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _fit_to_shape(spec: PartitionSpec, shape, mesh) -> Tuple[PartitionSpec, bool]:
  """Drops a mesh axis from a dimension it does not divide (e.g. 3 heads over 2 devices).

  Returns the fitted spec and whether anything was dropped.
  """
  fitted, dropped = [], False
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axis)])) if axis else 1
    if axis and dim % size:
      axis, dropped = None, True
    fitted.append(axis)
  return PartitionSpec(*fitted), dropped


def param_shardings(abstract_boxed_params, mesh, strategy: str):
  """NamedShardings for a (boxed, abstract) parameter tree; the tree structure is the unboxed one."""
  logical = nn.get_partition_spec(abstract_boxed_params)
  mesh_specs = nn.logical_to_mesh(logical, logical_rules(strategy))
  shapes = nn.unbox(abstract_boxed_params)
  paths_and_specs = jax.tree_util.tree_flatten_with_path(
      mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
  fitted, replicated_paths = [], []
  for (path, spec), leaf in zip(paths_and_specs, jax.tree.leaves(shapes)):
    spec, dropped = _fit_to_shape(spec, leaf.shape, mesh)
    fitted.append(NamedSharding(mesh, spec))
    if dropped:
      replicated_paths.append(jax.tree_util.keystr(path))
  if replicated_paths:
    logging.warning("sharding %s on mesh %s: %d parameters have a dimension the mesh does not "
                    "divide and are replicated along it, e.g. %s", strategy, dict(mesh.shape),
                    len(replicated_paths), replicated_paths[0])
  return jax.tree.unflatten(jax.tree.structure(shapes), fitted)


def like_params(tree, params, shardings, mesh):
  """Shardings for a tree (e.g. optimizer state) whose parameter-shaped leaves mirror `params`.

  A leaf whose key path ends with a parameter's key path and whose shape equals that parameter's
  takes the parameter's sharding (AdamW's mu and nu); anything else (step counts) is replicated.
  """
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                    jax.tree.leaves(shardings)):
    by_path[tuple(path)] = (leaf.shape, sharding)

  def pick(path, leaf):
    for start in range(len(path)):
      shape_and_sharding = by_path.get(tuple(path[start:]))
      if shape_and_sharding and shape_and_sharding[0] == leaf.shape:
        return shape_and_sharding[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


def activation_rules(strategy: str):
  """The rules as flax's `nn.logical_axis_rules` context expects them (for activations)."""
  return tuple(logical_rules(strategy))
