"""Gamma constants against quadrature, closed forms and the scaled functions."""

import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import activations


@pytest.mark.parametrize('name', sorted(set(activations.GAMMAS) - {'identity'}))
def test_published_gamma_matches_estimate(name):
  # The published constants came from mean(var(f(z), axis=1)) ** -0.5 on rows of 1024 inputs;
  # the quadrature reproduces that estimator's expectation in float64.
  estimate = activations.estimate_named_gamma(name, official_recipe=True)
  assert estimate == pytest.approx(activations.GAMMAS[name], rel=1e-3)


def test_relu_gamma_closed_form():
  # var(relu(z)) = 1/2 - 1/(2*pi) for z ~ N(0, 1).
  exact = 1.0 / np.sqrt(0.5 - 1.0 / (2 * np.pi))
  assert activations.estimate_named_gamma('relu') == pytest.approx(
    exact, rel=1e-7
  )


def test_glu_gamma_closed_form_from_sigmoid():
  # glu(a, b) = a * sigmoid(b) with independent a, b: var = E[sigmoid(b)^2].
  sig_var = activations.estimate_named_gamma('sigmoid') ** -2
  exact = 1.0 / np.sqrt(sig_var + 0.25)
  assert activations.estimate_named_gamma('glu') == pytest.approx(
    exact, rel=1e-6
  )


def test_estimate_gamma_for_custom_function():
  # A linear map a*z + b has std |a|.
  assert activations.estimate_gamma(lambda z: 3.0 * z + 1.0) == pytest.approx(
    1 / 3, rel=1e-9
  )


def test_scaled_activation_unit_variance_on_samples():
  z = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
  for name in ('gelu', 'relu', 'silu', 'tanh'):
    y = np.asarray(activations.get_activation(name)(jnp.asarray(z)))
    assert y.std() == pytest.approx(1.0, abs=3e-3), name


def test_unknown_activation_lists_accepted():
  with pytest.raises(ValueError, match=r"Unknown activation 'swishy'.*gelu"):
    activations.get_activation('swishy')


def test_constant_function_rejected():
  with pytest.raises(ValueError, match='zero variance'):
    activations.estimate_gamma(lambda z: 0.0 * z)
