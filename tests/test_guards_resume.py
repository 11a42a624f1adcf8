"""Workdir guards of the training loop: a foreign optimizer state and a NaN loss.

Both runs use the tiny registered model on the embedded digits (a few seconds each).
"""

import os

import jax
import numpy as np
import pytest

from experiments import checkpointing, train
from tests import test_train_fixtures as fx


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  # Identical programs compiled by successive runs come from the cache.
  jax.config.update(
    'jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache'))
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield
  jax.config.update('jax_compilation_cache_dir', None)


def _snapshot(directory) -> dict[str, bytes]:
  """Every file under ``directory`` (relative path -> bytes)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def _restore(config, workdir):
  setup = train.build_setup(config)
  template = train.init_state(
    setup.model, setup.optimizer, config, config.train_imsize
  )
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'), max_to_keep=5, identity=setup.identity
  )
  try:
    return ckpt.all_steps(), ckpt.restore(template)
  finally:
    ckpt.close()


def test_same_model_other_optimizer_is_refused_and_untouched(tmp_path):
  config = fx.tiny_config(num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path), stop_at_step=3)
  before = _snapshot(tmp_path)
  assert any(p.startswith(os.path.join('checkpoints', '3')) for p in before)
  # Adam moments instead of a momentum buffer.
  other = fx.tiny_config(num_train_steps=3, **{'optimizer.name': 'adam'})
  # Same model, classes and kwargs: only the state tree's shape tells them apart.
  assert train.build_setup(other).identity == train.build_setup(config).identity
  with pytest.raises(
    ValueError, match='another model.*tree shapes.*nothing was changed'
  ):
    train.train_and_evaluate(other, str(tmp_path))
  after = _snapshot(tmp_path)
  assert sorted(after) == sorted(before)  # no corrupt/, nothing new
  assert after == before
  assert not os.path.exists(tmp_path / 'checkpoints' / 'corrupt')
  # The original configuration still resumes from its checkpoint.
  steps, restored = _restore(config, str(tmp_path))
  assert steps == [3] and int(restored.step) == 3


def test_nan_loss_between_checkpoints_stops_and_keeps_last_good(tmp_path):
  good = fx.tiny_config(num_train_steps=6)
  train.train_and_evaluate(good, str(tmp_path), stop_at_step=3)
  before = _snapshot(tmp_path / 'checkpoints')
  _, saved = _restore(good, str(tmp_path))
  # A NaN learning rate: step 4 starts from finite params (finite loss) and leaves NaN
  # params, so step 5's loss is the first NaN. No checkpoint is due before step 6, so
  # only the loss check can stop the run at step 5.
  bad = fx.tiny_config(
    num_train_steps=6,
    checkpoint_every_steps=100,
    log_every_steps=1,
    **{'optimizer.lr_per_256': float('nan')},
  )
  with pytest.raises(
    FloatingPointError,
    match=r'Training loss is nan at step 5.*checkpoint \(step 3\)',
  ):
    train.train_and_evaluate(bad, str(tmp_path))
  assert _snapshot(tmp_path / 'checkpoints') == before
  steps, restored = _restore(good, str(tmp_path))
  assert steps == [3]
  for x, y in zip(
    jax.tree_util.tree_leaves(restored),
    jax.tree_util.tree_leaves(saved),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert all(
    np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(restored.params)
  )
