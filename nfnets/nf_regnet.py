"""Normalizer-Free RegNets B0-B8 (Brock, De & Smith 2021, arXiv 2101.08692, Section 5).

EfficientNet-like inverted bottlenecks on a RegNet-style width/depth schedule: 1x1 expansion
(x2.25, x1 in the very first block) -> grouped 3x3 with group width 8 -> squeeze-excite on the
expanded width (x2) -> 1x1 projection, with the NF-ResNet residual ``x + alpha * skip_gain *
f(act(x) * beta)`` and SiLU. Widths, depths, resolutions and dropout follow the official
release's ``nf_regnet_params``; module names follow its ``nf_regnet.py`` (``NF_RegNet/~/nf_block``).
"""

import haiku as hk
import jax

from nfnets import layers, nf_network, variants

# The one table of B0-B8 (see nfnets/variants.py), under the family's name.
VARIANTS = variants.NF_REGNET


class NFBlock(layers.ResidualBlock):
  """NF-RegNet inverted bottleneck; every block of a stage but the first keeps its width."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    expansion: float = 2.25,
    se_ratio: float = 0.5,
    kernel_size: int = 3,
    group_size: int = 8,
    **kwargs,
  ):
    """``kwargs`` are :class:`layers.ResidualBlock`'s (stride, activation: SiLU by
    default, stochdepth_rate, beta, alpha, name)."""
    kwargs.setdefault('activation', jax.nn.silu)
    super().__init__(in_ch, out_ch, **kwargs)
    # Round the expanded width down to whole groups of ``group_size`` channels.
    self.groups = int(in_ch * expansion) // group_size
    if self.groups < 1:
      raise ValueError(
        f'Expanded width {int(in_ch * expansion)} is smaller than '
        f'group_size={group_size}; widen the network or shrink the groups.'
      )
    self.width = group_size * self.groups
    self.conv0 = layers.WSConv2D(self.width, kernel_shape=1, name='conv0')
    self.conv1 = layers.WSConv2D(
      self.width,
      kernel_shape=kernel_size,
      stride=self.stride,
      feature_group_count=self.groups,
      name='conv1',
    )
    self.conv2 = layers.WSConv2D(out_ch, kernel_shape=1, name='conv2')
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(
        out_ch, kernel_shape=1, name='conv_shortcut'
      )
    self.se = layers.SqueezeExcite(self.width, self.width, se_ratio)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    """Returns the block output and the residual branch's average channel variance."""
    out = self.pre_activate(x)
    shortcut = layers.pooled_shortcut(
      x, out, self.stride, self.conv_shortcut if self.use_projection else None
    )
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = (
      self.se(out) * 2
    ) * out  # SE on the expanded width, before the projection.
    out = self.conv2(self.activation(out))
    return self.merge(out, shortcut, is_training)

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds at input size ``h x w``, as the official ``NFBlock.count_flops``."""
    macs = self.conv0.count_macs(self.in_ch, h, w)
    macs += self.conv1.count_macs(self.width, h, w)
    h, w = h / self.stride, w / self.stride
    macs += self.shortcut_macs(h, w) + self.se.count_macs()
    return macs + self.conv2.count_macs(self.width, h, w)


MODELS = {f'nf_regnet_{v.lower()}': dict(variant=v) for v in VARIANTS}


@nf_network.register('NF-RegNet', VARIANTS, MODELS)
class NFRegNet(nf_network.NFNetwork):
  """NF-RegNet. ``__call__(x, is_training)`` returns a dict with 'logits' and 'pool'."""

  default_activation = 'silu'
  default_fc_init = hk.initializers.Constant(0.0)  # official: zero classifier

  def __init__(
    self,
    num_classes: int,
    variant: str = 'B0',
    width: float = 0.75,
    expansion: float = 2.25,
    group_size: int = 8,
    se_ratio: float = 0.5,
    name: str = 'NF_RegNet',
    **kwargs,
  ):
    """``kwargs`` are :class:`nf_network.NFNetwork`'s (alpha, stochdepth_rate,
    drop_rate, activation: 'silu', fc_init: zeros)."""
    super().__init__(num_classes, variant, name=name, **kwargs)
    params = self.params
    ch = int(params['width'][0] * width)
    self.initial_conv = layers.WSConv2D(
      ch, kernel_shape=3, stride=2, name='initial_conv'
    )
    self.blocks = self.build_stages(
      ch,
      [int(w * width) for w in params['width']],
      params['depth'],
      (2,) * len(params['depth']),  # every stage halves the resolution
      lambda in_ch, out_ch, index, **kw: NFBlock(
        in_ch,
        out_ch,
        expansion=1 if index == 0 else expansion,  # EffNet's first block
        se_ratio=se_ratio,
        group_size=group_size,
        **kw,
      ),
    )
    ch = self.blocks[-1].out_ch
    # EfficientNet-style head: 1280 channels for a 440-wide last stage, scaled with it.
    self.final_conv = layers.WSConv2D(
      int(1280 * ch // 440), kernel_shape=1, name='final_conv'
    )
    self.init_fc()

  def stem_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    return self.initial_conv(x)

  def final_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    return self.activation(self.final_conv(x))

  def stem_macs(self, h: float, w: float) -> tuple[float, float, float]:
    return self.initial_conv.count_macs(3, h, w), h / 2, w / 2

  def final_macs(self, h: float, w: float) -> float:
    macs = self.final_conv.count_macs(self.blocks[-1].out_ch, h, w)
    return macs + self.final_conv.output_channels * self.num_classes
