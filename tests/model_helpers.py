"""Shared test setup for the model families: a small initialised model and its eval forward."""

import jax


def init_on_noise(model, batch: int = 2, size: int = 32):
  """``(params, state, x)``: ``model`` initialised on a ``[batch, size, size, 3]`` noise batch."""
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
  params, state = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  return params, state, x


def eval_with_metrics(model, params, state, x) -> dict:
  """The jitted eval-mode forward with signal-propagation metrics (``return_metrics``)."""
  out, _ = jax.jit(model.apply, static_argnums=(4, 5))(
    params, state, None, x, False, True
  )
  return out
