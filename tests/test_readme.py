"""The README's commands work as written: every `python main.py` line parses and passes the config
checks (nothing runs: the real ones need ImageNet), every module it runs exists with the
subcommand it names, and every make target exists."""
import importlib.util
import os
import re
import shlex

import pytest

import main
from omnimae_jax import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  """The shell command lines of the README's ```bash blocks (continuations joined, comments
  dropped)."""
  with open(os.path.join(ROOT, "README.md")) as file:
    blocks = re.findall(r"```bash\n(.*?)```", file.read(), flags=re.S)
  lines = []
  for block in blocks:
    for line in block.replace("\\\n", " ").splitlines():
      command = line.split("#", 1)[0].strip()
      if command:
        lines.append(command)
  return lines


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_a_user_runs():
  programs = {tuple(shlex.split(line)[:2]) for line in COMMANDS}
  assert ("make", "demo") in programs and ("make", "test") in programs
  assert ("python", "main.py") in programs
  assert len([line for line in COMMANDS if line.startswith("python main.py")]) >= 10


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("python main.py")])
def test_every_main_command_line_is_accepted(line, tmp_path):
  # '...' in the README means "the flags of the line above": here, a workdir of the test's own.
  args = [arg for arg in shlex.split(line)[1:] if arg != "..."]
  args = [arg for arg in args if not arg.startswith("--workdir=")]
  assert main.check_command_line([*args, f"--workdir={tmp_path}"]) == (0, ""), line


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("python -m ")])
def test_every_module_command_names_a_module_and_subcommand_that_exist(line):
  words = shlex.split(line)
  module = words[2]
  assert importlib.util.find_spec(module) is not None, line
  if module == "omnimae_jax.benchmark":
    assert words[3] in benchmark.COMMANDS, line


def test_every_make_target_exists():
  with open(os.path.join(ROOT, "Makefile")) as file:
    targets = set(re.findall(r"^([a-z-]+):", file.read(), flags=re.M))
  for line in COMMANDS:
    words = shlex.split(line)
    if words[0] == "make":
      assert set(words[1:]) <= targets, line
