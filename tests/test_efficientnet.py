"""EfficientNet B0-B7: timm's parameter counts, MACs, BatchNorm state, timm's logits."""

import os

import haiku as hk
import jax
import numpy as np
import pytest

import nfnets
from nfnets import counting, efficientnet, efficientnet_timm, weights

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
TINY_ST = os.path.join(FIXTURES, 'timm_efficientnet_tiny.safetensors')
TINY_IO = os.path.join(FIXTURES, 'timm_efficientnet_tiny_io.npz')
TINY = dict(num_classes=10, width=0.25, depth=0.5)

# sum(p.numel() for p in timm.create_model('tf_efficientnet_bN').parameters()), timm 1.x.
TIMM_PARAMS = {
  'b0': 5_288_548,
  'b1': 7_794_184,
  'b2': 9_109_994,
  'b3': 12_233_232,
  'b4': 19_341_616,
  'b5': 30_389_784,
  'b6': 43_040_704,
  'b7': 66_347_960,
}
RESOLUTIONS = dict(zip(TIMM_PARAMS, (224, 240, 260, 300, 380, 456, 528, 600)))


@pytest.mark.parametrize('variant', sorted(TIMM_PARAMS))
def test_param_counts_equal_timm(variant):
  model = nfnets.create_model(f'efficientnet_{variant}')
  # Parameters do not depend on the resolution; 64 px keeps the abstract trace cheap.
  assert nfnets.count_params(model.param_shapes(64)) == TIMM_PARAMS[variant]
  assert model.train_imsize == model.test_imsize == RESOLUTIONS[variant]


def test_variant_facts():
  b7 = nfnets.create_model('efficientnet_b7')
  assert b7.extras['drop_rate'] == 0.5
  net = hk.transform(
    lambda: efficientnet.EfficientNet(num_classes=1000, variant='B7')
  ).apply({}, None)
  # Stem 32*2, head 1280*2; B7's stages repeat ceil(r * 3.1) blocks.
  assert (net.stem_ch, net.head_ch) == (64, 2560)
  assert len(net.blocks) == sum(-(-r * 31 // 10) for r in (1, 2, 2, 3, 3, 4, 1))
  # Drop-connect grows linearly from 0 to 0.2 * (n - 1) / n over the blocks.
  rates = [b.drop.drop_rate for b in net.blocks if b.drop is not None]
  assert rates[-1] == pytest.approx(
    0.2 * (len(net.blocks) - 1) / len(net.blocks)
  )


def test_round_channels_tf_rule():
  r = efficientnet.round_channels
  # Nearest multiple of 8, bumped up when that loses more than 10%.
  assert [r(16 * 1.1), r(40 * 1.1), r(24 * 1.4), r(10), r(3)] == [
    16,
    48,
    32,
    16,
    8,
  ]


def test_macs_rule_equals_traced_count_b0():
  model = nfnets.create_model('efficientnet_b0')
  assert model.count_macs(224) == 385_814_752
  assert counting.count_model_macs(model, 224) == 385_814_752


def test_macs_b7_at_600():
  # Convolutions and dense products only, as the NFNets are counted.
  assert nfnets.create_model('efficientnet_b7').count_macs(
    600
  ) == pytest.approx(37.7459e9, rel=1e-5)


def _batchnorm(is_training, x):
  return efficientnet.BatchNorm(name='bn')(x, is_training)


def test_batchnorm_state_updates_in_training_only():
  bn = hk.transform_with_state(_batchnorm)
  x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 5, 6)).astype(np.float32)
  params, state = bn.init(None, True, x)
  params = {'bn': {'scale': np.full(6, 2.0), 'offset': np.full(6, 0.5)}}
  out, new_state = bn.apply(params, state, None, True, x)
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(
    out, (x - mean) / np.sqrt(var + 1e-3) * 2.0 + 0.5, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(new_state['bn']['mean'], 0.01 * mean, rtol=1e-5)
  np.testing.assert_allclose(
    new_state['bn']['var'], 0.99 + 0.01 * var, rtol=1e-5
  )
  out, eval_state = bn.apply(params, new_state, None, False, x)
  np.testing.assert_allclose(
    out,
    (x - new_state['bn']['mean']) / np.sqrt(new_state['bn']['var'] + 1e-3) * 2
    + 0.5,
    rtol=1e-4,
    atol=1e-4,
  )
  jax.tree_util.tree_map(np.testing.assert_array_equal, eval_state, new_state)


@pytest.fixture(scope='module')
def timm_tiny():
  with np.load(TINY_IO) as io:
    return io['images'], io['logits']


def test_timm_fixture_logits_match(timm_tiny):
  images, timm_logits = timm_tiny
  params, state = weights.load_timm(TINY_ST, with_state=True)
  model = nfnets.create_model('efficientnet_b0', **TINY)
  expected_params, expected_state = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), images
  )
  weights.check_params(params, expected_params)
  weights.check_params(state, expected_state)
  apply = jax.jit(lambda p, s: model.apply(p, s, None, images, False)[0])
  logits = np.asarray(apply(params, state)['logits'])
  rel = np.abs(logits - timm_logits).max() / np.abs(timm_logits).max()
  # Measured 5.9e-7 (float32 rounding); a swapped mean/var or a missed transpose is O(1).
  assert rel < 5e-6
  # The running statistics matter: fresh ones (mean 0, var 1) give other logits.
  init_state = {
    m: {'mean': np.zeros_like(s['mean']), 'var': np.ones_like(s['var'])}
    for m, s in state.items()
  }
  logits0 = np.asarray(apply(params, init_state)['logits'])
  assert np.abs(logits0 - timm_logits).max() > 1e-2


