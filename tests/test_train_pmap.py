"""Data parallelism: a pmapped step on 2 devices equals one device with the same global batch.

The device count is fixed when JAX starts, so the check runs in a subprocess with 2 fake CPU
devices (--xla_force_host_platform_device_count=2).
"""

import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from experiments import train
from tests import test_train_fixtures as fx

_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from tests import test_train_fixtures as fx
    from experiments import train

    assert jax.device_count() == 2, jax.devices()
    config = fx.tiny_config()   # no dropout: the two splits would draw different masks
    setup = train.build_setup(config)
    state = jax.device_get(train.init_state(setup.model, setup.optimizer, config, 32))
    step = train.make_train_step(setup.model, setup.optimizer, setup.schedule, config)
    rng = np.random.RandomState(0)
    batches = [{'images': rng.randn(8, 32, 32, 3).astype(np.float32),
                'labels': rng.randint(0, 10, 8).astype(np.int32),
                'mix_labels': rng.randint(0, 10, 8).astype(np.int32),
                'ratio': rng.uniform(0, 1, 8).astype(np.float32)} for _ in range(3)]

    def run(devices):
        n = len(devices)
        p = jax.pmap(step, axis_name=train.AXIS, devices=devices)
        s = train.replicate(state, devices)
        losses = []
        for b in batches:
            s, m = p(s, {k: v.reshape((n, 8 // n) + v.shape[1:]) for k, v in b.items()})
            losses.append(float(m['loss'][0]))
            for k in m:   # every replica reports the same (pmean-ed) metrics
                np.testing.assert_array_equal(m[k][0], m[k][-1])
        return losses, train.unreplicate(s)

    l1, s1 = run(jax.devices()[:1])
    l2, s2 = run(jax.devices()[:2])
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert int(s2.step) == 3 and l1[0] != l1[2]
    delta = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(s2.params), jax.tree_util.tree_leaves(state.params)))
    assert delta > 1e-4, delta   # the step did update the params

    try:
        train.per_device_batch(3)
    except ValueError as e:
        assert 'not divisible by the 2 devices' in str(e), e
    else:
        raise AssertionError('batch 3 on 2 devices was accepted')
    print('PMAP_OK')
""")


def test_two_devices_equal_one_device_with_same_global_batch():
  out = subprocess.run(
    [sys.executable, '-c', _SCRIPT],
    env=fx.subprocess_env(devices=2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert 'PMAP_OK' in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]


def test_prefetch_to_device_reads_ahead_and_keeps_order():
  pulled = []

  def host_batches():
    for i in range(5):
      pulled.append(i)
      yield {
        'images': np.full((1, 2, 3), i, np.float32),
        'labels': np.array([[i, i]]),
      }

  stream = train.prefetch_to_device(host_batches(), size=2)
  first = next(stream)
  # Batch 0 is handed out only once batches 1 and 2 are on the device too.
  assert pulled == [0, 1, 2]
  got = [first] + list(stream)
  assert [int(b['labels'][0, 0]) for b in got] == [0, 1, 2, 3, 4]
  for i, batch in enumerate(got):
    assert isinstance(batch['images'], jax.Array)
    assert batch['images'].sharding.device_set == set(jax.local_devices())
    np.testing.assert_array_equal(batch['images'], np.full((1, 2, 3), i))
  with pytest.raises(ValueError, match='at least 1'):
    next(train.prefetch_to_device(host_batches(), size=0))
