"""Loads a config file the way main.py's --config does: `path.py[:arg]` -> get_config(arg).

Every way a config file or its arg can fail is one ConfigError line naming the file, and every
`--config.a.b=v` override is checked against the loaded config's fields before absl parses it.
"""
import difflib
import importlib.util
import os
import re
import sys

import ml_collections

from omnimae_jax.train.config_checks import ConfigError

# --config.a.b=v, --config.a.b v, and the boolean forms --config.a.b / --noconfig.a.b.
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=.*)?$", re.DOTALL)


def load_config(spec: str):
  """get_config(arg) of `path.py[:arg]`; raises ConfigError naming the file and the reason."""
  path, _, arg = spec.partition(":")
  module = _load_module(spec, path)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"--config={spec}: {path} defines no get_config(arg) function")
  try:
    config = get_config(arg) if arg else get_config()
  except ValueError as error:  # the config's own words about its arg (parse_arg and friends)
    raise ConfigError(f"--config={spec}: {one_line(error)}") from error
  except Exception as error:  # noqa: BLE001 (a config file may fail in any way; say which)
    raise ConfigError(f"--config={spec}: get_config failed: {type(error).__name__}: "
                      f"{one_line(error)}") from error
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config={spec}: get_config returned {type(config).__name__}; expected "
                      "an ml_collections.ConfigDict")
  return config


def _load_module(spec: str, path: str):
  if not os.path.exists(path):
    raise ConfigError(f"--config={spec}: no such file {path!r}")
  if not os.path.isfile(path) or not path.endswith(".py"):
    raise ConfigError(f"--config={spec}: {path!r} is not a Python file; expected e.g. "
                      "configs/demo_omni.py")
  # Config files import their siblings as `configs.common`: make the repository root importable.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location("omnimae_loaded_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as error:
    raise ConfigError(f"--config={spec}: syntax error in {error.filename}, line {error.lineno}: "
                      f"{error.msg}") from error
  except Exception as error:  # noqa: BLE001 (an import inside the file, a typo at top level...)
    raise ConfigError(f"--config={spec}: loading {path} failed: {type(error).__name__}: "
                      f"{one_line(error)}") from error
  return module


def overrides(argv):
  """(dotted field, value) of each `--config.<field>` override in argv (before a `--`); the value
  is None where the flag does not hold it (`--config.a.b v`, the boolean forms)."""
  found = []
  for arg in argv[1:]:
    if arg == "--":
      break
    match = _OVERRIDE.match(arg)
    if match:
      found.append((match.group(1), arg.partition("=")[2] if "=" in arg else None))
  return found


def check_overrides(config, argv):
  """Raises ConfigError for the first override of a field the config does not have (the config
  is locked, so absl would refuse it too, but with a traceback), or of a group of fields given a
  plain value (absl's message would not say which fields the group has)."""
  for path, value in overrides(argv):
    node, walked = config, []
    for key in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        break  # deeper than the groups of fields: absl's own parsing decides
      if key not in node:
        raise ConfigError(f"--config.{path}: {_no_such_field(node, walked, key)}")
      node, walked = node[key], walked + [key]
    is_dict_literal = value is None or value.lstrip().startswith("{")
    if isinstance(node, ml_collections.ConfigDict) and not is_dict_literal:
      fields = ", ".join(f"--config.{path}.{key}" for key in sorted(node.keys()))
      raise ConfigError(f"--config.{path}={value}: {path} is a group of fields, not a value; "
                        f"set its fields: {fields or '(it has none)'}")


def _no_such_field(group, walked, key) -> str:
  where = ".".join(walked) or "the config"
  fields = sorted(group.keys())
  close = difflib.get_close_matches(key, fields, n=1)
  hint = f" (did you mean {'.'.join(walked + close)}?)" if close else ""
  return f"{where} has no field {key!r}{hint}; its fields: {', '.join(fields)}"


def one_line(error) -> str:
  """An exception's message on one line (messages of other libraries may span several)."""
  return " ".join(str(error).split())
