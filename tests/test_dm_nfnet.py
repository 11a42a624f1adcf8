"""dm_nfnet_f*: timm's numerics (exact GELU, WS eps 1e-5 inside the variance)."""

import os

import jax
import numpy as np
import pytest

import nfnets
from nfnets import layers, weights

FIXTURE = os.path.join(
  os.path.dirname(__file__), 'fixtures', 'timm_dm_nfnet_tiny.npz'
)
TINY = dict(num_classes=10, width=0.0625, group_size=8)


def _logits(name, params, images):
  model = nfnets.create_model(name, **TINY)
  fn = jax.jit(lambda p: model.apply(p, {}, None, images, False)[0]['logits'])
  return np.asarray(fn(params))


def test_timm_dm_nfnet_logits_match_only_with_timm_numerics():
  with np.load(FIXTURE) as data:
    sd = {k[3:]: data[k] for k in data.files if k.startswith('sd/')}
    images, timm_logits = data['images'], data['logits']
  params = weights.from_timm(sd)
  scale = np.abs(timm_logits).max()
  # Measured 1.1e-6 (float32 rounding).
  assert np.abs(_logits('dm_nfnet_f0', params, images) - timm_logits).max() < (
    1e-5 * scale
  )
  # The official numerics are visibly off on this fixture (measured 8.7e-2).
  assert np.abs(_logits('nfnet_f0', params, images) - timm_logits).max() > (
    1e-2 * scale
  )


def test_timm_eps_form_closed_form():
  rng = np.random.default_rng(0)
  w = rng.normal(0, 3e-3, (3, 3, 4, 5)).astype(np.float32)
  gain = rng.uniform(0.5, 1.5, (5,)).astype(np.float32)
  mean, var = w.mean(axis=(0, 1, 2)), w.var(axis=(0, 1, 2))
  expected = (w - mean) / np.sqrt(var + 1e-5) * gain / np.sqrt(36)
  for grad_by_dot in (False, True):
    got = layers.standardize_weight(
      w, gain, 1e-5, grad_by_dot=grad_by_dot, eps_inside=True
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Gradients of both implementations agree (the closed-form one is the CPU path).
  loss = lambda gd: (
    lambda w, g: (
      layers.standardize_weight(w, g, 1e-5, grad_by_dot=gd, eps_inside=True)
      * np.arange(180, dtype=np.float32).reshape(w.shape)
    ).sum()
  )
  auto = jax.grad(loss(False), argnums=(0, 1))(w, gain)
  dot = jax.grad(loss(True), argnums=(0, 1))(w, gain)
  for a, b in zip(auto, dot):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


@pytest.mark.parametrize('variant', ['f0', 'f1'])
def test_same_parameters_as_nfnet(variant):
  ours = nfnets.create_model(f'nfnet_{variant}').param_shapes(64)
  timm = nfnets.create_model(f'dm_nfnet_{variant}').param_shapes(64)
  assert weights.compare_params(timm, ours).ok


def test_standardized_eval_folds_timm_numerics():
  # The evaluator's path: each conv folded with its own numerics (recorded from the model)
  # gives the unfolded forward's logits; folding dm_nfnet the official way is refused.
  from experiments import train

  model = nfnets.create_model('dm_nfnet_f0', **TINY)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  params, state = model.init(jax.random.PRNGKey(0), images)
  # Tiny weights, where eps inside the variance differs most from the official floor.
  params = jax.tree_util.tree_map_with_path(
    lambda path, p: p * 1e-3 if path[-1].key == 'w' else p, params
  )
  expected = _logits('dm_nfnet_f0', params, images)
  numerics = train.ws_numerics(model)
  assert numerics and set(numerics.values()) == {layers.TIMM_WS}

  def folded_logits(folded, numerics):
    with layers.standardized_weights(numerics):
      return model.apply(folded, state, None, images, False)[0]['logits']

  folded = layers.standardize_params(params, numerics)
  got = jax.jit(lambda p: folded_logits(p, numerics))(folded)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  official = layers.standardize_params(params)
  with pytest.raises(ValueError, match='numerics'):
    folded_logits(official, layers.OFFICIAL_WS)
  # The official fold really is different numbers on these weights.
  assert not np.allclose(
    official['NFNet/~/stem_conv0']['w_standardized'],
    folded['NFNet/~/stem_conv0']['w_standardized'],
    rtol=1e-3,
  )
