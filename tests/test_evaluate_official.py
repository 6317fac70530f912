"""`mode=evaluate` on an official-format fine-tuned file: the counts of a float64 NumPy model of
the official classifier, on one process and on two.

The file is written from SPEC §6.2's key table (tiny layout, an IN1K head of 1000 classes) by
the test-side torch.save writer; the reference forward (test_convert's NumPy model of the
official code) reads the file's torch-layout arrays back and sees the same preprocessed pixels
the evaluator sees (the eval input pipeline, itself checked against Pillow here). The split is
imagenet2012 built by the real TFDS builder from a synthetic manual download: 27 validation
images, not a multiple of the global batch of 8, so padding is exercised.

Random heads would hit ~1 in 25 labels; instead the head rows of the labels present are solved
(least squares on the float64 reference features) so that each example's true class lands at a
chosen rank, 0.5 logits apart from its neighbours. The top-1 and top-5 counts are then known in
advance and far from 0 and from the split size, and a wrong trunk anywhere scrambles them.
"""
import io
import json
import os
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from configs import evaluate as evaluate_config
from data_fixtures import prepare_imagenet2012
from omnimae_jax import pixels as pixel_utils, torch_reader
from omnimae_jax.data import eval_pipeline
from omnimae_jax.train import evaluate
from test_convert import (LAYOUTS, official_entries, official_sincos, ref_block, ref_embed,
                          ref_layer_norm, ref_linear, ref_positions)
from test_convert_torchfile import save_torch_zip
from test_train import free_port, main_py

