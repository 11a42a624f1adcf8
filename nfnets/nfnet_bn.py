"""NFNet-F* with BatchNorm: every WS convolution replaced by a plain one and BatchNorm.

The "F0 with BatchNorm" of the NFNet paper's speed comparison: the same widths, depths,
blocks and grouped-conv strategy as :mod:`nfnets.nfnet`, so a timing difference isolates the
normalization. BatchNorm statistics live in Haiku state.
"""

import functools

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import cpu_conv, nf_network, nfnet, registry, variants
from nfnets.baseline_layers import batch_norm, conv_macs


class BNConv2D(hk.Module):
  """Plain convolution (no bias) followed by BatchNorm: the NFNet-BN stand-in for WSConv2D.

  The weight is HWIO under the name 'w' as in WSConv2D; grouped convolutions use the same
  per-backend strategy (:func:`cpu_conv.grouped_conv`) so speed comparisons isolate the norm.
  """

  def __init__(
    self,
    output_channels: int,
    kernel_shape: int = 1,
    stride: int = 1,
    feature_group_count: int = 1,
    grouped_conv_impl: str | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.output_channels = output_channels
    self.kernel_shape = (kernel_shape, kernel_shape)
    self.stride = (stride, stride)
    self.feature_group_count = feature_group_count
    self.grouped_conv_impl = grouped_conv_impl
    self.bn = batch_norm('batchnorm')

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    w_shape = self.kernel_shape + (
      x.shape[-1] // self.feature_group_count,
      self.output_channels,
    )
    w_init = hk.initializers.VarianceScaling(1.0, 'fan_in', 'normal')
    w = hk.get_parameter('w', w_shape, jnp.float32, init=w_init)
    impl = self.grouped_conv_impl or cpu_conv.default_grouped_conv_impl()
    out = cpu_conv.grouped_conv(
      x, w.astype(x.dtype), self.stride, 'SAME', self.feature_group_count, impl
    )
    return self.bn(out, is_training).astype(x.dtype)

  def count_macs(self, in_ch: int, h: float, w: float) -> float:
    return conv_macs(
      in_ch,
      self.output_channels,
      self.kernel_shape[0],
      self.stride[0],
      h,
      w,
      self.feature_group_count,
    )


class BNConvCalls:
  """Applies BatchNorm convolutions, which take ``is_training`` (see nfnet.WSConvCalls)."""

  def run_conv(
    self, conv: hk.Module, x: jax.Array, is_training: bool
  ) -> jax.Array:
    return conv(x, is_training)


class NFNetBNBlock(BNConvCalls, nfnet.NFBlock):
  """``nfnet.NFBlock`` with every WS conv replaced by conv + BatchNorm (same shapes)."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    grouped_conv_impl: str | None = None,
    **kwargs,
  ):
    """``kwargs`` are :class:`nfnet.NFBlock`'s; its WS eps does not apply here."""
    super().__init__(
      in_ch,
      out_ch,
      grouped_conv_impl=grouped_conv_impl,
      conv=functools.partial(BNConv2D, grouped_conv_impl=grouped_conv_impl),
      **kwargs,
    )


# The registered names, with the NFNets' resolutions and recipe.
MODELS = {
  registry.canonical_name(f'nfnet_{v}_bn'): dict(
    variant=v, stochdepth_rate=0.25
  )
  for v in variants.NFNET
}


@nf_network.register('NFNet', variants.NFNET, MODELS)
class NFNetBN(BNConvCalls, nfnet.NFNet):
  """NFNet-F* with BatchNorm in place of weight standardization (same widths and depths)."""

  # NFNet options that change the WS convolutions or the block, which NFNetBN
  # replaces: refused rather than ignored.
  _NOT_APPLICABLE = ('ws_eps', 'ws_eps_inside', 'use_two_convs')
  block_type = NFNetBNBlock

  def __init__(
    self,
    num_classes: int,
    variant: str = 'F0',
    name: str = 'NFNet_BN',
    **kwargs,
  ):
    """``kwargs`` are :class:`nfnet.NFNet`'s (width, se_ratio, alpha, ...)."""
    given = sorted(set(kwargs) & set(self._NOT_APPLICABLE))
    if given:
      raise TypeError(
        f'NFNetBN has BatchNorm convolutions and two 3x3 convs per block; '
        f'{given} do not apply.'
      )
    super().__init__(num_classes, variant, name=name, **kwargs)

  @hk.transparent
  def make_conv(self, *args, **kwargs) -> BNConv2D:
    return BNConv2D(*args, grouped_conv_impl=self.grouped_conv_impl, **kwargs)
