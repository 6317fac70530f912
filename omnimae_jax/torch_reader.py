"""Reads PyTorch `.torch`/`.pt` checkpoints without PyTorch and without running pickled code.

A file written by `torch.save` (PyTorch >= 1.6) is a zip archive:
- `<archive>/data.pkl`: a pickle of the saved object. Each tensor in it is a call to
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
  whose storage is a persistent id `('storage', torch.<Type>Storage, key, location, numel)`;
- `<archive>/data/<key>`: the raw bytes of that storage, in the order given by `<archive>/byteorder`
  ('little' when the file is absent);
- `<archive>/version` and a few bookkeeping files.

Unpickling an arbitrary pickle runs whatever functions it names, so `load` resolves only the
tensor-rebuild functions, the storage types, `collections.OrderedDict` and plain containers; any
other global (a class, `os.system`, `builtins.eval`, ...) is refused before it can be called.
Tensors come back as NumPy arrays (bfloat16 as `ml_dtypes.bfloat16`).
"""
import collections
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# The storage types `torch.save` names in its persistent ids, and their element types.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

# The magic number that opens the pre-1.6 (non-zip) serialization, pickled as a long.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
READERS = ("restricted", "torch")


class TorchFileError(ValueError):
  """A file that is not a readable PyTorch checkpoint."""


class UnsafeCheckpointError(TorchFileError):
  """A checkpoint whose pickle names something other than tensors and plain containers."""


class _StorageType:
  """Stands in for torch.<Type>Storage inside a persistent id: only its element type matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_flags):
  """torch._utils._rebuild_tensor(_v2): a strided view of a 1-D storage, as a NumPy array.

  requires_grad, backward hooks and metadata (the trailing arguments) mean nothing to NumPy.
  """
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or storage_offset < 0 or any(s < 0 for s in size + stride):
    raise TorchFileError(f"tensor with size {size}, stride {stride} and offset {storage_offset} "
                         f"is malformed")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last_element = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  # as_strided reads raw memory: a view reaching past its storage would read the process's heap.
  if last_element >= storage.size:
    raise TorchFileError(f"tensor view (size {size}, stride {stride}, offset {storage_offset}) "
                         f"reaches past its storage of {storage.size} elements")
  contiguous = stride == tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
  if contiguous and storage_offset == 0 and int(np.prod(size)) == storage.size:
    return storage.reshape(size)  # the usual state-dict case: no copy
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # a copy: the result must not alias other tensors' memory


def _rebuild_parameter(data, unused_requires_grad, unused_hooks, *unused_state):
  """torch._utils._rebuild_parameter: an nn.Parameter is its data."""
  return data


def _bytes_from_latin1(text, encoding="latin1"):
  """_codecs.encode as pickle protocol 2 uses it for bytes objects; only latin-1 is allowed."""
  if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
    raise UnsafeCheckpointError(f"_codecs.encode with encoding {encoding!r} is not allowed")
  return text.encode("latin1")


# Every global a state dict or trainer checkpoint may name, mapped to what stands in for it.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Protocol 2 (torch.save's) writes Python 3's `builtins` under its Python 2 name.
    **{(module, "set"): set for module in ("builtins", "__builtin__")},
    **{(module, "frozenset"): frozenset for module in ("builtins", "__builtin__")},
    ("_codecs", "encode"): _bytes_from_latin1,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only ALLOWED_GLOBALS; storages are read from the archive when first referenced."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str,
               source: str):
    super().__init__(io.BytesIO(data), encoding="utf-8")
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._source = source
    self._storages = {}

  def find_class(self, module, name):
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f"{self._source}: refused to load '{module}.{name}': the file pickles an object that "
          f"is not a tensor or a plain container, and unpickling it would run its code. Only "
          f"state dicts (and trainer checkpoints of them) are accepted.") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise TorchFileError(f"{self._source}: unexpected persistent id {pid!r} "
                           f"(expected ('storage', <Type>Storage, key, location, numel))")
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      self._storages[key] = self._read_storage(str(key), storage_type.dtype, int(numel))
    return self._storages[key]

  def _read_storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    name = f"{self._prefix}data/{key}"
    try:
      info = self._archive.getinfo(name)
    except KeyError:
      raise TorchFileError(f"{self._source}: storage record {name!r} is missing") from None
    if info.file_size != numel * dtype.itemsize:
      raise TorchFileError(f"{self._source}: storage {name!r} holds {info.file_size} bytes, "
                           f"expected {numel} x {dtype.itemsize}")
    storage = np.empty(numel, dtype)
    _read_exactly(self._archive, name, storage.view(np.uint8))
    if self._byteorder == "big" and dtype.itemsize > 1:
      storage.byteswap(inplace=True)  # to this machine's (little-endian) order
    return storage


def _read_exactly(archive: zipfile.ZipFile, name: str, out: np.ndarray):
  """Reads the record straight into `out` (no intermediate bytes object the size of a tensor)."""
  view = memoryview(out)
  with archive.open(name) as record:
    filled = 0
    while filled < len(view):
      count = record.readinto(view[filled:])
      if not count:
        raise TorchFileError(f"record {name!r} ended early")
      filled += count


def _archive_prefix(archive: zipfile.ZipFile, source: str) -> str:
  """The `<archive>/` folder holding data.pkl (named after the saved file by torch.save)."""
  pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
  if len(pickles) != 1:
    raise TorchFileError(f"{source}: a zip file, but not a PyTorch checkpoint (expected one "
                         f"<archive>/data.pkl, found {len(pickles)})")
  return pickles[0][:-len("data.pkl")]


def _byteorder(archive: zipfile.ZipFile, prefix: str, source: str) -> str:
  try:
    order = archive.read(prefix + "byteorder").decode().strip()
  except KeyError:
    return "little"  # files written before torch recorded it were little-endian
  if order not in ("little", "big"):
    raise TorchFileError(f"{source}: unknown byteorder {order!r}")
  return order


def _is_legacy_pickle(path: str) -> bool:
  """True for the pre-1.6 format: a bare pickle stream that starts with torch's magic number."""
  with open(path, "rb") as f:
    head = f.read(64)
  if not head.startswith(b"\x80"):
    return False
  try:
    return _NoGlobalsUnpickler(io.BytesIO(head), encoding="latin1").load() == LEGACY_MAGIC
  except Exception:  # noqa: BLE001 - any failure means "not that format"
    return False


