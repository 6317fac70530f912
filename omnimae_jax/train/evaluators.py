"""Evaluators: `run(params) -> {metric: value}` on a whole validation split, exactly once.

Used inside training (`config.evals`, each every `every_steps` steps, at the start and at the end;
`every_steps=0` turns one off) and by `mode=evaluate`. Every process reads its own part of the
split in order, padded to the same number of batches with examples marked invalid; counts are
summed on device over the global batch, so every example counts once on any number of hosts and
devices.

- 'classification': top-1 / top-5 of a classifier; videos average the logits (or softmaxes) of
  their views (5 temporal clips x 3 spatial crops in the official protocol), in chunks of views.
- 'knn': a frozen-feature k-NN probe of the encoder (mean of the unmasked trunk's tokens): a
  weighted k-NN vote over a labelled train split's features, top-1 on a validation split.
"""
import dataclasses
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from omnimae_jax import pixels as pixel_utils
from omnimae_jax.data import eval_pipeline
from omnimae_jax.models.vit import Trunk
from omnimae_jax.train import sharding, steps as steps_lib

def global_batches(source, mesh):
  """The source's local NumPy batches as global jax.Arrays split over the data axes."""
  batch_sharding = sharding.batch_sharding(mesh)
  for local in source:
    yield {key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(value))
           for key, value in local.items()}


def views_first(pixels):
  """[B, H, W, 3] (one view) or [B, V, T, H, W, 3] -> [V, B, ...] and V."""
  if pixels.ndim == 4:
    return pixels[None], 1
  return jnp.moveaxis(pixels, 1, 0), pixels.shape[1]