NUM_VALIDATION = 27  # not a multiple of the global batch: the last batch is padded
GLOBAL_BATCH = 8
IMAGE_SIZE, RESIZE_SIZE = 48, 56  # Resize(56) then CenterCrop(48): 3 x 3 patches of 16
RAW_SIZE = (60, 80)  # height, width of the stored JPEGs: a downscale, and not square
# Photo-like texture. (On noiseless linear ramps, the columns whose filter is centred on a pixel
# land exactly on .5 sums, where Pillow's fixed point and TF's float32 round apart: 2 levels.)
NOISE_STD = 6.0
NUM_CLASSES = 1000  # the IN1K head of the published fine-tuned files
POSITIONS = 8 * (IMAGE_SIZE // 16) ** 2  # a 16-frame table: the converter infers img_size 48
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SPEC §1.5
ABSENT_CLASS_BIAS = -20.0  # classes with no validation image stay far below the top 5
RANK_SPACING = 0.5  # logits between consecutive ranks of the labels present


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  data_dir, manual_dir = prepare_imagenet2012(
      str(tmp_path_factory.mktemp("imagenet")), num_validation=NUM_VALIDATION,
      height=RAW_SIZE[0], width=RAW_SIZE[1], noise_std=NOISE_STD)
  return data_dir, manual_dir


def eval_config(checkpoint, data_dir):
  """configs/evaluate.py for IN1K (its official protocol) at the test's sizes, in float32."""
  config = evaluate_config.get_config(f"dataset=in1k,checkpoint={checkpoint},"
                                      f"batch_size={GLOBAL_BATCH}")
  config.compute_dtype = "float32"
  config.data.data_dir = data_dir
  config.evals.val.source.update(image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE)
  return config


def pipeline_examples(config):
  """The valid examples the evaluator reads on one process: ids, uint8 pixels, labels."""
  source = eval_pipeline.make_eval_source(
      "val", config.evals.val.source, data_dir=config.data.data_dir, patch_size=(2, 16, 16),
      process_index=0, process_count=1)
  batches = list(source.batches(with_ids=True))
  valid = np.concatenate([b["valid"] for b in batches])
  assert len(valid) == 4 * GLOBAL_BATCH and valid.sum() == NUM_VALIDATION
  assert not valid[NUM_VALIDATION:].any()  # the padding comes last
  return tuple(np.concatenate([b[key] for b in batches])[valid]
               for key in ("id", "pixels", "label"))


# ------------------------------------------------------------------ float64 official model


def normalised_torch_layout(pixels):
  """uint8 [B, H, W, 3] -> float64 [B, 3, H, W] with the ImageNet statistics (torchvision's
  ToTensor + Normalize)."""
  x = (pixels.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  return x.transpose(0, 3, 1, 2)


def reference_features(state, pixels):
  """The official fine-tuning trunk in float64 from the torch-layout arrays: repeat-to-2-frames
  Conv3d as a matmul, the stored sin-cos table's t=0 slice, pre-LN blocks (eps 1e-6, exact
  GELU), mean over tokens, then the post-pool trunk.norm (SPEC §1.6)."""
  lay = LAYOUTS["tiny"]
  tokens, is_image = ref_embed(state, normalised_torch_layout(pixels))
  assert is_image
  x = tokens + ref_positions(state["trunk.pos_embed"], tokens.shape[1])
  for i in range(lay["depth"]):
    x = ref_block(x, state, f"trunk.blocks.{i}.", lay["heads"])
  return ref_layer_norm(x.mean(axis=1), state, "trunk.norm.")  # [B, D]


def reference_logits(state, pixels):
  return ref_linear(reference_features(state, pixels), state, "head.")  # [B, classes]


def topk_counts(logits, labels):
  order = np.argsort(-logits, axis=1)
  return int(np.sum(order[:, 0] == labels)), int(np.sum(order[:, :5] == labels[:, None]))


# ----------------------------------------------------------------- the official-format file


def random_trunk(rng):
  """Every trunk tensor of a tiny fine-tuned file (SPEC §6.2), at scales that keep activations
  near unit size: weights N(0, 1/fan_in), biases N(0, 0.05), norm weights N(1, 0.1)."""
  state = {}
  entries = official_entries("tiny", POSITIONS, kind="classifier", num_classes=NUM_CLASSES)
  for key, shape, _, _ in entries:
    if key == "trunk.pos_embed":
      value = official_sincos(shape[1], shape[2])  # the fixed buffer (SPEC §1.2)
    elif key.startswith("head."):
      continue
    elif key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif key.endswith("bias"):
      value = 0.05 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    state[key] = np.asarray(value, np.float32)
  assert {k for k, _, _, _ in entries} - set(state) == {"head.weight", "head.bias"}
  return state


def designed_ranks(rng, labels):
  """The rank (1 = top) each example's label will have: about 45% first, 30% in 2..5."""
  present = len(set(labels.tolist()))
  ranks = rng.choice([1, 2, 3, 4, 5, 6, 9, 14], size=len(labels),
                     p=[0.45, 0.1, 0.1, 0.05, 0.05, 0.1, 0.1, 0.05])
  return np.minimum(ranks, present)


def solved_head(rng, features, labels, ranks):
  """head.weight [1000, D] and head.bias [1000]: random rows (bias -20) for the classes without
  a validation image; for the labels present, rows solved so that features @ row gives, per
  example, the present classes RANK_SPACING apart in a random order with its label at its
  designed rank."""
  num_examples, width = features.shape
  present = np.unique(labels)
  targets = np.zeros((num_examples, len(present)))  # [B, present classes]
  spaced = 4.0 - RANK_SPACING * np.arange(len(present))
  for i, (label, rank) in enumerate(zip(labels, ranks)):
    order = [c for c in rng.permutation(present) if c != label]
    order.insert(rank - 1, label)
    targets[i, np.searchsorted(present, order)] = spaced
  assert np.linalg.matrix_rank(features) == num_examples  # so the targets are met exactly
  rows = (np.linalg.pinv(features) @ targets).T  # [present, D], the minimum-norm solution
  weight = 0.02 * rng.standard_normal((NUM_CLASSES, width))
  bias = np.full(NUM_CLASSES, ABSENT_CLASS_BIAS)
  weight[present], bias[present] = rows, 0.0
  return weight.astype(np.float32), bias.astype(np.float32)


@pytest.fixture(scope="module")
def official_file(imagenet, tmp_path_factory):
  """The .torch file, the evaluator's valid examples, and the designed top-1 / top-5 counts."""
  data_dir, manual_dir = imagenet
  path = str(tmp_path_factory.mktemp("official") / "tiny_in1k_ft.torch")
  ids, pixels, labels = pipeline_examples(eval_config(path, data_dir))
  rng = np.random.default_rng(0)
  state = random_trunk(rng)
  ranks = designed_ranks(rng, labels)
  state["head.weight"], state["head.bias"] = solved_head(
      rng, reference_features(state, pixels), labels, ranks)
  save_torch_zip(path, state)  # a plain state dict, as published (SPEC §6.2)
  designed = (int(np.sum(ranks == 1)), int(np.sum(ranks <= 5)))
  return dict(path=path, data_dir=data_dir, manual_dir=manual_dir, ids=ids, pixels=pixels,
              labels=labels, designed=designed)


@pytest.fixture(scope="module")
def one_process(official_file, tmp_path_factory):
  """mode=evaluate in this process (8 devices, one example each per batch)."""
  config = eval_config(official_file["path"], official_file["data_dir"])
  workdir = tmp_path_factory.mktemp("evaluate")
  stream = io.StringIO()
  results = evaluate.evaluate(config, str(workdir), stream=stream)
  return results["val"], stream.getvalue(), config


def counts(results):
  examples = results["examples"]
  return round(results["top1"] * examples), round(results["top5"] * examples), examples


# ---------------------------------------------------------------------------------- tests


def test_eval_pixels_are_the_official_test_transform(official_file):
  """The pixels both models see are torchvision's Resize(56, bicubic) + CenterCrop(48) of the
  stored JPEGs, computed here with Pillow (at most one level off, on a few pixels)."""
  with tarfile.open(os.path.join(official_file["manual_dir"], "ILSVRC2012_img_val.tar")) as tar:
    for name, pixels in zip(official_file["ids"], official_file["pixels"]):
      image = Image.open(io.BytesIO(tar.extractfile(name.decode()).read())).convert("RGB")
      assert image.size == RAW_SIZE[::-1]
      width = int(RESIZE_SIZE * RAW_SIZE[1] / RAW_SIZE[0])  # short side 56, long int(56*80/60)
      resized = np.asarray(image.resize((width, RESIZE_SIZE), Image.BICUBIC))
      top, left = round((RESIZE_SIZE - IMAGE_SIZE) / 2), round((width - IMAGE_SIZE) / 2)
      expected = resized[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE].astype(int)
      difference = np.abs(pixels.astype(int) - expected)
      assert difference.max() <= 1 and np.mean(difference > 0) < 0.005, name


def test_official_fine_tuned_file_evaluates_like_the_float64_reference(official_file,
                                                                       one_process):
  results, printed, config = one_process
  # The reference reads the file back: what the evaluator loaded, in torch layout.
  state = torch_reader.load(official_file["path"])
  assert state["head.weight"].shape == (NUM_CLASSES, 192)
  assert "trunk.decoder.pos_embed" not in state and "trunk.mask_token" not in state
  pixels, labels = official_file["pixels"], official_file["labels"]
  reference = reference_logits(state, pixels)
  predictions = reference.argmax(axis=1)
  assert len(set(predictions.tolist())) >= 2  # not a constant classifier
  top1, top5 = topk_counts(reference, labels)
  assert (top1, top5) == official_file["designed"]
  assert 0 < top1 < top5 < NUM_VALIDATION  # counts that can tell a wrong model apart

  # mode=evaluate: every example once (padding ignored), exactly the reference's hits.
  assert counts(results) == (top1, top5, NUM_VALIDATION)
  assert results["views"] == 1
  assert results["top1"] == pytest.approx(top1 / NUM_VALIDATION)
  assert "on 8 device(s)" in printed and f"examples {NUM_VALIDATION} " in printed

  # The loaded classifier's logits (the evaluator's loader and normalisation) are the
  # reference's to float32 accuracy, over all 1000 classes.
  model, params = evaluate.load_model(config)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, pixel_utils.normalize(x)))(
      params, pixels)
  np.testing.assert_allclose(np.asarray(logits), reference, rtol=1e-5, atol=1e-4)
  # Each example's six best classes are RANK_SPACING apart, far beyond float32 error: the counts
  # must agree exactly, not just closely.
  assert np.min(np.diff(np.sort(reference, axis=1)[:, -6:], axis=1)) > 0.4


