"""SkipInit ResNets (De & Smith 2020; official ``skipinit_resnet.py``).

No normalization: a zero-init scalar gain on every residual branch keeps each block the
identity at initialization.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import baseline_layers, layers
from nfnets.baseline_layers import he_conv


class SkipInitBlock(layers.ResidualBlock):
  """Unnormalized pre-activation bottleneck whose branch is scaled by a zero-init scalar."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    **kwargs,
  ):
    """``kwargs`` are :class:`layers.ResidualBlock`'s (stride, activation,
    stochdepth_rate, name)."""
    super().__init__(in_ch, out_ch, **kwargs)
    self.width = out_ch // 4
    conv = lambda ch, k, s=1, n=None: he_conv(ch, k, s, name=n, with_bias=True)
    self.conv0 = conv(self.width, 1, n='conv0')
    self.conv1 = conv(self.width, 3, self.stride, n='conv1')
    self.conv2 = conv(out_ch, 1, n='conv2')
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, self.stride, n='conv_shortcut')

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    out = self.activation(x)
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    out, res_avg_var = layers.measure_and_drop(
      out, self.stoch_depth, is_training
    )
    out = out * hk.get_parameter('skip_gain', (), jnp.float32, init=jnp.zeros)
    return out + shortcut, res_avg_var


@baseline_layers.register_resnet_family('ResNet', skipinit_resnet={})
class SkipInitResNet(baseline_layers.InitScaledResNet):
  """SkipInit ResNet (official ``skipinit_resnet.py``)."""

  default_name = 'SkipInit_ResNet'
  block_cls = SkipInitBlock
  block_name = 'nf_res_block'

  @hk.transparent
  def final_features(self, x: jax.Array) -> jax.Array:
    # Pre-activation blocks leave the last block's output unactivated.
    return self.activation(x)
