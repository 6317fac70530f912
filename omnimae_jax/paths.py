"""Workdirs and model directories as `etils.epath` paths: local or on cloud storage (gs://).

Everything that reads or writes under a workdir goes through `epath.Path`, never `os.path`,
`open` or `os.makedirs`: those take 'gs://b/w' for a relative local path and write to
'./gs:/b/w'. Orbax, TensorFlow and JAX's compilation cache read the same URLs themselves.
"""
import os

from etils import epath

URL_SCHEMES = ("gs://", "s3://", "az://", "hf://")  # what epath reads besides local files


def is_url(path) -> bool:
  return os.fspath(path).startswith(URL_SCHEMES)


def workdir_path(path) -> epath.Path:
  """A URL as it is; a local path with '~' expanded and made absolute (messages name it fully,
  and a later chdir cannot move it)."""
  if is_url(path):
    return epath.Path(path)
  return epath.Path(path).expanduser().absolute()
