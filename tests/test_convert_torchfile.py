"""The restricted .torch reader, against a small test-side writer of torch.save's zip format.

The writer (`save_torch_zip`) emits what torch.save emits for a state dict: a protocol-2 pickle in
`<archive>/data.pkl` whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, OrderedDict())` with storages as persistent ids
`('storage', torch.<Type>Storage, key, 'cpu', numel)`, raw bytes in `<archive>/data/<key>`, and the
`byteorder` and `version` records. Other test modules import it to make checkpoint files.
"""
import collections
import dataclasses
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from omnimae_jax import torch_reader

STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class Global:
  """module.name, pickled as a GLOBAL opcode without importing it (torch need not exist)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle only accepts callables as reduce functions
    raise AssertionError("a Global is never called by the writer")


@dataclasses.dataclass
class Reduce:
  """Pickles as `func(*args)`, e.g. Reduce(Global('os', 'system'), ('touch x',))."""
  func: Global
  args: tuple

  def __reduce__(self):
    return self.func, self.args


@dataclasses.dataclass
class TensorView:
  """A tensor sharing `base`'s storage: offset, shape and strides in elements."""
  base: np.ndarray
  offset: int
  shape: tuple
  strides: tuple


class _Storage:

  def __init__(self, array, key):
    self.array, self.key = np.ascontiguousarray(array).reshape(-1), key


class _TorchPickler(pickle._Pickler):  # the Python pickler: its dispatch table can be extended
  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file):
    super().__init__(file, protocol=2)
    self.storages = {}  # id(base array) -> _Storage

  def save_global_reference(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[Global] = save_global_reference

  def _storage(self, base):
    if id(base) not in self.storages:
      self.storages[id(base)] = _Storage(base, str(len(self.storages)))
    return self.storages[id(base)]

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", Global("torch", STORAGE_NAMES[obj.array.dtype]), obj.key, "cpu",
              obj.array.size)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, (np.ndarray, TensorView)):
      view = obj if isinstance(obj, TensorView) else TensorView(
          obj, 0, obj.shape, tuple(int(np.prod(obj.shape[i + 1:])) for i in range(obj.ndim)))
      return Global("torch._utils", "_rebuild_tensor_v2"), (
          self._storage(view.base), view.offset, tuple(view.shape), tuple(view.strides), False,
          collections.OrderedDict())
    return NotImplemented


def save_torch_zip(path, obj, byteorder="little", archive_name="archive"):
  """Writes `obj` (containers of np.ndarray / TensorView) the way torch.save lays it out."""
  buffer = io.BytesIO()
  pickler = _TorchPickler(buffer)
  pickler.dump(obj)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr(f"{archive_name}/data.pkl", buffer.getvalue())
    archive.writestr(f"{archive_name}/byteorder", byteorder)
    for storage in pickler.storages.values():
      array = storage.array
      if byteorder == "big" and array.dtype.itemsize > 1:
        array = array.byteswap()
      archive.writestr(f"{archive_name}/data/{storage.key}", array.tobytes())
    archive.writestr(f"{archive_name}/version", "3\n")
  return path


# ------------------------------------------------------------------------------------- tests


def test_round_trip_of_dtypes_containers_and_trainer_layout(tmp_path):
  rng = np.random.default_rng(0)
  state = collections.OrderedDict(
      w=rng.standard_normal((3, 4)).astype(np.float32),
      half=rng.standard_normal(5).astype(np.float16),
      bf16=rng.standard_normal(6).astype(ml_dtypes.bfloat16),
      long=np.arange(7, dtype=np.int64) - 3,
      flag=np.array([True, False, True]),
      scalar=np.array(2.5, np.float64),
      empty=np.zeros((0, 3), np.float32))
  checkpoint = {"model": state, "epoch": 3, "loss": 0.25, "name": "x", "nothing": None,
                "betas": (0.9, 0.95), "steps": [1, 2], "raw": b"\x00\xff", "tags": {"a", "b"}}
  path = save_torch_zip(tmp_path / "a.torch", checkpoint)
  loaded = torch_reader.load(path)
  assert isinstance(loaded["model"], collections.OrderedDict)
  assert list(loaded["model"]) == list(state)
  for key, value in state.items():
    assert loaded["model"][key].dtype == value.dtype, key
    np.testing.assert_array_equal(loaded["model"][key], value)
  assert {k: loaded[k] for k in ("epoch", "loss", "name", "nothing", "betas", "steps", "raw",
                                  "tags")} == {k: checkpoint[k] for k in checkpoint if k != "model"}