def test_timm_round_trip_is_exact(tmp_path):
  sd = weights.load_safetensors(TINY_ST)
  params, state = efficientnet_timm.from_timm(sd)
  back = efficientnet_timm.to_timm(params, state)
  assert sorted(back) == sorted(sd)
  for key, value in sd.items():
    if not key.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(back[key], value, err_msg=key)
  path = str(tmp_path / 'effnet.safetensors')
  weights.save_timm(path, params, state=state)
  again = weights.load_timm(path, with_state=True)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, (params, state))
  with pytest.raises(ValueError, match='needs its state'):
    weights.save_timm(path, params)


def test_timm_rejects_unknown_keys():
  sd = dict(weights.load_safetensors(TINY_ST))
  sd['blocks.1.0.extra.weight'] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError, match='no EfficientNet counterpart'):
    efficientnet_timm.from_timm(sd)


def test_bad_variant_is_refused():
  with pytest.raises(ValueError, match='Unknown EfficientNet variant'):
    nfnets.create_model('efficientnet_b0', variant='B9').count_params()


def test_optimizer_groups_leave_classifier_unclipped_and_bn_undecayed():
  # The paper's recipe never clips the classifier weight, and BatchNorm's scale/offset
  # (like every 1-D parameter) take no weight decay.
  from nfnets import optim

  model = nfnets.create_model('efficientnet_b0', num_classes=10)
  params = model.param_shapes(64)
  cfg = optim.default_config()
  agc_mask = optim.agc_mask(params, cfg)
  wd_mask = optim.weight_decay_mask(params, cfg)
  assert agc_mask['EfficientNet/~/classifier'] == {'w': False, 'b': True}
  assert wd_mask['EfficientNet/~/classifier'] == {'w': True, 'b': False}
  bn = [m for m in params if m.rsplit('/', 1)[-1].startswith('bn')]
  # bn1, bn2, then per MBConv block three (two in B0's first, which has no expansion conv).
  assert len(bn) == 2 + 2 + 15 * 3
  for m in bn:
    assert set(params[m]) == {'scale', 'offset'}
    assert wd_mask[m] == {'scale': False, 'offset': False}
  # Convolution weights decay and are clipped; only the classifier weight is exempt.
  unclipped = [
    f'{m}/{n}'
    for m, leaves in agc_mask.items()
    for n, on in leaves.items()
    if not on
  ]
  assert unclipped == ['EfficientNet/~/classifier/w']
  assert wd_mask['EfficientNet/~/conv_stem'] == {'w': True}
  table = optim.describe_param_groups(params, cfg)
  line = next(r for r in table.splitlines() if 'classifier/w' in r)
  assert ' no ' in line and ' yes' in line  # not clipped, decayed
