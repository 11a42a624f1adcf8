"""EfficientNet B0-B7 (Tan & Le 2019), the NFNet paper's speed baseline (Table 3).

The TF reference (tensorflow/tpu ``efficientnet_model.py``) as timm's ``tf_efficientnet_b*``
builds it, so that their published weights load (``nfnets.efficientnet_timm``):

- convolutions use TF 'SAME' padding (asymmetric for strided kernels), like timm's
  ``Conv2dSame``; timm's non-``tf_`` EfficientNets pad symmetrically and would not match;
- BatchNorm has eps 1e-3 and momentum 0.99, running statistics in Haiku state;
- SiLU, MBConv blocks with squeeze-excite of a quarter of the block's input channels,
  drop-connect (stochastic depth rescaled by the keep probability) growing linearly with
  block index to ``drop_connect_rate``, dropout before the classifier per variant.

Module names follow timm's (``EfficientNet/~/blocks_2_1/~/conv_dw``), so the weight mapping
is a renaming. Parameters are float32; layers compute in the input's dtype.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import cpu_conv, layers, registry, variants

# The B0-B7 table (see nfnets/variants.py), under the family's name.
VARIANTS = variants.EFFICIENTNET
# B0's stages: (repeats, kernel, stride, expansion, output channels).
_STAGES = (
  (1, 3, 1, 1, 16),
  (2, 3, 2, 6, 24),
  (2, 5, 2, 6, 40),
  (3, 3, 2, 6, 80),
  (3, 5, 1, 6, 112),
  (4, 5, 2, 6, 192),
  (1, 3, 1, 6, 320),
)
_STEM_CH = 32
_HEAD_CH = 1280
SE_RATIO = 0.25
BN_EPS = 1e-3
BN_MOMENTUM = 0.99
TOTAL_STRIDE = 32
# The TF reference's conv init: variance scaling 2.0 over fan-out, normal.
_CONV_INIT = hk.initializers.VarianceScaling(2.0, 'fan_out', 'normal')


def round_channels(channels: float, divisor: int = 8) -> int:
  """Channels rounded to the nearest multiple of ``divisor``, never below 90% (TF reference)."""
  rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * channels:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_mult: float) -> int:
  """Block repeats scaled by ``depth_mult``, rounded up."""
  return int(math.ceil(repeats * depth_mult))


def _out_size(size: int, stride: int) -> int:
  return -(-size // stride)  # SAME padding


class BatchNorm(hk.Module):
  """BatchNorm over N, H, W with TF/timm running statistics (no zero-debiasing).

  Parameters ``scale`` and ``offset`` and state ``mean`` and ``var``, each shaped ``(C,)``,
  are timm's ``weight``, ``bias``, ``running_mean`` and ``running_var``. Training normalises
  with the batch's moments (in float32) and updates the state; evaluation uses the state.
  """

  def __init__(
    self,
    eps: float = BN_EPS,
    momentum: float = BN_MOMENTUM,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.eps, self.momentum = eps, momentum

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    ch = x.shape[-1]
    scale = hk.get_parameter('scale', (ch,), jnp.float32, init=jnp.ones)
    offset = hk.get_parameter('offset', (ch,), jnp.float32, init=jnp.zeros)
    running_mean = hk.get_state('mean', (ch,), jnp.float32, init=jnp.zeros)
    running_var = hk.get_state('var', (ch,), jnp.float32, init=jnp.ones)
    if is_training:
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
      m = self.momentum
      hk.set_state('mean', m * running_mean + (1 - m) * mean)
      hk.set_state('var', m * running_var + (1 - m) * var)
    else:
      mean, var = running_mean, running_var
    mult = scale * jax.lax.rsqrt(var + self.eps)
    shift = offset - mean * mult
    return x * mult.astype(x.dtype) + shift.astype(x.dtype)


class Conv(hk.Module):
  """NHWC x HWIO convolution without bias, TF 'SAME' padding, float32 weight ``w``.

  ``groups == in_ch`` is a depthwise convolution (weight ``[k, k, 1, C]``).
  """

  def __init__(
    self,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.out_ch, self.kernel, self.stride, self.groups = (
      out_ch,
      kernel,
      stride,
      groups,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    in_ch = layers.check_groups(x, self.groups, self.module_name)
    shape = (self.kernel, self.kernel, in_ch // self.groups, self.out_ch)
    w = hk.get_parameter('w', shape, jnp.float32, init=_CONV_INIT)
    # The per-backend strategy of the NF convolutions (nfnets/cpu_conv.py): on
    # XLA:CPU, depthwise convolutions as shifted products and 1x1 ones as dots.
    return cpu_conv.grouped_conv(
      x,
      w.astype(x.dtype),
      (self.stride, self.stride),
      'SAME',
      self.groups,
      cpu_conv.default_grouped_conv_impl(),
    )

  def count_macs(self, in_ch: int, h: int, w: int) -> int:
    """Multiply-adds at input size ``h x w`` (SAME output size, as traced)."""
    ho, wo = _out_size(h, self.stride), _out_size(w, self.stride)
    return ho * wo * self.out_ch * self.kernel**2 * in_ch // self.groups


class SqueezeExcite(hk.Module):
  """``x * sigmoid(conv_expand(silu(conv_reduce(mean_hw(x)))))``, 1x1 convs with bias."""

  def __init__(self, ch: int, hidden_ch: int, name: str | None = None):
    super().__init__(name=name)
    self.ch, self.hidden_ch = ch, hidden_ch
    self.conv_reduce = layers.Linear(hidden_ch, name='conv_reduce')
    self.conv_expand = layers.Linear(ch, name='conv_expand')

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.mean(x, axis=(1, 2))
    h = self.conv_expand(jax.nn.silu(self.conv_reduce(h)))
    return x * jax.nn.sigmoid(h)[:, None, None, :]

  def count_macs(self) -> int:
    return 2 * self.ch * self.hidden_ch


class MBConv(hk.Module):
  """Mobile inverted bottleneck with squeeze-excite (the TF reference's ``MBConvBlock``).

  ``[conv_pw -> bn1 -> silu ->] conv_dw -> bn -> silu -> se -> conv_pwl -> bn``, plus the
  input (after drop-connect of the branch) when the block keeps shape. With expansion 1 the
  expanding 1x1 conv is absent and the names are timm's ``DepthwiseSeparableConv``'s.
  """

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int,
    expansion: int,
    drop_connect_rate: float,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
    self.mid_ch = in_ch * expansion
    self.expand = expansion != 1
    bn = iter(['bn1', 'bn2', 'bn3'])
    if self.expand:
      self.conv_pw = Conv(self.mid_ch, 1, name='conv_pw')
      self.bn_pw = BatchNorm(name=next(bn))
    self.conv_dw = Conv(
      self.mid_ch, kernel, stride, groups=self.mid_ch, name='conv_dw'
    )
    self.bn_dw = BatchNorm(name=next(bn))
    self.se = SqueezeExcite(
      self.mid_ch, max(1, int(in_ch * SE_RATIO)), name='se'
    )
    self.conv_pwl = Conv(
      out_ch, 1, name='conv_pwl' if self.expand else 'conv_pw'
    )
    self.bn_pwl = BatchNorm(name=next(bn))
    self.has_skip = stride == 1 and in_ch == out_ch
    self.drop = None
    if self.has_skip and drop_connect_rate > 0:
      self.drop = layers.StochDepth(drop_connect_rate, scale_by_keep=True)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    out = x
    if self.expand:
      out = jax.nn.silu(self.bn_pw(self.conv_pw(out), is_training))
    out = jax.nn.silu(self.bn_dw(self.conv_dw(out), is_training))
    out = self.se(out)
    out = self.bn_pwl(self.conv_pwl(out), is_training)
    res_avg_var = jnp.mean(jnp.var(out.astype(jnp.float32), axis=(0, 1, 2)))
    if self.has_skip:
      if self.drop is not None:
        out = self.drop(out, is_training)
      out = out + x
    return out, res_avg_var

  def count_macs(self, h: int, w: int) -> int:
    macs = self.conv_pw.count_macs(self.in_ch, h, w) if self.expand else 0
    macs += self.conv_dw.count_macs(self.mid_ch, h, w)
    h, w = _out_size(h, self.stride), _out_size(w, self.stride)
    macs += self.se.count_macs()
    return macs + self.conv_pwl.count_macs(self.mid_ch, h, w)


MODELS = {f'efficientnet_{v.lower()}': dict(variant=v) for v in VARIANTS}


@registry.register_family('EfficientNet', VARIANTS, MODELS)
class EfficientNet(hk.Module):
  """EfficientNet-B0..B7. ``__call__(x, is_training)`` returns a dict with 'logits'."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'B0',
    drop_rate: float | None = None,
    drop_connect_rate: float = 0.2,
    width: float | None = None,
    depth: float | None = None,
    name: str = 'EfficientNet',
  ):
    """``width`` and ``depth`` override the variant's multipliers (e.g. for tiny tests)."""
    super().__init__(name=name)
    facts = variants.lookup(VARIANTS, variant, 'EfficientNet')
    layers.check_num_classes(num_classes)
    default_drop = facts['drop_rate']
    width = facts['width_mult'] if width is None else width
    depth = facts['depth_mult'] if depth is None else depth
    if width <= 0 or depth <= 0:
      raise ValueError(f'width and depth must be > 0, got {width}, {depth}.')
    self.drop_rate = default_drop if drop_rate is None else drop_rate
    if not 0.0 <= self.drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {self.drop_rate}.')
    if not 0.0 <= drop_connect_rate < 1.0:
      raise ValueError(
        f'drop_connect_rate must be in [0, 1), got {drop_connect_rate}.'
      )
    self.num_classes = num_classes
    self.stem_ch = round_channels(_STEM_CH * width)
    self.conv_stem = Conv(self.stem_ch, 3, 2, name='conv_stem')
    self.bn1 = BatchNorm(name='bn1')
    stages = [
      (round_repeats(r, depth), k, s, e, round_channels(c * width))
      for r, k, s, e, c in _STAGES
    ]
    num_blocks = sum(r for r, *_ in stages)
    self.blocks, ch, index = [], self.stem_ch, 0
    for stage, (repeats, kernel, stride, expansion, out_ch) in enumerate(
      stages
    ):
      for i in range(repeats):
        self.blocks.append(
          MBConv(
            ch,
            out_ch,
            kernel,
            stride if i == 0 else 1,
            expansion,
            drop_connect_rate * index / num_blocks,
            name=f'blocks_{stage}_{i}',
          )
        )
        ch, index = out_ch, index + 1
    self.head_ch = round_channels(_HEAD_CH * width)
    self.conv_head = Conv(self.head_ch, 1, name='conv_head')
    self.bn2 = BatchNorm(name='bn2')
    self.fc = layers.Linear(num_classes, name='classifier')

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    """NHWC images in; 'logits' (float32), 'pool' and optional signal metrics out."""
    layers.check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = jax.nn.silu(self.bn1(self.conv_stem(x), is_training))
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    out = jax.nn.silu(self.bn2(self.conv_head(out), is_training))
    return layers.classifier_head(
      out, self.fc, self.drop_rate, is_training, outputs
    )

  def count_macs(self, h: int, w: int) -> int:
    """Multiply-adds of one image at ``h x w``: every conv and dense product, as traced."""
    h, w = int(h), int(w)
    macs = self.conv_stem.count_macs(3, h, w)
    h, w = _out_size(h, 2), _out_size(w, 2)
    for block in self.blocks:
      macs += block.count_macs(h, w)
      h, w = _out_size(h, block.stride), _out_size(w, block.stride)
    macs += self.conv_head.count_macs(self.blocks[-1].out_ch, h, w)
    return macs + self.head_ch * self.num_classes