def test_views_share_storage_with_offsets_and_strides(tmp_path):
  base = np.arange(24, dtype=np.float32)
  state = {"transposed": TensorView(base, 2, (3, 4), (1, 3)),  # base[2:14].reshape(4,3).T
           "tail": TensorView(base, 20, (2, 2), (2, 1)), "full": base}
  loaded = torch_reader.load(save_torch_zip(tmp_path / "v.torch", state))
  np.testing.assert_array_equal(loaded["transposed"], base[2:14].reshape(4, 3).T)
  np.testing.assert_array_equal(loaded["tail"], base[20:24].reshape(2, 2))
  np.testing.assert_array_equal(loaded["full"], base)
  loaded["transposed"][0, 0] = -1  # a strided view is copied: no aliasing of other tensors
  assert loaded["full"][2] == 2


def test_big_endian_files_and_any_archive_name(tmp_path):
  values = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
  halves = values.astype(ml_dtypes.bfloat16)
  path = save_torch_zip(tmp_path / "b.torch", {"w": values, "h": halves}, byteorder="big",
                        archive_name="vitb_pretrain")
  loaded = torch_reader.load(path)
  np.testing.assert_array_equal(loaded["w"], values)
  np.testing.assert_array_equal(loaded["h"], halves)


def test_view_past_its_storage_is_refused(tmp_path):
  base = np.arange(4, dtype=np.float32)
  path = save_torch_zip(tmp_path / "oob.torch", {"w": TensorView(base, 2, (2, 2), (2, 1))})
  with pytest.raises(torch_reader.TorchFileError, match="reaches past its storage"):
    torch_reader.load(path)


@pytest.mark.parametrize("payload", [
    Reduce(Global("os", "system"), ("touch {marker}",)),
    Reduce(Global("builtins", "eval"), ("open({marker!r}, 'w').close()",)),
    Reduce(Global("subprocess", "call"), (["touch", "{marker}"],)),
    Reduce(Global("torch.nn.modules.linear", "Linear"), (3, 2)),
    Reduce(Global("_codecs", "encode"), ("x", "rot13")),
], ids=["os.system", "builtins.eval", "subprocess.call", "torch-module", "codecs-non-latin1"])
def test_pickled_code_is_refused_and_never_run(tmp_path, payload):
  marker = str(tmp_path / "was_run")
  payload.args = tuple(a.format(marker=marker) if isinstance(a, str)
                       else [x.format(marker=marker) for x in a] if isinstance(a, list) else a
                       for a in payload.args)
  path = save_torch_zip(tmp_path / "evil.torch",
                        {"w": np.zeros(2, np.float32), "payload": payload})
  with pytest.raises(torch_reader.UnsafeCheckpointError) as error:
    torch_reader.load(path)
  assert payload.func.name in str(error.value)
  assert not os.path.exists(marker)


def test_files_that_are_not_checkpoints(tmp_path):
  text = tmp_path / "notes.torch"
  text.write_text("hello")
  with pytest.raises(torch_reader.TorchFileError, match="not a PyTorch checkpoint"):
    torch_reader.load(text)
  other_zip = tmp_path / "other.torch"
  with zipfile.ZipFile(other_zip, "w") as archive:
    archive.writestr("readme.txt", "hi")
  with pytest.raises(torch_reader.TorchFileError, match="not a PyTorch checkpoint"):
    torch_reader.load(other_zip)
  legacy = tmp_path / "legacy.torch"
  legacy.write_bytes(pickle.dumps(torch_reader.LEGACY_MAGIC, protocol=2) + b"rest")
  with pytest.raises(torch_reader.TorchFileError, match="legacy"):
    torch_reader.load(legacy)
  missing_storage = tmp_path / "truncated.torch"
  save_torch_zip(missing_storage, {"w": np.zeros(3, np.float32)})
  with zipfile.ZipFile(missing_storage) as archive:
    records = {name: archive.read(name) for name in archive.namelist()
               if not name.endswith("data/0")}
  with zipfile.ZipFile(missing_storage, "w") as archive:
    for name, data in records.items():
      archive.writestr(name, data)
  with pytest.raises(torch_reader.TorchFileError, match="missing"):
    torch_reader.load(missing_storage)
  with pytest.raises(torch_reader.TorchFileError, match="no such file"):
    torch_reader.load(tmp_path / "absent.torch")
