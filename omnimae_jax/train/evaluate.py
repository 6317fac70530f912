"""`mode=evaluate`: one model, every configured evaluator once, a table and eval_results.json.

    python main.py --config=configs/evaluate.py:dataset=in1k,checkpoint=vitb_in1k_ft.torch

The model comes from `config.checkpoint` (an official .torch file, a model directory or a
training workdir, through `omnimae_jax.pretrained`); `config.evals` says what to measure.
"""
import dataclasses
import datetime
import json
import os
import sys
from typing import Dict

import jax

from omnimae_jax import paths
from omnimae_jax.train import evaluators as evaluators_lib
from omnimae_jax.train import metrics as metrics_lib, sharding, state as state_lib
from omnimae_jax.train.loop import ConfigError, say

RESULTS_FILE = "eval_results.json"


def load_model(config):
  """The checkpoint's model (compute dtype from the config) and its host parameters."""
  from omnimae_jax import pretrained  # noqa: PLC0415

  if not config.checkpoint:
    raise ConfigError("checkpoint is empty; set --config.checkpoint=PATH (an official .torch "
                      "file, a model directory or a training workdir)")
  needs_classifier = any(e.kind == "classification" for e in config.evals.values())
  model, variables = pretrained.load(os.path.expanduser(config.checkpoint),
                                     expect="classifier" if needs_classifier else "any")
  model = model.clone(config=dataclasses.replace(model.config,
                                                 compute_dtype=config.compute_dtype))
  return model, variables["params"]


def results_table(results: Dict[str, Dict]) -> str:
  lines = [f"{'evaluator':16} results"]
  lines += [f"{name:16} {metrics_lib.format_results(values)}" for name, values in results.items()]
  return "\n".join(lines)


def record_results(workdir, entry: Dict) -> str:
  """Appends this evaluation to <workdir>/eval_results.json (a list; earlier runs are kept),
  written atomically."""
  path = paths.workdir_path(workdir) / RESULTS_FILE  # local or gs://
  history = json.loads(path.read_text()) if path.exists() else []
  history.append(entry)
  tmp = path.parent / (path.name + ".tmp-omnimae")
  tmp.write_text(json.dumps(history, indent=2))
  tmp.replace(path)
  return str(path)


def evaluate(config, workdir: str, *, stream=sys.stdout, devices=None) -> Dict:
  """Runs every evaluator of `config.evals` once; returns {evaluator: {metric: value}}."""
  workdir = paths.workdir_path(workdir)
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.logical_rules(config.sharding)
    if not config.evals:
      raise ValueError("evals is empty; configure at least one evaluator")
  except ValueError as error:
    raise ConfigError(str(error)) from error
  model, params = load_model(config)
  shardings = state_lib.param_shardings(model, mesh, config.sharding)
  try:
    evaluators = evaluators_lib.build_evaluators(
        config.evals, model=model, mesh=mesh, strategy=config.sharding,
        param_shardings=shardings, data_dir=os.path.expanduser(config.data.data_dir))
  except ValueError as error:
    raise ConfigError(str(error)) from error
  params = jax.device_put(params, shardings)
  say(stream, f"Evaluating {config.checkpoint} ({state_lib.count_params(params):,} parameters) "
              f"on {mesh.devices.size} device(s)")
  results = {name: evaluator.run(params) for name, evaluator in evaluators.items()}
  say(stream, results_table(results))
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    path = record_results(workdir, {
        "checkpoint": config.checkpoint, "time": datetime.datetime.now().isoformat(),
        "results": results})
    say(stream, f"Results appended to {path}")
  return results
