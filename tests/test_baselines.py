"""Baselines: BN ResNets (with their state), SkipInit, Fixup and NFNet-F0 with BatchNorm."""

import jax
import numpy as np
import pytest

import nfnets
from tests.model_helpers import eval_with_metrics, init_on_noise

# torchvision resnet50 (post-activation, BN after every conv): weights metadata `num_params`
# and `_ops` (GMACs of convs + fc at 224 px).
TORCHVISION_RESNET50 = (25_557_032, 4.089)
# NFNet paper Table 3 / official count_flops: F0 params and GMACs at 256 px. The BN variant has
# the same convs; each BN's scale + offset replaces the WS conv's gain + bias.
NFNET_F0 = (71_489_284, 12.38)


def preact_resnet_params(depths, width=4, num_classes=1000):
  """BN pre-activation ResNet by hand: bias-free convs, BN before each conv + a final BN."""
  ch = 16 * width
  params = 7 * 7 * 3 * ch
  for base, depth in zip((64, 128, 256, 512), depths):
    out, mid = base * width, base * width // 4
    for i in range(depth):
      params += ch * mid + 9 * mid * mid + mid * out + 2 * (ch + mid + mid)
      if i == 0:
        params += ch * out
      ch = out
  return params + 2 * ch + ch * num_classes + num_classes


def test_sizes():
  v1 = nfnets.create_model('resnet_v1_50')
  assert v1.count_params() == TORCHVISION_RESNET50[0]
  assert v1.count_macs() / 1e9 == pytest.approx(
    TORCHVISION_RESNET50[1], abs=5e-4
  )
  v2 = nfnets.create_model('resnet_v2_50')
  assert v2.count_params() == preact_resnet_params((3, 4, 6, 3))
  assert v2.count_macs() == v1.count_macs()
  f0_bn = nfnets.create_model('nfnet_f0_bn')
  assert f0_bn.count_params() == NFNET_F0[0]
  assert f0_bn.count_macs() / 1e9 == pytest.approx(NFNET_F0[1], abs=5e-3)
  assert (f0_bn.train_imsize, f0_bn.test_imsize) == (192, 256)
  # Fixup and SkipInit from torchvision's count: remove every BN (scale + offset on the stem,
  # on each block conv and on each projection), then add what each adds back.
  block_conv_channels = sum(
    d * 6 * m for d, m in zip((3, 4, 6, 3), (64, 128, 256, 512))
  )
  block_conv_channels += 256 + 512 + 1024 + 2048  # projections
  conv_and_fc = TORCHVISION_RESNET50[0] - 2 * (64 + block_conv_channels)
  fixup = nfnets.create_model('fixup_resnet_50')
  assert (
    fixup.count_params() == conv_and_fc + 7 * 16 + 2
  )  # scalar biases and scales
  skipinit = nfnets.create_model('skipinit_resnet_50')
  assert (
    skipinit.count_params() == conv_and_fc + block_conv_channels + 16
  )  # biases, gains
  assert fixup.count_macs() == skipinit.count_macs() == v1.count_macs()


def test_nfnet_bn_takes_nfnets_options_and_refuses_the_ws_ones():
  # NFNet's widths and depths at half width: the same count, as at full width
  # (test_sizes: a WS conv's gain and bias become BatchNorm's scale and offset).
  nf = nfnets.create_model('nfnet_f0', width=0.5, num_classes=10)
  bn = nfnets.create_model('nfnet_f0_bn', width=0.5, num_classes=10)
  assert bn.count_params() == nf.count_params()
  assert bn.count_params() < nfnets.create_model('nfnet_f0_bn').count_params()
  for option in ('ws_eps', 'ws_eps_inside', 'use_two_convs'):
    with pytest.raises(TypeError, match=option):
      nfnets.create_model('nfnet_f0_bn', **{option: 1e-5}).count_params()


def _tiny(name, **kwargs):
  model = nfnets.create_model(name, num_classes=10, **kwargs)
  return (model, *init_on_noise(model, batch=4))


@pytest.mark.parametrize(
  'name, kwargs',
  [
    ('resnet_v2_26', dict(width=0.25)),
    ('resnet_v1_26', dict(width=0.25)),
    (
      'nfnet_f0_bn',
      dict(width=0.125, group_size=16, grouped_conv_impl='native'),
    ),
  ],
)
def test_batchnorm_train_and_eval_with_state(name, kwargs):
  model, params, state, x = _tiny(name, **kwargs)
  assert state and all('mean_ema' in k or 'var_ema' in k for k in state)
  apply = jax.jit(model.apply, static_argnums=(4, 5))
  rng = jax.random.PRNGKey(2)
  # (init already ran one training-mode pass on x; a new batch moves every average again.)
  x = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  train_out, new_state = apply(params, state, rng, x, True, False)
  assert train_out['logits'].shape == (4, 10)
  changed = [
    k
    for k in state
    if not np.allclose(state[k]['average'], new_state[k]['average'])
  ]
  assert len(changed) == len(state)  # every moving average moved
  eval_out, eval_state = apply(params, new_state, rng, x, False, False)
  for k in state:
    np.testing.assert_array_equal(
      eval_state[k]['average'], new_state[k]['average']
    )
  # Eval uses the moving statistics: an example's features do not depend on its batch
  # (same shapes, so no recompilation: only the other examples change).
  others = x.at[1:].set(jax.random.normal(jax.random.PRNGKey(4), x[1:].shape))
  alone, _ = apply(params, new_state, rng, others, False, False)
  np.testing.assert_allclose(
    alone['pool'][:1], eval_out['pool'][:1], rtol=2e-3, atol=1e-4
  )
  # Training normalizes with the batch's statistics, so there they do.
  alone_train, _ = apply(params, state, rng, others, True, False)
  assert not np.allclose(
    alone_train['pool'][:1], train_out['pool'][:1], rtol=1e-3
  )


def test_fixup_branches_start_at_zero_and_skipinit_blocks_are_identity():
  model, params, state, x = _tiny(
    'fixup_resnet_26', width=0.25, stochdepth_rate=0.0
  )
  assert state == {}
  out = eval_with_metrics(model, params, state, x)
  assert all(
    float(out[f'res_avg_var_{i}']) == 0.0 for i in range(8)
  )  # zero-init conv2
  assert {k.split('/')[-1] for k in params if 'res_block' in k} == {
    'res_block',
    'conv0',
    'conv1',
    'conv2',
    'conv_shortcut',
  } | {f'res_block_{i}' for i in range(1, 8)}
  assert set(params['FixUp_ResNet/~/res_block_1']) == {
    'bias1a',
    'bias1b',
    'bias2a',
    'bias2b',
    'bias3a',
    'bias3b',
    'scale',
  }

  model, params, state, x = _tiny(
    'skipinit_resnet_26', width=0.25, stochdepth_rate=0.0
  )
  out = eval_with_metrics(model, params, state, x)
  for i in (
    2,
    4,
    6,
    8,
  ):  # second block of each stage: zero skip gain -> identity
    assert float(out[f'avg_var_{i}']) == pytest.approx(
      float(out[f'avg_var_{i - 1}']), rel=1e-6
    )
  assert float(out['res_avg_var_1']) > 0.0  # the branch itself is not zero


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match=r"Unknown norm 'layernorm'.*batchnorm"):
    nfnets.create_model('resnet_v2_50', norm='layernorm').count_params()
  with pytest.raises(ValueError, match=r"Unknown ResNet variant 'ResNet51'"):
    nfnets.create_model('fixup_resnet_50', variant='ResNet51')
