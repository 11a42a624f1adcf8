"""The trainer's EMA against its closed form over several real steps.

The weights move by ~1e-1 here (a large learning rate), and the EMA is checked to 1e-6, so an
EMA that skips the warm-up, lags a step or averages the wrong weights fails by orders of
magnitude more than the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import train
from tests import test_train_fixtures as fx

STEPS = 6
DECAY = 0.3  # reached at step 4: (1 + 4) / (10 + 4) > 0.3, so both regimes are covered


def _run():
  config = fx.tiny_config(
    **{
      'optimizer.ema_decay': DECAY,
      'optimizer.lr_per_256': 8.0,
      'optimizer.clipping': 0.0,
    }
  )
  setup = train.build_setup(config)
  state = train.init_state(setup.model, setup.optimizer, config, 32)
  step = jax.pmap(
    train.make_train_step(setup.model, setup.optimizer, setup.schedule, config),
    axis_name=train.AXIS,
  )
  rng = np.random.default_rng(0)
  rstate = train.replicate(state, jax.local_devices()[:1])
  params = [jax.device_get(state.params)]
  emas = [jax.device_get(state.ema_params)]
  for _ in range(STEPS):
    batch = {
      'images': jnp.asarray(rng.normal(size=(1, 16, 32, 32, 3)), jnp.float32),
      'labels': jnp.asarray(rng.integers(0, 10, (1, 16)), jnp.int32),
    }
    rstate, _ = step(rstate, batch)
    host = jax.device_get(jax.tree_util.tree_map(lambda x: x[0], rstate))
    params.append(host.params)
    emas.append(host.ema_params)
  return params, emas


def test_ema_follows_the_warmup_closed_form():
  params, emas = _run()
  flat = lambda t: [
    np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)
  ]
  p = [flat(t) for t in params]
  expected = flat(emas[0])
  # Initial EMA is the initial params.
  for a, b in zip(expected, p[0]):
    np.testing.assert_array_equal(a, b)
  for k in range(STEPS):
    d = min(DECAY, (1 + k) / (10 + k))
    expected = [d * e + (1 - d) * w for e, w in zip(expected, p[k + 1])]
    for got, want in zip(flat(emas[k + 1]), expected):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  # The check is meaningful: weights and EMA moved far more than the tolerance, and the EMA
  # is neither the params nor the start.
  moved = max(np.abs(a - b).max() for a, b in zip(p[-1], p[0]))
  assert moved > 1e-2
  last = flat(emas[-1])
  assert max(np.abs(a - b).max() for a, b in zip(last, p[-1])) > 1e-3
  assert max(np.abs(a - b).max() for a, b in zip(last, p[0])) > 1e-3
