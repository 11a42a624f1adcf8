"""Inference with weights standardized once (layers.standardize_params / standardized_weights)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets
from nfnets import layers
from tests.model_helpers import init_on_noise


@pytest.mark.parametrize(
  'name,kwargs',
  [
    ('nfnet_f0', dict(width=0.125)),
    (
      'nf_resnet_26',
      dict(width=0.5),
    ),  # NF-RegNets build their convolutions the same way
  ],
)
def test_standardized_params_give_the_same_logits(name, kwargs):
  model = nfnets.create_model(name, num_classes=10, **kwargs)
  params, state, x = init_on_noise(model)
  # Non-trivial gains, so that folding the gain in is tested too.
  params = jax.tree_util.tree_map_with_path(
    lambda path, p: p * 1.7 if path[-1].key == 'gain' else p, params
  )
  expected = jax.jit(model.apply, static_argnums=4)(
    params, state, None, x, False
  )[0]

  def standardized_apply(params, state, x):
    with layers.standardized_weights():
      return model.apply(params, state, None, x, is_training=False)[0]

  folded = layers.standardize_params(params)
  got = jax.jit(standardized_apply)(folded, state, x)
  np.testing.assert_allclose(
    got['logits'], expected['logits'], rtol=1e-5, atol=1e-5
  )
  ws_modules = [m for m, p in params.items() if set(p) == {'w', 'gain', 'bias'}]
  assert ws_modules and all(
    set(folded[m]) == {'w_standardized', 'bias'} for m in ws_modules
  )
  others = [m for m in params if m not in ws_modules]
  assert others and all(folded[m].keys() == params[m].keys() for m in others)


def test_standardized_weight_is_the_closed_form():
  # w_hat = (w - mean) / sqrt(var * fan_in) * gain per output unit, in float64 NumPy.
  rng = np.random.default_rng(0)
  w = rng.normal(0.2, 1.5, size=(3, 3, 4, 6)).astype(np.float32)
  gain = rng.uniform(0.5, 2.0, size=6).astype(np.float32)
  folded = layers.standardize_params(
    {'conv': {'w': w, 'gain': gain, 'bias': np.zeros(6)}}
  )
  w64 = w.astype(np.float64)
  expected = (
    (w64 - w64.mean((0, 1, 2))) / np.sqrt(w64.var((0, 1, 2)) * 36) * gain
  )
  np.testing.assert_allclose(
    folded['conv']['w_standardized'], expected, rtol=1e-5, atol=1e-6
  )


def _conv(eps=layers.WS_EPS):
  def fn(x):
    return layers.WSConv2D(8, kernel_shape=3, eps=eps, name='conv')(x)

  return hk.without_apply_rng(hk.transform(fn))


def _in_context(fn, *args):
  with layers.standardized_weights():
    return fn(*args)


def test_parameters_and_mode_must_match():
  # Unstandardized parameters inside the context, or standardized ones outside it, fail
  # to apply instead of convolving with the wrong weights.
  conv = _conv()
  x = jnp.ones((1, 8, 8, 4))
  params = conv.init(jax.random.PRNGKey(0), x)
  folded = layers.standardize_params(params)
  np.testing.assert_allclose(
    _in_context(conv.apply, folded, x), conv.apply(params, x), rtol=1e-6
  )
  with pytest.raises(ValueError, match='w_standardized'):
    _in_context(conv.apply, params, x)
  with pytest.raises(ValueError, match="'w'"):
    conv.apply(folded, x)
  with pytest.raises(ValueError, match='not for initializing'):
    _in_context(conv.init, jax.random.PRNGKey(0), x)
  other_eps = _conv(eps=1e-3)
  with pytest.raises(ValueError, match='WS_EPS'):
    _in_context(other_eps.apply, folded, x)
  assert not layers.weights_are_standardized()  # the context restores the mode


def test_each_conv_folds_with_its_own_numerics():
  # Two convolutions with different eps forms in one model: the recorded numerics fold each
  # as its forward standardizes it (checked against float64 NumPy for the timm form).
  def fn(x):
    x = layers.WSConv2D(8, kernel_shape=3, name='official')(x)
    return layers.WSConv2D(
      4, kernel_shape=1, eps=1e-5, eps_inside=True, name='timm'
    )(x)

  net = hk.without_apply_rng(hk.transform(fn))
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 4))
  with layers.recording_ws_numerics() as numerics:
    params = net.init(jax.random.PRNGKey(0), x)
  assert numerics == {
    'official': layers.OFFICIAL_WS,
    'timm': layers.WSNumerics(1e-5, True),
  }
  folded = layers.standardize_params(params, numerics)
  w = np.asarray(params['timm']['w'], np.float64)
  expected = (w - w.mean((0, 1, 2))) / np.sqrt(w.var((0, 1, 2)) + 1e-5)
  expected /= np.sqrt(8)  # fan_in of a 1x1 conv over 8 channels
  np.testing.assert_allclose(
    folded['timm']['w_standardized'], expected, rtol=1e-5
  )
  with layers.standardized_weights(numerics):
    got = net.apply(folded, x)
  np.testing.assert_allclose(got, net.apply(params, x), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='numerics'):
    _in_context(net.apply, layers.standardize_params(params), x)
