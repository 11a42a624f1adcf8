"""EfficientNet through the trainer: BatchNorm statistics in state, checkpointed, restored."""

import shutil

import jax
import ml_collections
import numpy as np
import pytest

from experiments import train
from tests import test_train_fixtures as fx


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  # The resumed run compiles the same programs as the first; the cache keeps that cheap.
  jax.config.update(
    'jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache'))
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield
  jax.config.update('jax_compilation_cache_dir', None)


def _config(**overrides) -> ml_collections.ConfigDict:
  config = fx.tiny_config(
    num_train_steps=2, checkpoint_every_steps=1, **overrides
  )
  config.model = 'efficientnet_b0'
  # The narrowest, shallowest B0 (8-channel stem, one MBConv block per stage) at 32 px
  # keeps compilation short; every kind of block and BatchNorm is still there.
  config.model_kwargs = ml_collections.ConfigDict(
    dict(width=0.1, depth=0.1, drop_rate=0.2)
  )
  return config


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_efficientnet_trains_checkpoints_and_resumes_exactly(tmp_path):
  config = _config()
  unbroken = train.train_and_evaluate(config, str(tmp_path / 'a'))
  # Resume a copy of that run from its step-1 checkpoint (saves a third run).
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '2')
  second = train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert [s for s, _ in second['history']] == [2]
  # Resuming restores params, optimizer and the BatchNorm statistics bit for bit.
  for x, y in zip(
    _leaves(second['state']), _leaves(unbroken['state']), strict=True
  ):
    np.testing.assert_array_equal(x, y)
  stats = unbroken['state'].model_state
  assert stats['EfficientNet/~/bn1']['mean'].shape == (8,)
  # Two steps at momentum 0.99 moved the running statistics off their init (0, 1).
  assert np.abs(np.asarray(stats['EfficientNet/~/bn1']['mean'])).max() > 0
  assert not np.allclose(np.asarray(stats['EfficientNet/~/bn1']['var']), 1.0)
  assert len({m['loss'] for _, m in unbroken['history']}) == 2
  assert unbroken['eval']['count'] == 1000
