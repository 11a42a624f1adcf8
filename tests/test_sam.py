"""SAM: the formula against float64 NumPy, zero gradients, model state, per-device
ascent under pmap (2 fake CPU devices), exact resume, and the SAM configs."""

import subprocess
import sys
import textwrap

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import config_lib, train
from nfnets import sam
from tests import test_train_fixtures as fx


def _softmax_regression_loss(params, batch):
  logits = batch['x'] @ params['w'] + params['b']
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, batch['y'][:, None], axis=1))


def _np_grad(w, b, x, y):
  """Closed-form gradient of the mean softmax cross-entropy, float64."""
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return x.T @ p / len(y), p.mean(0)


def _np_sam(w, b, x, y, rho, fraction):
  k = int(np.ceil(round(fraction * len(y), 9)))
  gw, gb = _np_grad(w, b, x[:k], y[:k])
  norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
  return _np_grad(w + rho * gw / norm, b + rho * gb / norm, x, y)


@pytest.mark.parametrize(
  'rho, fraction, batch_size',
  [
    (0.05, 0.2, 10),
    (0.5, 0.2, 15),  # ceil(3.0000000000000004) must be 3
    (0.5, 0.5, 10),
    (1.0, 0.3, 7),
    (0.05, 1.0, 10),
    (2.0, 1.0, 6),
  ],
)
def test_sam_gradient_matches_float64_numpy(rho, fraction, batch_size):
  rng = np.random.RandomState(batch_size)
  x = rng.randn(batch_size, 5)
  y = rng.randint(0, 4, batch_size)
  w, b = rng.randn(5, 4), rng.randn(4)
  want_w, want_b = _np_sam(w, b, x, y, rho, fraction)
  got = sam.sam_gradient(
    _softmax_regression_loss,
    {'w': jnp.asarray(w, jnp.float32), 'b': jnp.asarray(b, jnp.float32)},
    {'x': jnp.asarray(x, jnp.float32), 'y': jnp.asarray(y)},
    rho=rho,
    ascent_fraction=fraction,
  )
  np.testing.assert_allclose(got['w'], want_w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got['b'], want_b, rtol=1e-4, atol=1e-6)
  # The perturbation matters at these radii: SAM is not the plain gradient.
  plain_w, _ = _np_grad(w, b, x, y)
  assert np.max(np.abs(want_w - plain_w)) > 1e-3


def test_ascent_uses_the_first_examples_only():
  rng = np.random.RandomState(1)
  x, y = rng.randn(10, 5), rng.randint(0, 4, 10)
  w, b = rng.randn(5, 4), rng.randn(4)
  params = {'w': jnp.asarray(w, jnp.float32), 'b': jnp.asarray(b, jnp.float32)}
  batch = {'x': jnp.asarray(x, jnp.float32), 'y': jnp.asarray(y)}
  result = sam.sam_value_and_grad(
    _softmax_regression_loss, params, batch, rho=0.3, ascent_fraction=0.2
  )
  gw, gb = _np_grad(w, b, x[:2], y[:2])
  np.testing.assert_allclose(
    result.ascent_norm, np.sqrt(np.sum(gw**2) + np.sum(gb**2)), rtol=1e-5
  )
  # Changing examples past the sub-batch moves the descent gradient only.
  x2 = x.copy()
  x2[2:] += 1.0
  changed = sam.sam_value_and_grad(
    _softmax_regression_loss,
    params,
    {'x': jnp.asarray(x2, jnp.float32), 'y': jnp.asarray(y)},
    rho=0.3,
    ascent_fraction=0.2,
  )
  assert float(changed.ascent_norm) == float(result.ascent_norm)
  assert not np.allclose(changed.grads['w'], result.grads['w'])