def test_two_processes_count_every_example_once(official_file, one_process, tmp_path):
  """main.py mode=evaluate as two JAX processes (one CPU device each, 4 examples per process
  and batch; parts of 14 and 13 examples padded to 16): the one-process counts."""
  address = f"localhost:{free_port()}"
  flags = [f"--config=configs/evaluate.py:dataset=in1k,checkpoint={official_file['path']},"
           f"batch_size={GLOBAL_BATCH}", f"--workdir={tmp_path}",
           "--config.compute_dtype=float32", f"--config.data.data_dir={official_file['data_dir']}",
           f"--config.evals.val.source.image_size={IMAGE_SIZE}",
           f"--config.evals.val.source.resize_size={RESIZE_SIZE}",
           f"--coordinator_address={address}", "--num_processes=2"]
  procs = [main_py(*flags, f"--process_id={index}",
                   extra_env={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"})
           for index in range(2)]
  outputs = [proc.communicate(timeout=300) for proc in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  assert "on 2 device(s)" in outputs[0][0]
  with open(tmp_path / evaluate.RESULTS_FILE) as f:
    history = json.load(f)
  assert len(history) == 1  # written by process 0 only
  two = history[0]["results"]["val"]
  assert counts(two) == counts(one_process[0]) == official_file["designed"] + (NUM_VALIDATION,)
  assert two["top1"] == one_process[0]["top1"] and two["top5"] == one_process[0]["top5"]
