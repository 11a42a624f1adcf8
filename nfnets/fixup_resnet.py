"""Fixup ResNets (Zhang et al. 2019; official ``fixup_resnet.py``).

No normalization: scalar biases and a scale per block, depth-scaled init and a zero-init
last convolution.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import baseline_layers, layers
from nfnets.baseline_layers import he_conv


class FixupBlock(layers.ResidualBlock):
  """Post-activation Fixup bottleneck: scalar biases around every conv, a scalar scale."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    num_blocks: int,
    **kwargs,
  ):
    """``num_blocks`` sets the depth-scaled init; ``kwargs`` are
    :class:`layers.ResidualBlock`'s (stride, activation, stochdepth_rate, name)."""
    super().__init__(in_ch, out_ch, **kwargs)
    self.width = out_ch // 4
    depth_scale = (
      num_blocks**-0.25
    )  # Fixup: L^(-1/(2m-2)) with m = 3 convs per branch
    normal = hk.initializers.RandomNormal
    self.conv0 = he_conv(
      self.width,
      1,
      name='conv0',
      w_init=normal(math.sqrt(2 / self.width) * depth_scale),
    )
    self.conv1 = he_conv(
      self.width,
      3,
      self.stride,
      name='conv1',
      w_init=normal(math.sqrt(2 / (self.width * 9)) * depth_scale),
    )
    self.conv2 = he_conv(out_ch, 1, name='conv2', w_init=jnp.zeros)
    if self.use_projection:
      self.conv_shortcut = he_conv(
        out_ch,
        1,
        self.stride,
        name='conv_shortcut',
        w_init=normal(math.sqrt(2 / out_ch)),
      )

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    scalar = lambda n, init=jnp.zeros: hk.get_parameter(
      n, (), jnp.float32, init=init
    )
    out = x + scalar('bias1a')
    shortcut = self.conv_shortcut(out) if self.use_projection else out
    out = self.activation(self.conv0(out) + scalar('bias1b'))
    out = self.conv1(out + scalar('bias2a'))
    out = self.activation(out + scalar('bias2b'))
    out = self.conv2(out + scalar('bias3a'))
    out = out * scalar('scale', jnp.ones) + scalar('bias3b')
    out, res_avg_var = layers.measure_and_drop(
      out, self.stoch_depth, is_training
    )
    return self.activation(out + shortcut), res_avg_var


@baseline_layers.register_resnet_family('ResNet', fixup_resnet={})
class FixupResNet(baseline_layers.InitScaledResNet):
  """Fixup ResNet (official ``fixup_resnet.py``): scalar biases around stem and head."""

  default_name = 'FixUp_ResNet'
  block_cls = FixupBlock
  block_name = 'res_block'

  def block_kwargs(self, num_blocks: int) -> dict:
    return dict(num_blocks=num_blocks)  # Fixup's depth-scaled init

  @hk.transparent
  def stem_output(self, x: jax.Array) -> jax.Array:
    bias = hk.get_parameter('bias1', (), jnp.float32, init=jnp.zeros)
    return self.activation(x + bias)

  @hk.transparent
  def final_features(self, x: jax.Array) -> jax.Array:
    return x + hk.get_parameter('bias2', (), jnp.float32, init=jnp.zeros)