def test_zero_gradient_gives_no_perturbation_not_nan():
  def loss(params, batch):
    return 0.5 * jnp.mean((batch['x'] @ params['w'] - batch['y']) ** 2)

  rng = np.random.RandomState(2)
  x, y = rng.randn(10, 3), rng.randn(10)
  x[:2], y[:2] = 0.0, 0.0  # the ascent sub-batch has an exactly zero gradient
  w = rng.randn(3)
  got = sam.sam_value_and_grad(
    loss,
    {'w': jnp.asarray(w, jnp.float32)},
    {'x': jnp.asarray(x, jnp.float32), 'y': jnp.asarray(y, jnp.float32)},
    rho=0.05,
  )
  assert float(got.ascent_norm) == 0.0
  want = x.T @ (x @ w - y) / len(y)  # the plain gradient at w
  np.testing.assert_allclose(got.grads['w'], want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_fail_clearly():
  params, batch = {'w': jnp.ones(2)}, {'x': jnp.ones((4, 2))}

  def loss(p, b):
    return jnp.mean(b['x'] @ p['w'])

  with pytest.raises(ValueError, match='ascent_fraction'):
    sam.sam_gradient(loss, params, batch, rho=0.1, ascent_fraction=0.0)
  with pytest.raises(ValueError, match='ascent_fraction'):
    sam.sam_gradient(loss, params, batch, rho=0.1, ascent_fraction=1.5)
  with pytest.raises(ValueError, match='rho'):
    sam.sam_gradient(loss, params, batch, rho=-0.1)
  with pytest.raises(ValueError, match='leading size'):
    sam.sam_gradient(
      loss, params, {'x': jnp.ones((4, 2)), 'y': jnp.ones(3)}, rho=0.1
    )


def test_state_update_comes_from_the_unperturbed_ascent_pass():
  def net(x):
    h = hk.BatchNorm(True, True, 0.9)(hk.Linear(4)(x), is_training=True)
    return hk.Linear(3)(jax.nn.relu(h))

  model = hk.without_apply_rng(hk.transform_with_state(net))
  x = np.random.RandomState(3).randn(10, 5).astype(np.float32)
  y = np.arange(10) % 3
  params, state = model.init(jax.random.PRNGKey(0), x)

  def loss(p, batch):
    logits, new_state = model.apply(p, state, batch['x'])
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(logp, batch['y'][:, None], axis=1))
    return ce, new_state

  result = sam.sam_value_and_grad(
    loss, params, {'x': x, 'y': y}, rho=0.1, ascent_fraction=0.5, has_aux=True
  )
  _, want_state = model.apply(params, state, x[:5])
  for a, b in zip(
    jax.tree.leaves(result.ascent_value[1]), jax.tree.leaves(want_state)
  ):
    np.testing.assert_array_equal(a, b)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(result.grads))


_PMAP_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, jax.numpy as jnp
    from tests import test_train_fixtures as fx
    from experiments import train
    from nfnets import sam

    assert jax.device_count() == 2, jax.devices()
    rho = 0.5
    config = fx.tiny_config(**{'optimizer.sam_rho': rho,
                               'optimizer.sam_ascent_fraction': 0.5})
    setup = train.build_setup(config)
    state = jax.device_get(
        train.init_state(setup.model, setup.optimizer, config, 32))
    step = train.make_train_step(
        setup.model, setup.optimizer, setup.schedule, config)
    rng = np.random.RandomState(0)
    batch = {'images': rng.randn(8, 32, 32, 3).astype(np.float32),
             'labels': rng.randint(0, 10, 8).astype(np.int32)}
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()}
              for i in range(2)]

    p = jax.pmap(step, axis_name=train.AXIS)
    new, _ = p(train.replicate(state),
               {k: v.reshape((2, 4) + v.shape[1:]) for k, v in batch.items()})
    new = train.unreplicate(new)

    def loss(params, b):   # the trainer's loss; the tiny net draws no randomness
        out, _ = setup.model.apply(params, state.model_state, None,
                                   b['images'], is_training=True)
        return train.train_loss(out['logits'], b, config.label_smoothing)

    @jax.jit
    def ascent(b):   # the ascent gradient on the first half of b
        return jax.grad(loss)(state.params, {k: v[:2] for k, v in b.items()})

    @jax.jit
    def descent(eps, b):
        pert = jax.tree.map(lambda w, e: w + e, state.params, eps)
        return jax.grad(loss)(pert, b)

    @jax.jit
    def expected_params(grads):
        updates, _ = setup.optimizer.update(grads, state.opt_state, state.params)
        return jax.tree.map(lambda w, u: w + u, state.params, updates)

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # Per device: each perturbation from that device's own sub-batch.
    eps = [sam.perturbation(ascent(h), rho)[0] for h in halves]
    assert max_diff(eps[0], eps[1]) > 1e-2, 'the two devices perturbed alike'
    mean = jax.tree.map(lambda a, b: (a + b) / 2,
                        descent(eps[0], halves[0]), descent(eps[1], halves[1]))
    want = expected_params(mean)
    # The alternative the paper avoided: one perturbation from the averaged ascent.
    g = jax.tree.map(lambda a, b: (a + b) / 2, ascent(halves[0]), ascent(halves[1]))
    shared = sam.perturbation(g, rho)[0]
    other = expected_params(jax.tree.map(
        lambda a, b: (a + b) / 2,
        descent(shared, halves[0]), descent(shared, halves[1])))

    err = max_diff(new.params, want)
    gap = max_diff(other, want)
    moved = max_diff(new.params, state.params)
    print('err', err, 'gap', gap, 'moved', moved)
    assert err < 2e-6, err
    assert gap > 50 * max(err, 1e-7), (gap, err)
    assert moved > 1e-4, moved
    print('SAM_PMAP_OK')
