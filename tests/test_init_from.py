"""Retraining on new data (config.init_from) and a run's workdir as the input of predict/eval.

A finished tiny run on the embedded digits is the source; new runs start from it on the same
classes and on a 3-class image folder that the test writes.
"""

import logging
import os

import jax
import numpy as np
import PIL.Image
import pytest

from data import embedded_mnist, preprocess
from experiments import evaluate, init_from, predict, run_info, train
from tests import test_train_fixtures as fx

# Four steps, the first three of them warmup: the first update has learning rate 0, so the
# params after step 1 are the params the run started from.
STEPS = dict(
  num_train_steps=4,
  checkpoint_every_steps=2,
  **{'optimizer.warmup_epochs': 0.02},
)


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  jax.config.update(
    'jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache'))
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield
  jax.config.update('jax_compilation_cache_dir', None)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A finished tiny run on the digits: (workdir, final host state)."""
  workdir = str(tmp_path_factory.mktemp('source'))
  result = train.train_and_evaluate(fx.tiny_config(**STEPS), workdir)
  assert not result['stopped_early']
  return workdir, jax.device_get(result['state'])


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _first_state(config):
  setup = train.build_setup(config)
  template = train.init_state(
    setup.model, setup.optimizer, config, setup.train_imsize
  )
  state = init_from.initial_state(
    jax.device_get(template), config, setup.model, setup.optimizer
  )
  return setup, jax.device_get(template), state


def test_same_classes_start_from_the_source_ema_params(source, tmp_path):
  src, src_state = source
  # The EMA and raw params of the source differ, so the choice is visible.
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(_leaves(src_state.ema_params), _leaves(src_state.params))
  )
  config = fx.tiny_config(init_from=src, seed=1, **STEPS)
  setup, template, state = _first_state(config)
  _assert_trees_equal(state.params, src_state.ema_params)  # classifier too
  _assert_trees_equal(state.ema_params, src_state.ema_params)
  # A fresh optimizer: the state optax gives these params, not the source's momentum.
  _assert_trees_equal(
    state.opt_state, jax.device_get(setup.optimizer.init(state.params))
  )
  assert int(state.step) == 0
  # init_from_ema=False takes the raw params.
  config.init_from_ema = False
  _assert_trees_equal(_first_state(config)[2].params, src_state.params)

  # The loop starts from them: with the first step's learning rate 0 the params after it
  # are the source's EMA params, bit for bit.
  config.init_from_ema = True
  first = train.train_and_evaluate(config, str(tmp_path / 'w'), stop_at_step=1)
  assert first['history'][0][1]['lr'] == 0.0
  _assert_trees_equal(first['state'].params, src_state.ema_params)


def test_resumed_init_from_run_equals_an_unbroken_one(source, tmp_path):
  src, _ = source
  config = fx.tiny_config(init_from=src, **STEPS)
  unbroken = train.train_and_evaluate(config, str(tmp_path / 'a'))
  first = train.train_and_evaluate(config, str(tmp_path / 'b'), stop_at_step=2)
  # The resumed piece resumes its own checkpoint and never reads the source: it is gone.
  moved = src + '.moved'
  os.rename(src, moved)
  try:
    second = train.train_and_evaluate(config, str(tmp_path / 'b'))
  finally:
    os.rename(moved, src)
  losses = [(s, m['loss']) for s, m in first['history'] + second['history']]
  assert losses == [(s, m['loss']) for s, m in unbroken['history']]
  _assert_trees_equal(second['state'], unbroken['state'])
  # And the source mattered: a run from random init has other losses.
  scratch = train.train_and_evaluate(
    fx.tiny_config(**STEPS), str(tmp_path / 'c')
  )
  assert scratch['history'][0][1]['loss'] != unbroken['history'][0][1]['loss']


def _write_folder(root, classes=('ant', 'bee', 'cat'), per_class=5):
  for c, name in enumerate(classes):
    os.makedirs(os.path.join(root, name))
    rng = np.random.RandomState(c)
    for i in range(per_class):
      pixels = np.full((20, 24, 3), 80 * c, np.uint8)
      pixels += rng.randint(0, 40, pixels.shape).astype(np.uint8)
      PIL.Image.fromarray(pixels).save(os.path.join(root, name, f'{i}.png'))


@pytest.fixture(scope='module')
def folder_run(source, tmp_path_factory):
  """A run on a 3-class folder started from the 10-class digit run."""
  src, _ = source
  base = tmp_path_factory.mktemp('folder')
  root = str(base / 'photos')
  _write_folder(root)
  config = fx.tiny_config(
    dataset=f'folder:{root}',
    data_dir=str(base / 'tfds'),
    init_from=src,
    eval_split='test',
    train_batch_size=4,
    eval_batch_size=4,
    num_train_steps=2,
    checkpoint_every_steps=2,
  )
  workdir = str(base / 'run')
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result, root


class _Records(logging.Handler):
  """Collects log records of the absl logger, whatever earlier tests did to
  the root logger's handlers (absl.app.run installs its own)."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_other_classes_reinitialise_the_classifier(source, folder_run):
  _, src_state = source
  config, _, result, _ = folder_run
  records = _Records()
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.addHandler(records)
  absl_logger.setLevel(logging.INFO)
  try:
    _, template, state = _first_state(config)
  finally:
    absl_logger.removeHandler(records)
    absl_logger.setLevel(level)
  text = '\n'.join(records.messages)
  classifier = init_from.classifier_module(state.params)
  assert classifier == 'TinyNet/linear'  # built in __call__
  assert state.params[classifier]['w'].shape == (16, 3)
  assert src_state.ema_params[classifier]['w'].shape == (16, 10)
  # The new classifier is the model's own initialisation of this run...
  _assert_trees_equal(state.params[classifier], template.params[classifier])
  assert 're-initialised' in text and '(16, 10)' in text
  # ...and every other tensor is the source's EMA tensor.
  for module, leaves in src_state.ema_params.items():
    if module != classifier:
      _assert_trees_equal(state.params[module], leaves)
  assert result['eval']['count'] == 3
  assert result['state'].params[classifier]['w'].shape == (16, 3)


