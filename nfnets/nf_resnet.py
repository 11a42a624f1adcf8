"""Normalizer-Free pre-activation ResNets (Brock, De & Smith 2021, arXiv 2101.08692).

A ResNet-V2 bottleneck network with every BatchNorm removed: each block computes
``x + alpha * skip_gain * f(act(x) * beta)`` with scaled weight-standardized convolutions, so at
initialization the residual stream grows in variance by exactly ``alpha^2`` per block and is
reset by the projection shortcut of each stage's first block (``beta = 1 / expected_std``).

Module and parameter names equal the official release's (``NF_ResNet/~/initial_conv``,
``NF_ResNet/~/nf_res_block_3/~/conv1``, ...), so checkpoints in its layout load unchanged.
"""

import haiku as hk
import jax

from nfnets import layers, nf_network, registry, variants

# The one table of ResNet layouts (see nfnets/variants.py), under the family's name.
VARIANTS = variants.RESNET
_STRIDES = (1, 2, 2, 2)
TOTAL_STRIDE = 32  # 7x7 conv (2) x max pool (2) x stages (1 * 2 * 2 * 2)


class NFResBlock(layers.ResidualBlock):
  """Normalizer-free pre-activation bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (-> SE x2).

  The shortcut is the input itself, or a strided 1x1 WS conv of the pre-activated input when
  the block changes resolution or width.
  """

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    bottleneck_ratio: float = 0.25,
    kernel_size: int = 3,
    stride: int = 1,
    beta: float = 1.0,
    alpha: float = 0.2,
    activation=jax.nn.relu,
    skip_init: float = 0.0,
    stochdepth_rate: float | None = None,
    use_se: bool = False,
    se_ratio: float = 0.25,
    name: str | None = None,
  ):
    super().__init__(
      in_ch, out_ch, stride, activation, stochdepth_rate, beta, alpha, name
    )
    self.skip_init = skip_init
    self.width = int(out_ch * bottleneck_ratio)
    self.conv0 = layers.WSConv2D(self.width, kernel_shape=1, name='conv0')
    self.conv1 = layers.WSConv2D(
      self.width, kernel_shape=kernel_size, stride=stride, name='conv1'
    )
    self.conv2 = layers.WSConv2D(out_ch, kernel_shape=1, name='conv2')
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(
        out_ch, kernel_shape=1, stride=stride, name='conv_shortcut'
      )
    self.use_se = use_se
    if use_se:
      self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    """Returns the block output and the residual branch's average channel variance."""
    out = self.pre_activate(x)
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    if self.use_se:
      out = (self.se(out) * 2) * out
    return self.merge(out, shortcut, is_training, skip_init=self.skip_init)

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds at input size ``h x w`` (the official ``count_conv_flops`` rule).

    Unlike the official ``count_flops`` (which would divide the strided shortcut by the
    stride twice), the shortcut is counted at the block's input resolution, where its own
    stride applies, so the count equals the traced convolutions.
    """
    macs = self.conv0.count_macs(self.in_ch, h, w)
    macs += self.conv1.count_macs(self.width, h, w)
    if self.use_projection:
      macs += self.conv_shortcut.count_macs(self.in_ch, h, w)
    h, w = h / self.stride, w / self.stride
    macs += self.conv2.count_macs(self.width, h, w)
    if self.use_se:
      macs += self.se.count_macs()
    return macs


@registry.register_family(
  'NF-ResNet',
  VARIANTS,
  default_variant='ResNet50',
  imsize=variants.RESNET_IMSIZE,
  models={
    **{
      f'nf_resnet_{v.removeprefix("ResNet")}': dict(variant=v) for v in VARIANTS
    },
    **{
      f'nf_seresnet_{v.removeprefix("ResNet")}': dict(variant=v, use_se=True)
      for v in VARIANTS
    },
  },
)
class NFResNet(nf_network.NFNetwork):
  """NF-ResNet. ``__call__(x, is_training)`` returns a dict with 'logits' and 'pool'."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    width: float = 4,
    alpha: float = 0.2,
    stochdepth_rate: float = 0.1,
    drop_rate: float = 0.0,
    activation: str = 'relu',
    fc_init: hk.initializers.Initializer | None = None,
    skip_init: float = 0.0,
    use_se: bool = False,
    se_ratio: float = 0.25,
    name: str = 'NF_ResNet',
  ):
    super().__init__(name=name)
    depths = self.init_common(
      VARIANTS, 'NF-ResNet', variant, num_classes, drop_rate, activation
    )['depth']
    self.depth_pattern = depths
    self.width_pattern = [
      int(base * width) for base in variants.RESNET_BASE_WIDTHS
    ]
    ch = int(16 * width)
    self.initial_conv = layers.WSConv2D(
      ch, kernel_shape=7, stride=2, name='initial_conv'
    )
    self.blocks = layers.build_nf_stages(
      ch,
      self.width_pattern,
      self.depth_pattern,
      _STRIDES,
      alpha,
      stochdepth_rate,
      lambda in_ch, out_ch, index, **kw: NFResBlock(
        in_ch,
        out_ch,
        alpha=alpha,
        activation=self.activation,
        skip_init=skip_init,
        use_se=use_se,
        se_ratio=se_ratio,
        **kw,
      ),
    )
    self.init_fc(fc_init, hk.initializers.RandomNormal(stddev=0.01))

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    """Runs the network on NHWC images; see ``NFNet.__call__`` for the metrics' names."""
    layers.check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    out = hk.max_pool(
      out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
    )
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    return layers.classifier_head(
      self.activation(out), self.fc, self.drop_rate, is_training, outputs
    )

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds of one image at ``h x w`` (official per-conv rule, stem max pool kept)."""
    macs = self.initial_conv.count_macs(3, h, w)
    h, w = h / 4, w / 4  # stride-2 conv, then the stride-2 max pool
    for block in self.blocks:
      macs += block.count_macs(h, w)
      h, w = h / block.stride, w / block.stride
    return macs + self.blocks[-1].out_ch * self.num_classes