""")


def test_pmapped_step_perturbs_per_device_and_averages_descent():
  out = subprocess.run(
    [sys.executable, '-c', _PMAP_SCRIPT],
    env=fx.subprocess_env(devices=2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert 'SAM_PMAP_OK' in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]


def _losses(result):
  return [(step, m['loss']) for step, m in result['history']]


def test_sam_run_resumes_bit_exactly(tmp_path):
  config = fx.tiny_config(
    **{
      'optimizer.sam_rho': 0.1,
      'model_kwargs.drop_rate': 0.3,  # dropout: the rngs must resume too
      'num_train_steps': 4,
      'checkpoint_every_steps': 2,
    }
  )
  unbroken = train.train_and_evaluate(config, str(tmp_path / 'a'))
  first = train.train_and_evaluate(config, str(tmp_path / 'b'), stop_at_step=2)
  second = train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert [s for s, _ in _losses(second)] == [3, 4]
  assert _losses(first) + _losses(second) == _losses(unbroken)
  for x, y in zip(
    jax.tree.leaves(second['state']),
    jax.tree.leaves(unbroken['state']),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The losses moved: this is training, not a constant.
  assert len({loss for _, loss in _losses(unbroken)}) == 4


@pytest.mark.parametrize('variant', ['f5', 'f6'])
def test_sam_configs_by_name(variant):
  config = config_lib.get_config(f'nfnet_{variant}_sam')
  plain = config_lib.get_config(f'nfnet_{variant}')
  assert config.name == f'nfnet_{variant}_sam'
  assert config.optimizer.sam_rho == 0.05
  assert config.optimizer.sam_ascent_fraction == 0.2
  assert plain.optimizer.sam_rho == 0.0
  # Everything else is the plain recipe.
  config.name, config.optimizer.sam_rho = plain.name, 0.0
  assert config.to_dict() == plain.to_dict()


def test_finetune_sam_has_the_papers_finetuning_values():
  config = config_lib.get_config('finetune_sam')
  assert config.optimizer.sam_rho == 0.05
  assert config.optimizer.weight_decay == 1e-5
  assert config.model_kwargs.drop_rate == 0.25
  assert config.model_kwargs.stochdepth_rate == 0.1
  assert config.model == 'nfnet_f0'
  f1 = config_lib.get_config('experiments/configs/finetune.py:F1_sam')
  assert f1.model == 'nfnet_f1' and f1.optimizer.sam_rho == 0.05
  assert config_lib.get_config('finetune').optimizer.sam_rho == 0.0


@pytest.mark.slow
def test_nfnet_f6_sam_config_trains(tmp_path):
  """The record run's config builds and takes SAM steps: F6's 84 blocks and the
  paper's augmentation, at 1/16 width and 32 px on the embedded digits.

  Slow (compiling 84 blocks with SAM); the default run covers SAM through the
  trainer (test_sam_run_resumes_bit_exactly) and the F5/F6 SAM configs by name
  (test_sam_configs_by_name).
  """
  config = config_lib.get_config('nfnet_f6_sam')
  config.model_kwargs = config.model_kwargs.copy_and_resolve_references()
  with config.unlocked():
    config.model_kwargs.width = 1 / 16
  config.update_from_flattened_dict(
    {
      'dataset': 'embedded_mnist',
      'train_imsize': 32,
      'eval_imsize': 32,
      'train_batch_size': 4,
      'eval_batch_size': 500,
      'num_train_steps': 2,
      'bfloat16': False,
      'log_every_steps': 1,
      'eval_every_steps': 0,
      'checkpoint_every_steps': 1000,
    }
  )
  result = train.train_and_evaluate(config, str(tmp_path / 'f6'))
  model = config_lib.get_config('nfnet_f6_sam').model
  assert model == 'nfnet_f6' and config.optimizer.sam_rho > 0
  losses = [m['loss'] for _, m in result['history']]
  assert len(losses) == 2 and all(np.isfinite(losses))
  blocks = {
    k.split('/~/')[1]
    for k in result['state'].params
    if k.split('/~/')[1].startswith('nf_block')
  }
  assert len(blocks) == 84  # F6: depths (7, 14, 42, 21) in the NFNet paper
