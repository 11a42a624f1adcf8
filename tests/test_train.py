"""The training loop end to end on the tiny model: exact resume, bad checkpoints, NaN stop."""

import os

import jax
import numpy as np
import pytest

from data import pipeline
from experiments import checkpointing, train
from tests import test_train_fixtures as fx


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  # Identical programs compiled by successive runs come from the cache (keeps tests fast).
  jax.config.update(
    'jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache'))
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield
  jax.config.update('jax_compilation_cache_dir', None)


def _losses(result):
  return [(step, m['loss']) for step, m in result['history']]


def _assert_trees_equal(a, b):
  for x, y in zip(
    jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resumed_run_matches_unbroken_run_exactly(tmp_path):
  config = fx.tiny_config(
    **{'model_kwargs.drop_rate': 0.3}
  )  # dropout: rngs must resume too
  unbroken = train.train_and_evaluate(config, str(tmp_path / 'a'))
  first = train.train_and_evaluate(config, str(tmp_path / 'b'), stop_at_step=4)
  assert first['stopped_early'] and first['eval'] is None
  second = train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert [s for s, _ in _losses(first)] == [1, 2, 3, 4]
  assert [s for s, _ in _losses(second)] == [5, 6]
  assert _losses(first) + _losses(second) == _losses(
    unbroken
  )  # bit-for-bit equal floats
  _assert_trees_equal(second['state'], unbroken['state'])
  assert second['eval'] == {
    **unbroken['eval'],
    'images_per_sec': second['eval']['images_per_sec'],
  }
  # Each example of the 1,000-digit test split is counted once.
  assert unbroken['eval']['count'] == 1000
  # The losses moved: this is training, not a constant.
  assert len({loss for _, loss in _losses(unbroken)}) == 6
  # metrics.jsonl and TensorBoard events were written.
  assert os.path.exists(tmp_path / 'a' / 'metrics.jsonl')
  assert any(
    f.startswith('events.out.tfevents')
    for f in os.listdir(tmp_path / 'a' / 'tb')
  )


def _snapshot(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def test_checkpoint_dir_of_another_model_is_refused_and_untouched(tmp_path):
  config = fx.tiny_config(num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path), stop_at_step=3)
  before = _snapshot(tmp_path / 'checkpoints')
  other = fx.tiny_config(num_train_steps=3, **{'model_kwargs.width': 24})
  with pytest.raises(ValueError, match='another model.*width'):
    train.train_and_evaluate(other, str(tmp_path))
  assert _snapshot(tmp_path / 'checkpoints') == before


def test_corrupt_newest_checkpoint_falls_back_to_older(tmp_path, caplog):
  config = fx.tiny_config()
  setup = train.build_setup(config)
  template = train.init_state(setup.model, setup.optimizer, config, 32)
  ckpt = checkpointing.Checkpointer(
    str(tmp_path), max_to_keep=5, identity=setup.identity
  )
  host = jax.device_get(template)
  ckpt.save(host._replace(step=np.int32(3)), 3)
  ckpt.save(host._replace(step=np.int32(6)), 6)
  ckpt.close()
  # Truncate every data file of checkpoint 6 (a partial copy / bad disk).
  for root, _, files in os.walk(tmp_path / '6' / 'state'):
    for name in files:
      open(os.path.join(root, name), 'wb').close()
  ckpt = checkpointing.Checkpointer(
    str(tmp_path), max_to_keep=5, identity=setup.identity
  )
  restored = ckpt.restore(template)
  assert int(restored.step) == 3
  assert 'Checkpoint 6' in caplog.text and 'unreadable' in caplog.text
  assert ckpt.all_steps() == [3]
  assert os.listdir(tmp_path / 'corrupt')  # moved aside, not deleted
  ckpt.close()


def test_nan_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
  config = fx.tiny_config(num_train_steps=6)
  train.train_and_evaluate(config, str(tmp_path), stop_at_step=3)
  before = _snapshot(tmp_path / 'checkpoints')
  bad = fx.tiny_config(
    num_train_steps=6,
    checkpoint_every_steps=1,
    **{'optimizer.lr_per_256': float('nan')},
  )
  with pytest.raises(FloatingPointError, match=r'NaN.*step 3\)'):
    train.train_and_evaluate(bad, str(tmp_path))
  assert _snapshot(tmp_path / 'checkpoints') == before


def test_loss_with_mixed_labels_and_smoothing_matches_closed_form():
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32))
  batch = {
    'labels': np.array([0, 2]),
    'mix_labels': np.array([1, 0]),
    'ratio': np.array([0.75, 0.5], np.float32),
  }
  s = 0.3

  def ce(p, label):  # targets (1 - s) one-hot + s / 3
    t = np.full(3, s / 3)
    t[label] += 1 - s
    return -np.sum(t * np.log(p))

  p = np.exp(logits)
  expected = np.mean(
    [
      0.75 * ce(p[0], 0) + 0.25 * ce(p[0], 1),
      0.5 * ce(p[1], 2) + 0.5 * ce(p[1], 0),
    ]
  )
  np.testing.assert_allclose(
    train.train_loss(logits, batch, s), expected, rtol=1e-6
  )


def test_sigterm_checkpoints_and_stops(tmp_path):
  import signal

  from data import pipeline

  config = fx.tiny_config(checkpoint_every_steps=100)

  def batches_fn(start):
    it = pipeline.build_input(
      config.dataset,
      config.train_split,
      is_training=True,
      batch_dims=[1, 16],
      image_size=32,
      start_step=start,
    )
    for i, batch in enumerate(it):
      # Preempted while step 3 runs: the loop pulls batches PREFETCH_BATCHES ahead.
      if i == 2 + train.PREFETCH_BATCHES:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  result = train.train_and_evaluate(
    config, str(tmp_path), batches_fn=batches_fn
  )
  assert result['stopped_early'] and result['eval'] is None
  assert int(result['state'].step) == 3
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']


def test_dataset_smaller_than_one_batch_is_warned_about(caplog):
  # A batch larger than the split: every batch repeats examples.
  n = pipeline.num_examples('embedded_mnist', 'train', None)
  with caplog.at_level('WARNING'):
    setup = train.build_setup(fx.tiny_config(train_batch_size=n + 1))
  assert setup.steps_per_epoch == n / (n + 1)
  messages = [r.getMessage() for r in caplog.records]
  assert any(
    f'embedded_mnist/train has {n} examples, fewer than one batch of {n + 1}'
    in m
    for m in messages
  ), messages
  caplog.clear()
  with caplog.at_level('WARNING'):
    train.build_setup(fx.tiny_config(train_batch_size=n))
  assert not [r for r in caplog.records if 'fewer than one' in r.getMessage()]