class _NoGlobalsUnpickler(pickle.Unpickler):
  """Reads plain values only: used to sniff a file's first pickled object safely."""

  def find_class(self, module, name):
    raise UnsafeCheckpointError(f"refused to load '{module}.{name}'")


def _load_restricted(path: str) -> Any:
  source = os.fspath(path)
  if not zipfile.is_zipfile(source):
    if _is_legacy_pickle(source):
      raise TorchFileError(
          f"{source}: a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format, which this "
          f"reader does not support; re-save it with torch.save in PyTorch >= 1.6, or install "
          f"torch and pass --reader torch")
    raise TorchFileError(f"{source}: not a PyTorch checkpoint (not a torch.save zip archive)")
  with zipfile.ZipFile(source) as archive:
    prefix = _archive_prefix(archive, source)
    unpickler = _RestrictedUnpickler(archive.read(prefix + "data.pkl"), archive, prefix,
                                     _byteorder(archive, prefix, source), source)
    try:
      return unpickler.load()
    except TorchFileError:
      raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError) as e:
      raise TorchFileError(f"{source}: corrupt checkpoint pickle ({type(e).__name__}: {e})") from e


def _tensors_to_numpy(tree, torch):
  if isinstance(tree, torch.Tensor):
    tensor = tree.detach().cpu()
    if tensor.dtype == torch.bfloat16:
      return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
  if isinstance(tree, dict):
    return type(tree)((k, _tensors_to_numpy(v, torch)) for k, v in tree.items())
  if isinstance(tree, (list, tuple)):
    return type(tree)(_tensors_to_numpy(v, torch) for v in tree)
  return tree


def _load_with_torch(path: str) -> Any:
  """torch.load(weights_only=True): PyTorch's own allow-list unpickler, for the legacy format."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise TorchFileError("--reader torch needs PyTorch installed; the default reader "
                         "('restricted') does not") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise UnsafeCheckpointError(f"{path}: torch.load(weights_only=True) refused it: {e}") from e
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    raise TorchFileError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
  return _tensors_to_numpy(loaded, torch)


def load(path, reader: str = "restricted") -> Any:
  """The object saved in a PyTorch checkpoint, tensors as NumPy arrays.

  reader='restricted' (default) needs no PyTorch; 'torch' uses torch.load(weights_only=True).
  Raises UnsafeCheckpointError for pickled code and TorchFileError for anything unreadable.
  """
  if reader not in READERS:
    raise ValueError(f"reader={reader!r}; allowed: {READERS}")
  if not os.path.isfile(path):
    raise TorchFileError(f"{path}: no such file")
  return _load_restricted(path) if reader == "restricted" else _load_with_torch(path)
