"""Loads a config file the way main.py's --config does: `path.py[:arg]` -> get_config(arg)."""
import importlib.util
import os
import sys


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  # Config files import their siblings as `configs.common`: make the repository root importable.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location("omnimae_loaded_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
