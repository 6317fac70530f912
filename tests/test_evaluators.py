"""Evaluator arithmetic on fixed logits: top-1/top-5, padded examples, view averaging, k-NN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnimae_jax.train import evaluators


def test_topk_counts_are_exact_and_ignore_padding():
  scores = jnp.asarray([
      [9., 1, 2, 3, 4, 5, 0],  # label 0: top-1 hit
      [1., 9, 8, 7, 6, 5, 0],  # label 5: rank 5, a top-5 hit only
      [1., 9, 8, 7, 6, 5, 0],  # label 6: rank 7, a miss
      [0., 0, 0, 0, 0, 0, 9],  # padded: label -1, invalid; would be a miss
      [0., 0, 0, 0, 0, 0, 9],  # padded with a label that would hit: must not count
  ])
  labels = jnp.asarray([0, 5, 6, -1, 6])
  valid = jnp.asarray([True, True, True, False, False])
  hits1, hits5, examples = (float(x) for x in evaluators.topk_counts(scores, labels, valid))
  assert (hits1, hits5, examples) == (1.0, 2.0, 3.0)


def test_fewer_than_five_classes_use_every_class_for_top5():
  scores = jnp.asarray([[0.1, 0.9, 0.0]])
  hits1, hits5, examples = evaluators.topk_counts(scores, jnp.asarray([2]), jnp.asarray([True]))
  assert (float(hits1), float(hits5), float(examples)) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("view_chunk", [1, 3, 5, 15, 4])  # 4 does not divide 15: one at a time
@pytest.mark.parametrize("average", ["logits", "softmax"])
def test_view_averaging_in_chunks_equals_the_plain_mean(view_chunk, average):
  rng = np.random.default_rng(0)
  batch, views, classes = 3, 15, 7
  pixels = jnp.asarray(rng.normal(size=(batch, views, 2, 4, 4, 3)), jnp.float32)
  projection = jnp.asarray(rng.normal(size=(2 * 4 * 4 * 3, classes)), jnp.float32)

  def apply(view_pixels):  # a "model": fixed logits from each view's pixels
    return view_pixels.reshape(view_pixels.shape[0], -1) @ projection

  got = evaluators.view_averaged_logits(apply, pixels, view_chunk=view_chunk, average=average)
  per_view = np.stack([np.asarray(apply(pixels[:, v])) for v in range(views)])  # [V, B, C]
  if average == "softmax":
    per_view = np.asarray(jax.nn.softmax(per_view, axis=-1))
  np.testing.assert_allclose(np.asarray(got), per_view.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_an_image_batch_is_one_view():
  pixels = jnp.ones((2, 4, 4, 3))
  got = evaluators.view_averaged_logits(lambda p: p.reshape(2, -1)[:, :3], pixels, view_chunk=3,
                                        average="logits")
  np.testing.assert_array_equal(np.asarray(got), np.ones((2, 3)))


def test_knn_votes_by_similarity_weighted_neighbours():
  train = np.asarray([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
  train /= np.linalg.norm(train, axis=1, keepdims=True)
  labels = np.asarray([0, 0, 1, 1, 1])
  queries = np.asarray([[1.0, 0.05], [0.05, 1.0]])
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  np.testing.assert_array_equal(
      evaluators.knn_predict(train, labels, queries, k=2, temperature=0.07, num_classes=2),
      [0, 1])
  # With every neighbour voting, class 1 (three close-ish examples) can outvote class 0 only
  # when the temperature flattens the weights: a low temperature keeps the nearest in charge.
  assert evaluators.knn_predict(train, labels, queries[:1], k=5, temperature=0.01,
                                num_classes=2)[0] == 0
  assert evaluators.knn_predict(train, labels, queries[:1], k=5, temperature=100.0,
                                num_classes=2)[0] == 1
