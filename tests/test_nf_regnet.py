"""NF-RegNets B0-B8: the official variant table, sizes by closed form, names, shapes, init."""

import jax.numpy as jnp
import pytest

import nfnets
from nfnets import counting
from tests.model_helpers import eval_with_metrics, init_on_noise

# Official release, nfnets/base.py `nf_regnet_params` (widths before the 0.75 multiplier of
# experiment_nf_regnets.py), written out independently of nfnets/nf_regnet.py.
OFFICIAL = {
  'b0': ((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
  'b1': ((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
  'b2': ((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
  'b3': ((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
  'b4': ((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
  'b5': ((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
  'b6': ((88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5),
  'b7': ((96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5),
  'b8': ((104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5),
}


def closed_form(
  widths, depths, res, mult=0.75, expansion=2.25, group=8, num_classes=1000
):
  """(params, MACs) by the NF-ResNet paper's NF-RegNet description and the official
  ``count_conv_flops`` rule (out * H*W/stride^2 * in/groups * k^2; SE and fc: in * out)."""
  conv_p = lambda cin, cout, k=1, g=1: (
    k * k * cin // g * cout + 2 * cout
  )  # w, gain, bias
  ch = int(widths[0] * mult)
  params, macs, size = conv_p(3, ch, 3), 9 * 3 * ch * (res / 2) ** 2, res / 2
  first = True
  for width, depth in zip(widths, depths):
    for i in range(depth):
      out = int(width * mult)
      mid = int(ch * (1 if first else expansion)) // group * group
      groups, small = mid // group, size / 2 if i == 0 else size
      hidden = int(mid * 0.5)
      params += (
        conv_p(ch, mid) + conv_p(mid, mid, 3, groups) + conv_p(mid, out) + 1
      )
      params += (
        mid * hidden + hidden + hidden * mid + mid
      )  # SE on the expanded width
      macs += (
        ch * mid * size**2 + 9 * group * mid * small**2 + mid * out * small**2
      )
      macs += 2 * mid * hidden
      if i == 0 or ch != out:  # 2x2 average pool, then a 1x1 conv
        params += conv_p(ch, out)
        macs += ch * out * small**2
      ch, size, first = out, small, False
  final = 1280 * ch // 440
  params += conv_p(ch, final) + final * num_classes + num_classes
  return params, macs + ch * final * size**2 + final * num_classes


@pytest.mark.parametrize('variant', sorted(OFFICIAL))
def test_variant_table_and_sizes(variant):
  widths, depths, train_res, test_res, drop = OFFICIAL[variant]
  model = nfnets.create_model(f'nf_regnet_{variant}')
  assert (model.train_imsize, model.test_imsize) == (train_res, test_res)
  assert model.extras['drop_rate'] == drop
  params, test_macs = closed_form(widths, depths, test_res)
  assert model.count_params() == params
  assert model.count_macs() == pytest.approx(test_macs, rel=1e-12)
  _, train_macs = closed_form(widths, depths, train_res)
  assert model.count_macs(train_res) == pytest.approx(train_macs, rel=1e-12)


def test_b0_headline_numbers():
  # NF-RegNet-B0 at 224 px: 0.44 GMACs (the paper's "0.44B FLOPs"), 8.6M parameters.
  model = nfnets.create_model('nf_regnet_b0')
  assert model.count_params() == 8_595_372
  assert model.count_macs() / 1e9 == pytest.approx(0.4437, abs=1e-4)


def test_rule_count_equals_traced_count():
  model = nfnets.create_model('nf_regnet_b0')
  assert counting.count_model_macs(model, 224) == model.count_macs(224)


def test_official_module_names():
  shapes = nfnets.create_model('nf_regnet_b0').param_shapes()
  assert (
    'NF_RegNet/~/initial_conv' in shapes and 'NF_RegNet/~/final_conv' in shapes
  )
  assert shapes['NF_RegNet/~/linear']['w'].shape == (
    960,
    1000,
  )  # 1280 * 330 // 440
  # Block 0 (expansion 1): 36 -> 32 channels in 4 groups of 8; SE on the expanded width.
  assert shapes['NF_RegNet/~/nf_block/~/conv1']['w'].shape == (3, 3, 8, 32)
  assert shapes['NF_RegNet/~/nf_block/~/squeeze_excite/~/linear'][
    'w'
  ].shape == (32, 16)
  assert shapes['NF_RegNet/~/nf_block_15']['skip_gain'].shape == ()
  assert set(shapes['NF_RegNet/~/nf_block_1/~/conv_shortcut']) == {
    'w',
    'gain',
    'bias',
  }
  assert not any(k.startswith('NF_RegNet/~/nf_block_16') for k in shapes)


def test_tiny_forward_zero_init_classifier():
  model = nfnets.create_model('nf_regnet_b0', num_classes=10, width=0.25)
  params, state, x = init_on_noise(model)
  out = eval_with_metrics(model, params, state, x)
  assert out['logits'].shape == (2, 10) and out['logits'].dtype == jnp.float32
  assert out['pool'].shape == (2, 1280 * 110 // 440)
  # The official classifier starts at zero, so every logit does.
  assert float(jnp.abs(out['logits']).max()) == 0.0
  assert float(jnp.abs(out['pool']).max()) > 0.0
  assert {f'res_avg_var_{i}' for i in range(16)} <= set(out)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match=r"Unknown NF-RegNet variant 'B9'.*B8"):
    nfnets.create_model('nf_regnet_b0', variant='B9')
  with pytest.raises(ValueError, match='group_size=64'):
    nfnets.create_model('nf_regnet_b0', group_size=64).count_params()