def view_averaged_logits(apply_fn, pixels, *, view_chunk: int, average: str):
  """Mean over views of the logits (or of their softmax), `view_chunk` views at a time so that a
  15-view batch of a large model does not hold every view's activations at once."""
  views, num_views = views_first(pixels)
  chunk = view_chunk if num_views % view_chunk == 0 else 1
  chunks = views.reshape((num_views // chunk, chunk * views.shape[1]) + views.shape[2:])

  def score(chunk_pixels):  # [chunk * B, ...] -> [chunk, B, classes] summed over the chunk
    logits = apply_fn(chunk_pixels)
    if average == "softmax":
      logits = jax.nn.softmax(logits, axis=-1)
    return logits.reshape(chunk, -1, logits.shape[-1]).sum(axis=0)

  return jax.lax.map(score, chunks).sum(axis=0) / num_views  # [B, classes]


def topk_counts(scores, labels, valid):
  """(top-1 hits, top-5 hits, examples) over the valid rows of a batch."""
  weights = valid.astype(jnp.float32)
  k = min(5, scores.shape[-1])
  top = jax.lax.top_k(scores, k)[1]  # [B, k]
  hit1 = (top[:, 0] == labels).astype(jnp.float32)
  hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return jnp.sum(hit1 * weights), jnp.sum(hit5 * weights), jnp.sum(weights)


@dataclasses.dataclass
class ClassificationEvaluator:
  """Top-1 / top-5 of a classifier on an evaluation source."""
  name: str
  every_steps: int
  source: object
  counts_fn: object
  num_views: int

  def run(self, params) -> Dict[str, float]:
    started = time.perf_counter()
    totals = np.zeros(3)
    for batch in global_batches(self.source, self.counts_fn.mesh):
      totals += np.asarray(jax.device_get(self.counts_fn(params, batch)))
    hits1, hits5, examples = totals
    seconds = time.perf_counter() - started
    return {"top1": hits1 / max(examples, 1), "top5": hits5 / max(examples, 1),
            "examples": int(examples), "views": self.num_views,
            "examples_per_sec": examples / seconds}


def _jit_on_mesh(fn, mesh, strategy, param_shardings):
  jitted = jax.jit(fn, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
  wrapped = steps_lib.with_mesh_rules(jitted, mesh, strategy)
  wrapped.mesh = mesh
  return wrapped


def classification_evaluator(name, cfg, *, model, mesh, strategy, param_shardings, data_dir):
  source = eval_pipeline.make_eval_source(name, cfg.source, data_dir=data_dir,
                                          patch_size=model.config.patch_size)
  if source.num_classes is not None and source.num_classes != model.config.num_classes:
    raise ValueError(
        f"evals.{name}: the model has a head of {model.config.num_classes} classes but "
        f"{cfg.source.tfds_name} has {source.num_classes}; fine-tune a head for this dataset")

  def counts(params, batch):
    def apply(pixels):
      return model.apply({"params": params}, pixel_utils.normalize(pixels))

    scores = view_averaged_logits(apply, batch["pixels"], view_chunk=cfg.view_chunk,
                                  average=cfg.average)
    return jnp.stack(topk_counts(scores, batch["label"], batch["valid"]))

  return ClassificationEvaluator(name, cfg.every_steps, source,
                                 _jit_on_mesh(counts, mesh, strategy, param_shardings),
                                 source.num_views)


def encoder_features(model_cfg, trunk_params, pixels):
  """L2-normalised mean of the unmasked trunk's output tokens: [B, D] (the k-NN features)."""
  tokens = Trunk(model_cfg).apply({"params": trunk_params}, pixel_utils.normalize(pixels))
  features = tokens.astype(jnp.float32).mean(axis=1)
  return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass
class KnnEvaluator:
  """Weighted k-NN (similarity^-1 temperature votes, as in DINO's probe) on frozen features."""
  name: str
  every_steps: int
  train_source: object
  val_source: object
  features_fn: object
  k: int
  temperature: float
  num_classes: int

  def features(self, params, source):
    feats, labels = [], []
    for batch in global_batches(source, self.features_fn.mesh):
      f, label, valid = jax.device_get(self.features_fn(params, batch))
      feats.append(f[valid])
      labels.append(label[valid])
    return np.concatenate(feats), np.concatenate(labels)

  def run(self, params) -> Dict[str, float]:
    started = time.perf_counter()
    train_feats, train_labels = self.features(params, self.train_source)
    val_feats, val_labels = self.features(params, self.val_source)
    predictions = knn_predict(train_feats, train_labels, val_feats, k=self.k,
                              temperature=self.temperature, num_classes=self.num_classes)
    return {"knn_top1": float(np.mean(predictions == val_labels)),
            "examples": int(len(val_labels)),
            "examples_per_sec": (len(val_labels) + len(train_labels))
                                / (time.perf_counter() - started)}


def knn_predict(train_feats, train_labels, query_feats, *, k, temperature, num_classes):
  """Class with the largest sum of exp(similarity / temperature) over the k nearest neighbours."""
  similarity = query_feats @ train_feats.T  # [Q, N]
  k = min(k, len(train_labels))
  nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
  weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
  votes = np.zeros((len(query_feats), num_classes))
  np.add.at(votes, (np.arange(len(query_feats))[:, None], train_labels[nearest]), weights)
  return votes.argmax(axis=1)


def knn_evaluator(name, cfg, *, model, mesh, strategy, param_shardings, data_dir):
  make = lambda source_cfg: eval_pipeline.make_eval_source(  # noqa: E731
      name, source_cfg, data_dir=data_dir, patch_size=model.config.patch_size)
  train_source, val_source = make(cfg.train_source), make(cfg.source)
  num_classes = val_source.num_classes or int(cfg.num_classes)

  def features(params, batch):
    pixels = batch["pixels"]
    if pixels.ndim == 6:  # a video source: the k-NN probe uses its first view
      pixels = pixels[:, 0]
    return (encoder_features(model.config, params["trunk"], pixels), batch["label"],
            batch["valid"])

  return KnnEvaluator(name, cfg.every_steps, train_source, val_source,
                      _jit_on_mesh(features, mesh, strategy, param_shardings), cfg.k,
                      cfg.temperature, num_classes)


BUILDERS = {"classification": classification_evaluator, "knn": knn_evaluator}


def build_evaluators(evals_cfg, *, model, mesh, strategy, param_shardings, data_dir):
  """{name: evaluator} from config.evals; each entry's `kind` picks the builder."""
  evaluators = {}
  for name, cfg in (evals_cfg or {}).items():
    if cfg.kind not in BUILDERS:
      raise ValueError(f"evals.{name}.kind={cfg.kind!r}; allowed: {sorted(BUILDERS)}")
    evaluators[name] = BUILDERS[cfg.kind](name, cfg, model=model, mesh=mesh, strategy=strategy,
                                          param_shardings=param_shardings, data_dir=data_dir)
  return evaluators
