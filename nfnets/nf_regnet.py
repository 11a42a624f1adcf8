"""Normalizer-Free RegNets B0-B8 (Brock, De & Smith 2021, arXiv 2101.08692, Section 5).

EfficientNet-like inverted bottlenecks on a RegNet-style width/depth schedule: 1x1 expansion
(x2.25, x1 in the very first block) -> grouped 3x3 with group width 8 -> squeeze-excite on the
expanded width (x2) -> 1x1 projection, with the NF-ResNet residual ``x + alpha * skip_gain *
f(act(x) * beta)`` and SiLU. Widths, depths, resolutions and dropout follow the official
release's ``nf_regnet_params``; module names follow its ``nf_regnet.py`` (``NF_RegNet/~/nf_block``).
"""

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import layers, nf_network, registry, variants

# The one table of B0-B8 (see nfnets/variants.py), under the family's name.
VARIANTS = variants.NF_REGNET
TOTAL_STRIDE = 32  # stem (2) x four stride-2 stages


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
    stride: int = 1,
    beta: float = 1.0,
    alpha: float = 0.2,
    activation=jax.nn.silu,
    stochdepth_rate: float | None = None,
    name: str | None = None,
  ):
    super().__init__(
      in_ch, out_ch, stride, activation, stochdepth_rate, beta, alpha, name
    )
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
      stride=stride,
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
    if self.use_projection:
      macs += self.conv_shortcut.count_macs(self.in_ch, h, w)
    macs += self.se.count_macs()
    macs += self.conv2.count_macs(self.width, h, w)
    return macs


@registry.register_family(
  'NF-RegNet',
  VARIANTS,
  default_variant='B0',
  models={f'nf_regnet_{v.lower()}': dict(variant=v) for v in VARIANTS},
)
class NFRegNet(nf_network.NFNetwork):
  """NF-RegNet. ``__call__(x, is_training)`` returns a dict with 'logits' and 'pool'."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'B0',
    width: float = 0.75,
    expansion: float = 2.25,
    group_size: int = 8,
    se_ratio: float = 0.5,
    alpha: float = 0.2,
    stochdepth_rate: float = 0.1,
    drop_rate: float | None = None,
    activation: str = 'silu',
    fc_init: hk.initializers.Initializer | None = None,
    name: str = 'NF_RegNet',
  ):
    super().__init__(name=name)
    params = self.init_common(
      VARIANTS, 'NF-RegNet', variant, num_classes, drop_rate, activation
    )
    self.train_imsize = params['train_imsize']
    self.test_imsize = params['test_imsize']
    ch = int(params['width'][0] * width)
    self.initial_conv = layers.WSConv2D(
      ch, kernel_shape=3, stride=2, name='initial_conv'
    )
    self.blocks = layers.build_nf_stages(
      ch,
      [int(w * width) for w in params['width']],
      params['depth'],
      (2,) * len(params['depth']),  # every stage halves the resolution
      alpha,
      stochdepth_rate,
      lambda in_ch, out_ch, index, **kw: NFBlock(
        in_ch,
        out_ch,
        expansion=1 if index == 0 else expansion,  # EffNet's first block
        se_ratio=se_ratio,
        group_size=group_size,
        alpha=alpha,
        activation=self.activation,
        **kw,
      ),
    )
    ch = self.blocks[-1].out_ch
    # EfficientNet-style head: 1280 channels for a 440-wide last stage, scaled with it.
    self.final_conv = layers.WSConv2D(
      int(1280 * ch // 440), kernel_shape=1, name='final_conv'
    )
    # Official default: zero-initialized classifier.
    self.init_fc(fc_init, jnp.zeros)

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    """Runs the network on NHWC images; see ``NFNet.__call__`` for the metrics' names."""
    layers.check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    out = self.activation(self.final_conv(out))
    return layers.classifier_head(
      out, self.fc, self.drop_rate, is_training, outputs
    )

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds of one image at ``h x w``, as the official ``count_flops``."""
    macs = self.initial_conv.count_macs(3, h, w)
    h, w = h / 2, w / 2
    for block in self.blocks:
      macs += block.count_macs(h, w)
      h, w = h / block.stride, w / block.stride
    macs += self.final_conv.count_macs(self.blocks[-1].out_ch, h, w)
    return macs + self.final_conv.output_channels * self.num_classes
