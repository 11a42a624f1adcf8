"""Fixup ResNets (Zhang et al. 2019; official ``fixup_resnet.py``).

No normalization: scalar biases and a scale per block, depth-scaled init and a zero-init
last convolution.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import activations, baseline_layers, layers, registry, variants
from nfnets.baseline_layers import ResNetBase, he_conv


class FixupBlock(hk.Module):
  """Post-activation Fixup bottleneck: scalar biases around every conv, a scalar scale."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    num_blocks: int,
    stride: int,
    activation,
    stochdepth_rate: float | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.width = in_ch, out_ch, out_ch // 4
    self.stride, self.activation = stride, activation
    self.use_projection = stride > 1 or in_ch != out_ch
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
      stride,
      name='conv1',
      w_init=normal(math.sqrt(2 / (self.width * 9)) * depth_scale),
    )
    self.conv2 = he_conv(out_ch, 1, name='conv2', w_init=jnp.zeros)
    if self.use_projection:
      self.conv_shortcut = he_conv(
        out_ch,
        1,
        stride,
        name='conv_shortcut',
        w_init=normal(math.sqrt(2 / out_ch)),
      )
    self.has_stochdepth = (
      stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0
    )
    if self.has_stochdepth:
      self.stoch_depth = layers.StochDepth(stochdepth_rate)

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
    res_avg_var = jnp.mean(jnp.var(out.astype(jnp.float32), axis=(0, 1, 2)))
    if self.has_stochdepth:
      out = self.stoch_depth(out, is_training)
    return self.activation(out + shortcut), res_avg_var


@registry.register_family(
  'ResNet',  # the ResNet variant table
  variants.RESNET,
  default_variant='ResNet50',
  imsize=variants.RESNET_IMSIZE,
  models={
    f'fixup_resnet_{v.removeprefix("ResNet")}': dict(variant=v)
    for v in variants.RESNET
  },
)
class FixupResNet(ResNetBase):
  """Fixup ResNet (official ``fixup_resnet.py``)."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    width: float = 4,
    stochdepth_rate: float = 0.1,
    drop_rate: float = 0.0,
    activation: str = 'relu',
    fc_init: hk.initializers.Initializer | None = None,
    name: str = 'FixUp_ResNet',
  ):
    super().__init__(name=name)
    depths = baseline_layers.check_common(variant, num_classes, drop_rate)
    self.num_classes, self.drop_rate = num_classes, drop_rate
    self.activation = activations.RAW_ACTIVATIONS[activation]
    self.stem_ch = int(16 * width)
    self.initial_conv = he_conv(self.stem_ch, 7, 2, name='initial_conv')
    self.blocks = baseline_layers.build_stages(
      depths,
      width,
      self.stem_ch,
      lambda in_ch, out_ch, stride, index: FixupBlock(
        in_ch,
        out_ch,
        sum(depths),
        stride,
        self.activation,
        stochdepth_rate * index / sum(depths),
        name='res_block',
      ),
    )
    self.fc = layers.Linear(num_classes, w_init=fc_init or jnp.zeros)

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    layers.check_images(x, baseline_layers.TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    out = self.activation(
      out + hk.get_parameter('bias1', (), jnp.float32, init=jnp.zeros)
    )
    out = baseline_layers.stem_pool(out)
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    out = out + hk.get_parameter('bias2', (), jnp.float32, init=jnp.zeros)
    return self.head(out, is_training, outputs)
