"""NF-ResNets: sizes against torchvision's ResNets and a closed form, names, shapes, init."""

import haiku as hk
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets
from nfnets import counting, nf_resnet
from tests.model_helpers import eval_with_metrics, init_on_noise

# torchvision ResNet-50/101/152 (v1.5: stride on the 3x3 conv, strided 1x1 projection), from
# the weights' metadata (`num_params`, `_ops` in GFLOPs = multiply-adds of convs and the fc at
# 224 px). An NF-ResNet has the same convs; each WS conv's gain + bias replaces the BatchNorm
# scale + offset after that conv, and each block adds one scalar skip gain.
TORCHVISION = {
  50: (25_557_032, 4.089),
  101: (44_549_160, 7.801),
  152: (60_192_808, 11.514),
}
DEPTHS = {
  26: (2, 2, 2, 2),
  50: (3, 4, 6, 3),
  101: (3, 4, 23, 3),
  152: (3, 8, 36, 3),
  200: (3, 24, 36, 3),
}


def closed_form(depths, width=4, num_classes=1000, res=224, se_ratio=None):
  """(params, MACs) of an NF-ResNet written out by hand from the paper's description."""
  params = (
    7 * 7 * 3 * 16 * width + 2 * 16 * width
  )  # stem WS conv: w, gain, bias
  macs = 7 * 7 * 3 * 16 * width * (res / 2) ** 2
  ch, size = 16 * width, res / 4
  for stage, (base, depth) in enumerate(zip((64, 128, 256, 512), depths)):
    out, mid = base * width, base * width // 4
    for i in range(depth):
      stride = 2 if (stage > 0 and i == 0) else 1
      small = size / stride
      params += ch * mid + 9 * mid * mid + mid * out + 2 * (mid + mid + out) + 1
      macs += (
        ch * mid * size**2 + 9 * mid * mid * small**2 + mid * out * small**2
      )
      if i == 0:  # projection shortcut: 1x1, strided
        params += ch * out + 2 * out
        macs += ch * out * small**2
      if se_ratio:
        hidden = int(out * se_ratio)
        params += out * hidden + hidden + hidden * out + out
        macs += 2 * out * hidden
      ch, size = out, small
  return params + ch * num_classes + num_classes, macs + ch * num_classes


@pytest.mark.parametrize('depth', sorted(TORCHVISION))
def test_sizes_match_torchvision(depth):
  params, gflops = TORCHVISION[depth]
  model = nfnets.create_model(f'nf_resnet_{depth}')
  assert model.count_params() == params + sum(
    DEPTHS[depth]
  )  # + one skip gain per block
  assert model.count_macs() / 1e9 == pytest.approx(gflops, abs=5e-4)


@pytest.mark.parametrize('depth', sorted(DEPTHS))
@pytest.mark.parametrize('se', [False, True])
def test_sizes_match_closed_form(depth, se):
  model = nfnets.create_model(f'nf_{"se" if se else ""}resnet_{depth}')
  params, macs = closed_form(DEPTHS[depth], se_ratio=0.25 if se else None)
  assert model.count_params() == params
  assert model.count_macs() == pytest.approx(macs, rel=1e-12)
  assert (model.train_imsize, model.test_imsize) == (224, 224)


@pytest.mark.parametrize('name', ['nf_resnet_26', 'nf_seresnet_26'])
def test_rule_count_equals_traced_count(name):
  model = nfnets.create_model(name)
  assert counting.count_model_macs(model, 224) == model.count_macs(224)


def test_official_module_names():
  shapes = nfnets.create_model('nf_resnet_26').param_shapes()
  blocks = ['NF_ResNet/~/nf_res_block'] + [
    f'NF_ResNet/~/nf_res_block_{i}' for i in range(1, 8)
  ]
  expected = {'NF_ResNet/~/initial_conv', 'NF_ResNet/~/linear'}
  for i, block in enumerate(blocks):
    expected |= {block} | {f'{block}/~/conv{c}' for c in range(3)}
    if i % 2 == 0:  # the first block of each stage projects
      expected.add(f'{block}/~/conv_shortcut')
  assert set(shapes) == expected
  assert shapes['NF_ResNet/~/initial_conv']['w'].shape == (7, 7, 3, 64)
  assert set(shapes['NF_ResNet/~/initial_conv']) == {'w', 'gain', 'bias'}
  assert shapes['NF_ResNet/~/nf_res_block_2/~/conv1']['w'].shape == (
    3,
    3,
    128,
    128,
  )
  assert shapes['NF_ResNet/~/linear']['w'].shape == (2048, 1000)


def test_tiny_forward_shapes_and_zero_init_gains():
  model = nfnets.create_model('nf_resnet_26', num_classes=10, width=0.25)
  params, state, x = init_on_noise(model)
  out = eval_with_metrics(model, params, state, x)
  assert out['logits'].shape == (2, 10) and out['logits'].dtype == jnp.float32
  assert out['pool'].shape == (2, 128)
  assert all(
    float(v['skip_gain']) == 0.0 for v in params.values() if 'skip_gain' in v
  )
  # With zero skip gains a non-projecting block (the 2nd of each stage) is the identity.
  for i in (2, 4, 6, 8):
    assert float(out[f'avg_var_{i}']) == pytest.approx(
      float(out[f'avg_var_{i - 1}']), rel=1e-6
    )
  assert {f'res_avg_var_{i}' for i in range(8)} <= set(out)


def test_beta_follows_expected_std():
  f = hk.transform(
    lambda: [b.beta for b in nf_resnet.NFResNet(10, 'ResNet50').blocks]
  )
  betas = np.array(f.apply({}, None))
  # A stage's first block expects the previous stage's final std; its projection resets it.
  expected, previous = [], 0
  for depth in DEPTHS[50]:
    expected += [
      1 / np.sqrt(1 + 0.04 * k) for k in [previous, *range(1, depth)]
    ]
    previous = depth
  np.testing.assert_allclose(betas, expected, rtol=1e-12)


def test_bad_variant_raises():
  with pytest.raises(
    ValueError, match=r"Unknown NF-ResNet variant 'ResNet51'.*ResNet50"
  ):
    nfnets.create_model('nf_resnet_50', variant='ResNet51')