def test_bad_sources_say_what_is_wrong(source, tmp_path):
  src, _ = source
  config = fx.tiny_config(init_from=str(tmp_path / 'nothing'))
  with pytest.raises(FileNotFoundError, match='neither a training workdir'):
    _first_state(config)
  config.init_from = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='no checkpoints/ directory'):
    _first_state(config)
  config.init_from = src
  config.model_kwargs.width = 24  # another trunk
  with pytest.raises(ValueError, match='does not fit .* apart from the'):
    _first_state(config)


def _digit_png(path, index):
  images, labels = embedded_mnist.load_digits()
  PIL.Image.fromarray(images[index, ..., 0]).save(path)
  return np.repeat(images[index], 3, axis=-1), int(labels[index])


def test_predict_workdir_prints_the_run_class_names(
  source, folder_run, tmp_path, capsys
):
  src, src_state = source
  # The digit run: names '0'..'9'; the EMA params; the run's 'resize' preprocessing.
  image, _ = _digit_png(tmp_path / 'digit.png', 7)
  got = predict.run_workdir(src, [str(tmp_path / 'digit.png')])[0]
  config = run_info.read_config(src)
  model = train.create_model(config, 10)
  batch = preprocess.eval_image(image, 32, 'resize')[None]
  out, _ = model.apply(
    src_state.ema_params, {}, jax.random.PRNGKey(0), batch, False
  )
  logits = np.asarray(out['logits'][0])
  top5 = np.argsort(-logits, kind='stable')[:5]
  assert [name for name, _ in got] == [str(i) for i in top5]
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  np.testing.assert_allclose([p for _, p in got], probs[top5], rtol=1e-5)
  # The folder run: its own class names, all three (fewer than five classes).
  _, workdir, _, root = folder_run
  photo = os.path.join(root, 'bee', '0.png')
  rows = predict.run_workdir(workdir, [photo])[0]
  assert sorted(name for name, _ in rows) == ['ant', 'bee', 'cat']
  assert 'bee' in capsys.readouterr().out


def test_eval_workdir_uses_the_recorded_config_and_any_split(folder_run):
  _, workdir, result, _ = folder_run
  config = run_info.read_config(workdir)
  assert config.dataset.startswith('folder:')
  again = evaluate.evaluate_checkpoint(config, workdir)
  for key in ('top1', 'top5', 'loss', 'count'):
    assert again[key] == pytest.approx(result['eval'][key], rel=1e-6)
  # The dataset's own split names with TFDS slicing, not only the fixed four.
  half = evaluate.evaluate_checkpoint(config, workdir, split='train[:50%]')
  assert half['count'] == 6  # half of the 12 train images (15 less 3 held out)


def test_a_workdir_without_a_recorded_config_says_so(tmp_path):
  with pytest.raises(ValueError, match='records no config'):
    run_info.read_config(str(tmp_path))
