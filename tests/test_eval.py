"""Evaluation counts every example once: padded batches are masked, totals are exact."""

import numpy as np

from experiments import train
from tests import test_train_fixtures as fx


def _setup(**overrides):
  config = fx.tiny_config(**overrides)
  setup = train.build_setup(config)
  state = train.init_state(setup.model, setup.optimizer, config, 32)
  return config, setup, state


def test_masked_padding_is_not_counted_and_metrics_match_numpy():
  config, setup, state = _setup(eval_batch_size=4)
  rng = np.random.RandomState(1)
  images = rng.randn(7, 32, 32, 3).astype(np.float32)
  labels = rng.randint(0, 10, 7).astype(np.int32)
  # Two batches of 4 (one device): the second holds 3 real examples and 1 padded one whose
  # label would change the totals if it were counted.
  pad_images = np.concatenate([images, np.zeros((1, 32, 32, 3), np.float32)])
  pad_labels = np.concatenate([labels, [0]]).astype(np.int32)
  mask = np.arange(8) < 7
  batches = [
    {
      'images': pad_images[i : i + 4][None],
      'labels': pad_labels[i : i + 4][None],
      'mask': mask[i : i + 4][None],
    }
    for i in (0, 4)
  ]
  evaluator = train.Evaluator(setup.model, config)
  result = evaluator.run(
    train.replicate(state.params),
    train.replicate(state.model_state),
    split='test',
    image_size=32,
    batches=batches,
  )
  # Independent numbers: apply the model once on the 7 real images, compute with NumPy.
  out, _ = setup.model.apply(
    state.params, state.model_state, None, images, is_training=False
  )
  logits = np.asarray(out['logits'], np.float64)
  logp = (
    logits
    - np.log(
      np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True)
    )
    - logits.max(1, keepdims=True)
  )
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert result['count'] == 7
  np.testing.assert_allclose(
    result['top1'], np.mean(logits.argmax(1) == labels)
  )
  np.testing.assert_allclose(
    result['top5'], np.mean([y in t for y, t in zip(labels, top5)])
  )
  np.testing.assert_allclose(
    result['loss'], -np.mean(logp[np.arange(7), labels]), rtol=1e-5
  )


def test_real_split_with_uneven_last_batch_counts_each_example_once():
  config, setup, state = _setup(
    eval_batch_size=300
  )  # 1,000 = 3 x 300 + 100 (+ padding)
  evaluator = train.Evaluator(setup.model, config)
  result = evaluator.run(
    train.replicate(state.params),
    train.replicate(state.model_state),
    split='test',
    image_size=32,
  )
  assert result['count'] == 1000
  assert 0.0 <= result['top1'] <= result['top5'] <= 1.0
  assert result['images_per_sec'] > 0  # timed over the batches after the first
