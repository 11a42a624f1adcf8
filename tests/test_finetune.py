"""Fine-tuning: published-format weights in, new classifier, a few steps on the digits."""

import jax
import numpy as np
import pytest

import nfnets
from experiments import config_lib, init_from, train
from nfnets import weights

TINY_KWARGS = dict(
  width=0.125, group_size=16, drop_rate=0.0, stochdepth_rate=0.0
)


def _official_file(tmp_path):
  """An official-format pickle of a 1000-class tiny NFNet with non-default values."""
  model = nfnets.create_model(
    'nfnet_f0', num_classes=1000, width=0.125, group_size=16
  )
  shapes = model.param_shapes(32)
  rng = np.random.default_rng(0)
  params = {
    m: {
      n: rng.normal(size=s.shape).astype(np.float32) for n, s in leaves.items()
    }
    for m, leaves in shapes.items()
  }
  path = tmp_path / 'F0_haiku.npz'
  weights.save_official(path, params)
  return path, params


def _first_state(config, image_size=32):
  """The state a new run starts from (what train_and_evaluate trains from at step 0)."""
  setup = train.build_setup(config)
  template = train.init_state(setup.model, setup.optimizer, config, image_size)
  return init_from.initial_state(
    jax.device_get(template), config, setup.model, setup.optimizer
  )


@pytest.mark.parametrize('field', ['init_from', 'pretrained'])
def test_finetune_starts_from_the_file_with_a_new_classifier(tmp_path, field):
  path, published = _official_file(tmp_path)
  config = config_lib.get_config(
    'finetune',
    [
      f'{field}={path}',
      'train_imsize=32',
      'eval_imsize=32',
      'num_train_steps=2',
      'train_batch_size=16',
      'eval_batch_size=500',
      'checkpoint_every_steps=2',
    ],
  )
  config.model_kwargs.update(TINY_KWARGS)
  state = _first_state(config)
  for module, leaves in published.items():
    for name, value in leaves.items():
      got = np.asarray(state.params[module][name])
      if module == weights.CLASSIFIER:
        continue
      np.testing.assert_array_equal(got, value, err_msg=f'{module}/{name}')
  classifier = np.asarray(state.params[weights.CLASSIFIER]['w'])
  assert classifier.shape == (
    384,
    10,
  )  # the digits have 10 classes, the file 1000
  assert classifier.std() == pytest.approx(0.01, rel=0.1)
  if (
    field == 'pretrained'
  ):  # the alias is the same mechanism: training ran above
    return
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['eval']['count'] == 1000
  assert all(np.isfinite(m['loss']) for _, m in result['history'])
  moved = jax.tree_util.tree_leaves(
    jax.tree_util.tree_map(
      lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
      jax.device_get(result['state'].params),
      jax.device_get(state.params),
    )
  )
  assert max(moved) > 0  # the weights were trained, not only loaded


def test_finetune_requires_weights():
  config = config_lib.get_config('finetune')
  with pytest.raises(ValueError, match='--config.init_from=WORKDIR_OR_WEIGHTS'):
    _first_state(config)
  config.pretrained = '/a.npz'
  config.init_from = '/b.npz'
  with pytest.raises(ValueError, match='set only init_from'):
    _first_state(config)


def test_finetune_rejects_weights_of_another_model(tmp_path):
  path, _ = _official_file(tmp_path)
  config = config_lib.get_config(
    'finetune', [f'pretrained={path}']
  )  # full-width F0
  with pytest.raises(ValueError, match='does not fit nfnet_f0'):
    _first_state(config)
