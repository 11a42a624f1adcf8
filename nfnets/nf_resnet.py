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

from nfnets import layers, nf_network, variants

# The one table of ResNet layouts (see nfnets/variants.py), under the family's name.
VARIANTS = variants.RESNET
_STRIDES = (1, 2, 2, 2)


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
    skip_init: float = 0.0,
    use_se: bool = False,
    se_ratio: float = 0.25,
    **kwargs,
  ):
    """``kwargs`` are :class:`layers.ResidualBlock`'s (stride, activation: ReLU by
    default, stochdepth_rate, beta, alpha, name)."""
    super().__init__(in_ch, out_ch, **kwargs)
    self.skip_init = skip_init
    self.width = int(out_ch * bottleneck_ratio)
    self.conv0 = layers.WSConv2D(self.width, kernel_shape=1, name='conv0')
    self.conv1 = layers.WSConv2D(
      self.width, kernel_shape=kernel_size, stride=self.stride, name='conv1'
    )
    self.conv2 = layers.WSConv2D(out_ch, kernel_shape=1, name='conv2')
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(
        out_ch, kernel_shape=1, stride=self.stride, name='conv_shortcut'
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
    macs += self.shortcut_macs(h, w)  # strided itself: at the input size
    h, w = h / self.stride, w / self.stride
    macs += self.conv2.count_macs(self.width, h, w)
    if self.use_se:
      macs += self.se.count_macs()
    return macs


MODELS = {
  **{
    f'nf_resnet_{v.removeprefix("ResNet")}': dict(variant=v) for v in VARIANTS
  },
  **{
    f'nf_seresnet_{v.removeprefix("ResNet")}': dict(variant=v, use_se=True)
    for v in VARIANTS
  },
}
IMSIZE = variants.RESNET_IMSIZE  # the paper's train and test resolution


@nf_network.register('NF-ResNet', VARIANTS, MODELS, imsize=IMSIZE)
class NFResNet(nf_network.NFNetwork):
  """NF-ResNet. ``__call__(x, is_training)`` returns a dict with 'logits' and 'pool'."""

  default_activation = 'relu'

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    width: float = 4,
    skip_init: float = 0.0,
    use_se: bool = False,
    se_ratio: float = 0.25,
    name: str = 'NF_ResNet',
    **kwargs,
  ):
    """``kwargs`` are :class:`nf_network.NFNetwork`'s (alpha, stochdepth_rate,
    drop_rate: 0, activation: 'relu', fc_init: normal with std 0.01)."""
    super().__init__(num_classes, variant, name=name, **kwargs)
    self.depth_pattern = self.params['depth']
    self.width_pattern = [
      int(base * width) for base in variants.RESNET_BASE_WIDTHS
    ]
    ch = int(16 * width)
    self.initial_conv = layers.WSConv2D(
      ch, kernel_shape=7, stride=2, name='initial_conv'
    )
    self.blocks = self.build_stages(
      ch,
      self.width_pattern,
      self.depth_pattern,
      _STRIDES,
      lambda in_ch, out_ch, index, **kw: NFResBlock(
        in_ch,
        out_ch,
        skip_init=skip_init,
        use_se=use_se,
        se_ratio=se_ratio,
        **kw,
      ),
    )
    self.init_fc()

  def stem_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The 7x7 convolution, then a stride-2 3x3 max pool."""
    return hk.max_pool(
      self.initial_conv(x),
      window_shape=(1, 3, 3, 1),
      strides=(1, 2, 2, 1),
      padding='SAME',
    )

  def final_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    return self.activation(x)  # pre-activation blocks leave it unactivated

  def stem_macs(self, h: float, w: float) -> tuple[float, float, float]:
    # The stride-2 convolution, then the stride-2 max pool (counted as free).
    return self.initial_conv.count_macs(3, h, w), h / 4, w / 4

  def final_macs(self, h: float, w: float) -> float:
    return self.blocks[-1].out_ch * self.num_classes
