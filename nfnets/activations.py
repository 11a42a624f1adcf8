"""Gamma-scaled nonlinearities.

An NF network keeps every residual branch input at unit variance without normalization, so each
activation ``f`` is multiplied by ``gamma = 1 / std(f(z))`` for ``z ~ N(0, 1)`` (NF-ResNet paper,
Section 4). The constants below are the official release's; :func:`estimate_gamma` recomputes
them (and any new activation's) by quadrature over the standard normal density.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Activation = Callable[[jax.Array], jax.Array]

# Official constants (deepmind-research/nfnets base.py), gamma = 1/std(f(z)).
GAMMAS: dict[str, float] = {
  'identity': 1.0,
  'celu': 1.270926833152771,
  'elu': 1.2716004848480225,
  'gelu': 1.7015043497085571,
  # timm's dm_nfnet_f* use the exact (erf) GELU with the official tanh-GELU constant.
  'gelu_exact': 1.7015043497085571,
  'glu': 1.8484294414520264,
  'leaky_relu': 1.70590341091156,
  'log_sigmoid': 1.9193484783172607,
  'relu': 1.7139588594436646,
  'relu6': 1.7131484746932983,
  'selu': 1.0008515119552612,
  'sigmoid': 4.803835391998291,
  'silu': 1.7881293296813965,
  'soft_sign': 2.338853120803833,
  'softplus': 1.9203323125839233,
  'tanh': 1.5939117670059204,
}

# The unscaled functions. gelu is the tanh approximation, as in jax.nn.gelu's default and the
# official code; glu halves the last axis.
RAW_ACTIVATIONS: dict[str, Activation] = {
  'identity': lambda x: x,
  'celu': jax.nn.celu,
  'elu': jax.nn.elu,
  'gelu': jax.nn.gelu,
  'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
  'glu': jax.nn.glu,
  'leaky_relu': jax.nn.leaky_relu,
  'log_sigmoid': jax.nn.log_sigmoid,
  'relu': jax.nn.relu,
  'relu6': jax.nn.relu6,
  'selu': jax.nn.selu,
  'sigmoid': jax.nn.sigmoid,
  'silu': jax.nn.silu,
  'soft_sign': jax.nn.soft_sign,
  'softplus': jax.nn.softplus,
  'tanh': jnp.tanh,
}

# Activations that take two independent inputs (split along the last axis).
_TWO_INPUT = frozenset({'glu'})


def get_activation(name: str) -> Activation:
  """Returns the gamma-scaled activation called ``name`` (e.g. ``'gelu'``)."""
  if name not in GAMMAS:
    raise ValueError(
      f'Unknown activation {name!r}; accepted: {sorted(GAMMAS)}.'
    )
  fn, gamma = RAW_ACTIVATIONS[name], GAMMAS[name]
  if gamma == 1.0:
    return fn

  def scaled(x: jax.Array) -> jax.Array:
    return fn(x) * jnp.asarray(gamma, x.dtype)

  scaled.__name__ = f'scaled_{name}'
  return scaled


def estimate_gamma(
  fn: Activation,
  two_inputs: bool = False,
  row_width: int | None = None,
  num_points: int = 20001,
  limit: float = 12.0,
) -> float:
  """Returns ``1 / std(fn(z))`` for ``z ~ N(0, 1)``, by quadrature in float64.

  A uniform grid over ``[-limit, limit]`` weighted by the normal density integrates the first
  two moments of ``fn(z)`` far more precisely than the Monte-Carlo estimate the constants were
  made with (kinks such as relu's cost O(1/num_points^2)). ``two_inputs`` handles activations
  such as GLU that consume two independent normal inputs stacked on the last axis; their grid
  is ``sqrt(num_points)`` per side.

  Args:
    fn: an elementwise activation taking and returning an array (jax or numpy).
    two_inputs: whether ``fn`` maps ``[..., 2]`` inputs to ``[..., 1]`` outputs.
    row_width: ``None`` for the population value. The official constants were made with the
      NF-ResNet paper's recipe, ``mean(var(f(z), axis=1)) ** -0.5`` over rows of 1024 normal
      inputs; a row's ``ddof=0`` variance of ``n`` outputs has expectation ``var * (n-1)/n``,
      so ``row_width=n`` returns that estimator's expected value (``n`` counts outputs, 512
      for GLU on 1024 inputs).
    num_points: grid points (per axis for one input).
    limit: half-width of the grid in standard deviations.
  """
  with jax.enable_x64(True):
    if two_inputs:
      side = int(np.sqrt(num_points)) | 1
      z = np.linspace(-limit, limit, side)
      w = np.exp(-0.5 * z**2)
      w /= w.sum()
      za, zb = np.meshgrid(z, z, indexing='ij')
      grid = jnp.asarray(np.stack([za.ravel(), zb.ravel()], axis=-1))
      weights = np.outer(w, w).ravel()
      values = np.asarray(fn(grid), np.float64).reshape(-1)
    else:
      z = np.linspace(-limit, limit, num_points)
      weights = np.exp(-0.5 * z**2)
      weights /= weights.sum()
      values = np.asarray(fn(jnp.asarray(z)), np.float64)
  mean = np.sum(weights * values)
  var = np.sum(weights * (values - mean) ** 2)
  if not var > 0:
    raise ValueError(
      'The activation has zero variance under N(0, 1); gamma is undefined.'
    )
  if row_width is not None:
    var *= (row_width - 1) / row_width
  return float(1.0 / np.sqrt(var))


def estimate_named_gamma(name: str, official_recipe: bool = False) -> float:
  """:func:`estimate_gamma` for a named activation.

  ``official_recipe`` returns the expectation of the estimator the published constants came
  from (rows of 1024 inputs, see ``row_width``) instead of the population value.
  """
  if name not in RAW_ACTIVATIONS:
    raise ValueError(
      f'Unknown activation {name!r}; accepted: {sorted(RAW_ACTIVATIONS)}.'
    )
  two_inputs = name in _TWO_INPUT
  row_width = (512 if two_inputs else 1024) if official_recipe else None
  return estimate_gamma(
    RAW_ACTIVATIONS[name], two_inputs=two_inputs, row_width=row_width
  )
