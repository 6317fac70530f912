"""The run's whole config, kept in its workdir as config.json.

Written (atomically, by process 0) when a run starts or resumes, so that a workdir says how it was
trained and tools (reconstruct, evaluation) can read settings such as the target normalisation.
A resume compares the new config with the stored one: a change to a field that moves the
learning-rate schedule or the data order would silently make the run a different experiment, so it
is refused unless the user asks for it (`main.py --allow_config_change`); other changes are
reported. Either way the replaced config is kept beside the new one.
"""
import json
from typing import Dict, List, Optional, Tuple

from etils import epath
import jax

from omnimae_jax.config_file import ConfigError

RUN_CONFIG_FILE = "config.json"
# Prefixes (of dotted field names) whose change alters the schedule or the data order.
SCHEDULE_FIELDS = ("mode", "seed", "epochs", "total_steps", "data.sources", "optim.lr",
                   "optim.end_lr", "optim.schedule", "optim.warmup_fraction",
                   "optim.accum_steps", "mesh")


def as_dict(config) -> Dict:
  """The config as plain JSON values (tuples become lists), as config.json holds it."""
  return json.loads(config.to_json_best_effort())


def flatten(tree: Dict, prefix: str = "") -> Dict[str, object]:
  """{'optim.lr': 1e-3, ...}: dotted field names to leaf values."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def changes(saved: Dict, new: Dict) -> List[Tuple[str, object, object]]:
  """(field, saved value, new value) for every changed field."""
  old_flat, new_flat = flatten(saved), flatten(new)
  return [(name, old_flat.get(name, "(absent)"), new_flat.get(name, "(absent)"))
          for name in sorted(set(old_flat) | set(new_flat))
          if old_flat.get(name) != new_flat.get(name)]


def moves_schedule(field: str) -> bool:
  return any(field == guarded or field.startswith(guarded + ".") for guarded in SCHEDULE_FIELDS)


def describe(changes) -> str:
  return ", ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changes)


def read(workdir) -> Optional[Dict]:
  """The stored config of a workdir (a plain dict), or None for a workdir without one."""
  path = epath.Path(workdir) / RUN_CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _write_atomically(path: epath.Path, text: str):
  temporary = path.parent / (path.name + ".tmp")
  temporary.write_text(text)
  temporary.replace(path)


def record(config, workdir, *, resume_step: int, allow_change: bool) -> Tuple[List, List]:
  """Checks a resume against the stored config, then stores this run's config.

  Returns the changes from the stored config as (schedule changes, which were allowed; the
  others, which need no permission), both empty when none. Raises ConfigError, before anything
  is written, for a resume that changes the schedule or data order without permission. A changed
  config keeps the stored one as config.until_step_<resume step>.json.
  """
  directory = epath.Path(workdir)
  new = as_dict(config)
  saved = read(directory) if resume_step else None
  changed = changes(saved, new) if saved is not None else []
  needs_permission = [change for change in changed if moves_schedule(change[0])]
  others = [change for change in changed if not moves_schedule(change[0])]
  if needs_permission and not allow_change:
    raise ConfigError(
        f"{directory / RUN_CONFIG_FILE}: this resume (step {resume_step}) changes the schedule "
        f"or data order of the run: {describe(needs_permission)}; rerun with the saved values, "
        f"use a new workdir, or pass --allow_config_change to go on with the new ones")
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_CONFIG_FILE
    kept = directory / f"config.until_step_{resume_step}.json"
    # Keep what the run was trained with until here; a second change at the same step replaces
    # a config that trained no checkpointed step, so the first one kept stays.
    if changed and not kept.exists():
      path.replace(kept)
    _write_atomically(path, json.dumps(new, indent=2, sort_keys=True) + "\n")
  return needs_permission, others
