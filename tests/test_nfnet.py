"""NFNet family: the paper's sizes, names, shapes, modes, signal propagation and precision."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets
from nfnets import activations, counting, nf_regnet, nf_resnet, nfnet
from tests.model_helpers import eval_with_metrics, init_on_noise

# Paper Table 3 / official release: (params, GMACs at test res, GMACs at train res).
PAPER_TABLE = {
  'nfnet_f0': (71_489_284, 12.38, 6.98),
  'nfnet_f1': (132_634_256, 35.54, 17.44),
  'nfnet_f2': (193_779_228, 62.59, 33.14),
  'nfnet_f3': (254_924_200, 114.76, 67.94),
  'nfnet_f4': (316_069_172, 215.24, 121.12),
  'nfnet_f5': (377_214_144, 289.76, 169.50),
  'nfnet_f6': (438_359_116, 377.28, 228.29),
  'nfnet_f7': (499_504_088, 478.78, 298.48),
  'nfnet_f0_plus': (118_824_516, 19.52, 11.00),
}
RESOLUTIONS = {
  'nfnet_f0': (192, 256),
  'nfnet_f1': (224, 320),
  'nfnet_f2': (256, 352),
  'nfnet_f3': (320, 416),
  'nfnet_f4': (384, 512),
  'nfnet_f5': (416, 544),
  'nfnet_f6': (448, 576),
  'nfnet_f7': (480, 608),
  'nfnet_f0_plus': (192, 256),
}


def tiny(**kwargs):
  """F0 depths at 1/8 width (32/64/192/192 channels, 16-wide groups)."""
  return nfnets.create_model(
    'nfnet_f0', num_classes=10, width=0.125, group_size=16, **kwargs
  )


@pytest.mark.parametrize('name', sorted(PAPER_TABLE))
def test_paper_table(name):
  params, test_gmacs, train_gmacs = PAPER_TABLE[name]
  model = nfnets.create_model(name, num_classes=1000)
  assert (model.train_imsize, model.test_imsize) == RESOLUTIONS[name]
  assert model.count_params() == params
  assert model.count_macs() / 1e9 == pytest.approx(test_gmacs, abs=0.005)
  assert model.count_macs(model.train_imsize) / 1e9 == pytest.approx(
    train_gmacs, abs=0.005
  )


@pytest.mark.parametrize('name', ['nfnet_f0', 'nfnet_f1_plus'])
def test_rule_count_equals_traced_count(name):
  # The official counting rules against every conv/matmul actually traced in the forward.
  model = nfnets.create_model(name)
  assert (
    counting.count_model_macs(model, model.test_imsize) == model.count_macs()
  )


def test_official_module_names():
  names = set(nfnets.create_model('nfnet_f0').param_shapes())
  blocks = ['NFNet/~/nf_block'] + [
    f'NFNet/~/nf_block_{i}' for i in range(1, 12)
  ]
  expected = {f'NFNet/~/stem_conv{i}' for i in range(4)} | {
    'NFNet/~/final_conv',
    'NFNet/~/linear',
  }
  for i, block in enumerate(blocks):
    expected |= {block} | {
      f'{block}/~/{c}' for c in ('conv0', 'conv1', 'conv1b', 'conv2')
    }
    expected |= {
      f'{block}/~/squeeze_excite/~/linear',
      f'{block}/~/squeeze_excite/~/linear_1',
    }
    if i in (0, 1, 3, 9):  # the first block of each stage projects its shortcut
      expected.add(f'{block}/~/conv_shortcut')
  assert names == expected
  shapes = nfnets.create_model('nfnet_f0').param_shapes()
  assert shapes['NFNet/~/nf_block_3/~/conv1']['w'].shape == (
    3,
    3,
    128,
    768,
  )  # 6 groups
  assert set(shapes['NFNet/~/stem_conv0']) == {'w', 'gain', 'bias'}
  assert shapes['NFNet/~/nf_block_5']['skip_gain'].shape == ()
  assert shapes['NFNet/~/linear']['w'].shape == (3072, 1000)


def test_output_shapes_and_zero_init_skip_gain():
  model = tiny()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
  params, state = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  out, _ = jax.jit(model.apply, static_argnums=4)(params, state, None, x, False)
  assert out['logits'].shape == (2, 10) and out['logits'].dtype == jnp.float32
  assert out['pool'].shape == (2, 384)
  skip_gains = [v['skip_gain'] for k, v in params.items() if 'skip_gain' in v]
  assert len(skip_gains) == 12 and all(float(g) == 0.0 for g in skip_gains)


def test_dropout_and_stochastic_depth_only_when_training():
  model = tiny(drop_rate=0.5, stochdepth_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  params, state = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  params = jax.tree_util.tree_map(
    lambda p: p + 0.1 if p.ndim == 0 else p, params
  )
  fwd = jax.jit(model.apply, static_argnums=(4,))
  eval_a = fwd(params, state, jax.random.PRNGKey(2), x, False)[0]['logits']
  eval_b = fwd(params, state, jax.random.PRNGKey(3), x, False)[0]['logits']
  eval_none = fwd(params, state, None, x, False)[0]['logits']
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(eval_a, eval_none)
  train_a = fwd(params, state, jax.random.PRNGKey(2), x, True)[0]['logits']
  train_b = fwd(params, state, jax.random.PRNGKey(3), x, True)[0]['logits']
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)


def test_stochastic_depth_schedule():
  # Rate grows as 0.25 * index / num_blocks over the 12 blocks of F0.
  f = hk.transform(
    lambda: [
      b.stoch_depth.drop_rate if b.has_stochdepth else 0.0
      for b in nfnet.NFNet(10, variant='F0', stochdepth_rate=0.25).blocks
    ]
  )
  np.testing.assert_allclose(f.apply({}, None), 0.25 * np.arange(12) / 12)


def test_signal_propagation_at_init():
  """With skip gains at 1, block k of a stage outputs variance 1 + (k+1) alpha^2 (N(0,1) in).

  Each stage is fed an N(0,1) signal scaled to the variance its first block expects
  (1/beta^2, the previous stage's end). Inputs are constant over 2x2 windows so the
  transition's average pool does not itself shrink the variance.
  """
  depths, alpha = (1, 2, 6, 3), 0.2

  def stage(index, z):
    net = nfnet.NFNet(
      10, variant='F0', width=0.25, group_size=16, stochdepth_rate=0.0
    )
    start = sum(depths[:index])
    out, variances = z / net.blocks[start].beta, []
    for block in net.blocks[start : start + depths[index]]:
      out, _ = block(out, is_training=False)
      variances.append(jnp.mean(jnp.var(out, axis=(0, 1, 2))))
    return jnp.stack(variances)

  for index, in_ch in enumerate((64, 64, 128, 384)):
    z = jax.random.normal(jax.random.PRNGKey(index), (16, 16, 16, in_ch))
    z = jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2)
    f = hk.transform(lambda z, i=index: stage(i, z))
    params = jax.jit(f.init)(jax.random.PRNGKey(0), z)
    params = {
      k: {n: jnp.ones_like(v) if n == 'skip_gain' else v for n, v in d.items()}
      for k, d in params.items()
    }
    variances = np.asarray(jax.jit(f.apply)(params, None, z))
    expected = 1 + alpha**2 * np.arange(1, depths[index] + 1)
    np.testing.assert_allclose(variances, expected, rtol=0.04)
    if len(variances) > 1:  # the growth per block is alpha^2
      np.testing.assert_allclose(np.diff(variances), alpha**2, atol=0.01)


def test_return_metrics_lists_every_block():
  model = tiny()
  params, state, x = init_on_noise(model)
  out = eval_with_metrics(model, params, state, x)
  assert {f'avg_var_{i}' for i in range(13)} <= set(out)
  assert {f'res_avg_var_{i}' for i in range(12)} <= set(out)
  # Zero-init skip gains: the non-transition blocks pass their input through unchanged.
  assert float(out['avg_var_3']) == pytest.approx(
    float(out['avg_var_2']), rel=1e-5
  )


def test_bfloat16_forward_close_to_float32():
  model = tiny()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 64, 64, 3))
  params, state = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  params = jax.tree_util.tree_map(
    lambda p: p + 0.5 if p.ndim == 0 else p, params
  )
  fwd = jax.jit(lambda p, x: model.apply(p, state, None, x, False)[0]['logits'])
  f32 = np.asarray(fwd(params, x))
  bf16 = np.asarray(fwd(params, x.astype(jnp.bfloat16)))
  assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
  assert np.abs(bf16 - f32).max() <= 0.05 * np.abs(f32).max()


def test_grouped_conv_impls_give_same_network():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  native, split = (
    tiny(grouped_conv_impl='native'),
    tiny(grouped_conv_impl='split'),
  )
  params, state = jax.jit(native.init)(jax.random.PRNGKey(1), x)
  a = jax.jit(native.apply, static_argnums=4)(params, state, None, x, False)[0][
    'logits'
  ]
  b = jax.jit(split.apply, static_argnums=4)(params, state, None, x, False)[0][
    'logits'
  ]
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  model = tiny()
  with pytest.raises(ValueError, match=r"Unknown model 'nfnet_f9'.*nfnet_f0"):
    nfnets.create_model('nfnet_f9')
  with pytest.raises(ValueError, match=r"Unknown NFNet variant 'F9'.*F0"):
    nfnets.create_model('nfnet_f0', variant='F9').count_params()
  with pytest.raises(ValueError, match=r"Unknown activation 'swish2'.*gelu"):
    nfnets.create_model('nfnet_f0', activation='swish2').count_params()
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='3 channels'):
    model.init(rng, jnp.zeros((1, 3, 64, 64)))
  with pytest.raises(ValueError, match='rank 4'):
    model.init(rng, jnp.zeros((64, 64, 3)))
  with pytest.raises(ValueError, match='total stride 32'):
    model.init(rng, jnp.zeros((1, 16, 16, 3)))


def test_registry_names():
  names = nfnets.list_models()
  for i in range(8):
    assert f'nfnet_f{i}' in names and f'nfnet_f{i}_plus' in names
  assert nfnets.create_model('NFNet-F1+').name == 'nfnet_f1_plus'
  assert nfnets.create_model('nfnet_f3').extras == {
    'RA_level': '415',
    'drop_rate': 0.4,
  }


def test_family_default_variant_is_the_constructors():
  # A registered model that names no variant gets the constructor's default
  # (NFNet's F0, and F0's recipe); a constructor without one cannot register.
  from nfnets import registry  # noqa: PLC0415

  registry.register_family('NFNet', nfnet.VARIANTS, {'test_nfnet_default': {}})(
    nfnet.NFNet
  )
  model = nfnets.create_model('test_nfnet_default')
  assert (model.train_imsize, model.test_imsize) == (192, 256)
  assert model.extras == {'RA_level': '405', 'drop_rate': 0.2}

  class NoDefault:
    def __init__(self, num_classes: int, variant: str):
      del num_classes, variant

  with pytest.raises(
    TypeError, match='needs a variant argument with a default'
  ):
    registry.register_family('X', {'A': {}}, {'x_a': dict(variant='A')})(
      NoDefault
    )
  assert 'x_a' not in nfnets.list_models()


@pytest.mark.parametrize(
  'cls,variant,table_drop,activation',
  [
    (nfnet.NFNet, 'F1', 0.3, 'gelu'),
    (nf_regnet.NFRegNet, 'B2', 0.3, 'silu'),
    (nf_resnet.NFResNet, 'ResNet26', 0.0, 'relu'),  # its table has no dropout
  ],
)
def test_nf_families_share_their_options(cls, variant, table_drop, activation):
  # Every NF family takes alpha, stochastic depth, dropout, activation and the
  # classifier init through nf_network.NFNetwork, with its own defaults.
  def options(**kwargs):
    net = cls(10, variant, **kwargs)
    return net.drop_rate, net.alpha, net.stochdepth_rate, net.activation

  run = lambda **kw: hk.transform(lambda: options(**kw)).apply({}, None)
  drop, alpha, stochdepth, act = run()
  assert (drop, alpha, stochdepth) == (table_drop, 0.2, 0.1)
  x = jnp.linspace(-3.0, 3.0, 13)
  np.testing.assert_array_equal(
    act(x), activations.get_activation(activation)(x)
  )
  assert run(drop_rate=0.0, alpha=0.3)[:2] == (0.0, 0.3)
  with pytest.raises(ValueError, match=r'drop_rate must be in \[0, 1\)'):
    run(drop_rate=1.0)
  with pytest.raises(TypeError, match='alhpa'):
    run(alhpa=0.3)


def test_nf_families_official_classifier_init():
  # NF-RegNet's classifier starts at zero (official); NFNet's and NF-ResNet's
  # are normal with std 0.01.
  for name, kwargs, zero in (
    ('nf_regnet_b0', {}, True),
    ('nfnet_f0', dict(width=0.125), False),
    ('nf_resnet_26', dict(width=1), False),
  ):
    model = nfnets.create_model(name, num_classes=1000, **kwargs)
    params, _ = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    # The network's own classifier, NFNet/~/linear (not a squeeze-excite's).
    (w,) = [
      v['w'] for k, v in params.items() if k.split('/~/')[1:] == ['linear']
    ]
    if zero:
      assert not np.any(w)
    else:
      assert 0.009 < float(np.std(w)) < 0.011, name
