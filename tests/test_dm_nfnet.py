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
