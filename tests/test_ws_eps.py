"""The weight-standardization eps, on kernels whose per-unit variance is near it.

Official (deepmind-research/nfnets ``base.WSConv2D``):
``scale = rsqrt(max(var * fan_in, 1e-4)) * gain``. Units here span var * fan_in from 1e-7 to
10, so both sides of the max are exercised, and ``var + eps``, ``var * fan_in + eps`` or another
eps change most of the elements.
"""

import jax
import numpy as np
import pytest

from nfnets import layers

EPS = 1e-4


def _kernel():
  """3x3x8 -> 32 kernel; unit o has std 10 ** (-5 + 4.5 * o / 31) (var * fan_in 7e-9 .. 7)."""
  rng = np.random.default_rng(0)
  std = 10.0 ** np.linspace(-5.0, -0.5, 32)
  w = rng.normal(size=(3, 3, 8, 32)) * std + rng.normal(size=32) * std
  gain = rng.uniform(0.5, 2.0, size=32)
  return w.astype(np.float32), gain.astype(np.float32)


def _oracle(w, gain, eps):
  w = w.astype(np.float64)
  fan_in = np.prod(w.shape[:-1])
  mean = w.mean(axis=(0, 1, 2), keepdims=True)
  var = w.var(axis=(0, 1, 2), keepdims=True)
  return (w - mean) / np.sqrt(np.maximum(var * fan_in, eps)) * gain


def test_official_eps():
  assert layers.WS_EPS == EPS


@pytest.mark.parametrize('grad_by_dot', [False, True])
def test_standardize_weight_matches_max_var_fan_in_eps(grad_by_dot):
  w, gain = _kernel()
  got = np.asarray(
    jax.jit(
      lambda w, g: layers.standardize_weight(w, g, grad_by_dot=grad_by_dot)
    )(w, gain)
  )
  want = _oracle(w, gain, EPS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # Both branches of the max occur, and the alternatives are clearly different on many
  # elements (each wrong formula must fail the assertion above on > 25% of them).
  var_n = w.astype(np.float64).var(axis=(0, 1, 2)) * np.prod(w.shape[:-1])
  assert (var_n < EPS).sum() >= 8 and (var_n > EPS).sum() >= 8
  fan_in = np.prod(w.shape[:-1])
  mean = w.astype(np.float64).mean(axis=(0, 1, 2), keepdims=True)
  var = w.astype(np.float64).var(axis=(0, 1, 2), keepdims=True)
  wrong = {
    'var + eps': (w - mean) / np.sqrt(var + EPS) * gain,
    'var * fan_in + eps': (w - mean) / np.sqrt(var * fan_in + EPS) * gain,
    'eps 1e-5': _oracle(w, gain, 1e-5),
  }
  for name, value in wrong.items():
    off = ~np.isclose(got, value, rtol=1e-4, atol=1e-6)
    assert off.mean() > 0.25, name
