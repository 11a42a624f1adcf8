"""NFNet F0-F7 and F0+-F7+ (Brock et al. 2021, arXiv 2102.06171).

Module and parameter names equal the official release's (``NFNet/~/nf_block_3/~/conv1b/w``
and so on), so the published checkpoints load without renaming.
"""

import functools
from collections.abc import Callable

import haiku as hk
import jax

from nfnets import layers, nf_network, registry, variants

# The one table of F0-F7 and F0+-F7+ (see nfnets/variants.py), under the family's name.
VARIANTS = variants.NFNET
_STRIDES = (1, 2, 2, 2)


class WSConvCalls:
  """How the NFNet block and network apply the convolutions they make.

  A mixin so that NFNetBN swaps it for :class:`nfnet_bn.BNConvCalls` in both, whose
  BatchNorm convolutions take ``is_training``.
  """

  def run_conv(
    self, conv: hk.Module, x: jax.Array, is_training: bool
  ) -> jax.Array:
    del is_training  # WS convolutions keep no statistics.
    return conv(x)


class NFBlock(WSConvCalls, layers.ResidualBlock):
  """Normalizer-free bottleneck: ``x + alpha * skip_gain * f(act(x) * beta)``.

  The residual branch is 1x1 conv -> grouped 3x3 (-> grouped 3x3) -> 1x1 conv -> SE (x2)
  -> stochastic depth -> scalar ``skip_gain`` (zero at init). Transition blocks take the
  shortcut from the pre-activated input through a 2x2 average pool (when strided) and a 1x1
  WS conv.
  """

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    expansion: float = 0.5,
    se_ratio: float = 0.5,
    kernel_shape: int = 3,
    group_size: int = 128,
    big_width: bool = True,
    use_two_convs: bool = True,
    grouped_conv_impl: str | None = None,
    ws_eps: float = layers.WS_EPS,
    ws_eps_inside: bool = False,
    conv: Callable[..., hk.Module] | None = None,
    **kwargs,
  ):
    """``kwargs`` are :class:`layers.ResidualBlock`'s (stride, activation: GELU by
    default, stochdepth_rate, beta, alpha, name).

    ``conv`` makes the block's convolutions (``WSConv2D``'s arguments); the default is a
    WS convolution with ``grouped_conv_impl`` and the WS eps.
    """
    kwargs.setdefault('activation', jax.nn.gelu)
    super().__init__(in_ch, out_ch, **kwargs)
    width = int((out_ch if big_width else in_ch) * expansion)
    # Round the bottleneck width down to whole groups.
    self.groups = max(1, width // group_size)
    self.width = group_size * self.groups if width >= group_size else width
    self.use_two_convs = use_two_convs
    conv = conv or functools.partial(
      layers.WSConv2D,
      grouped_conv_impl=grouped_conv_impl,
      eps=ws_eps,
      eps_inside=ws_eps_inside,
    )
    self.conv0 = conv(self.width, kernel_shape=1, name='conv0')
    self.conv1 = conv(
      self.width,
      kernel_shape=kernel_shape,
      stride=self.stride,
      feature_group_count=self.groups,
      name='conv1',
    )
    if use_two_convs:
      self.conv1b = conv(
        self.width,
        kernel_shape=kernel_shape,
        stride=1,
        feature_group_count=self.groups,
        name='conv1b',
      )
    self.conv2 = conv(out_ch, kernel_shape=1, name='conv2')
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, kernel_shape=1, name='conv_shortcut')
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    """Returns the block output and the residual branch's average channel variance."""
    conv = functools.partial(self.run_conv, is_training=is_training)
    out = self.pre_activate(x)
    shortcut = layers.pooled_shortcut(
      x,
      out,
      self.stride,
      functools.partial(conv, self.conv_shortcut)
      if self.use_projection
      else None,
    )
    out = conv(self.conv0, out)
    out = conv(self.conv1, self.activation(out))
    if self.use_two_convs:
      out = conv(self.conv1b, self.activation(out))
    out = conv(self.conv2, self.activation(out))
    out = (self.se(out) * 2) * out  # x2 keeps the gate's expected scale near 1.
    return self.merge(out, shortcut, is_training)

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds at input size ``h x w`` (official counting rules)."""
    macs = self.conv0.count_macs(self.in_ch, h, w)
    macs += self.conv1.count_macs(self.width, h, w)
    if self.stride > 1:
      h, w = h / self.stride, w / self.stride
    if self.use_two_convs:
      macs += self.conv1b.count_macs(self.width, h, w)
    macs += self.shortcut_macs(h, w) + self.se.count_macs()
    return macs + self.conv2.count_macs(self.width, h, w)


# The registered names. stochdepth 0.25 is the paper's training recipe (the class
# default is the official 0.1).
MODELS = {
  **{
    registry.canonical_name(f'nfnet_{v}'): dict(variant=v, stochdepth_rate=0.25)
    for v in VARIANTS
  },
  # timm's dm_nfnet_f0..f6: same architecture and parameters, timm's numerics (exact
  # GELU, WS eps 1e-5 inside the variance), so timm's weights give timm's logits.
  **{
    f'dm_nfnet_{v.lower()}': dict(
      variant=v,
      stochdepth_rate=0.25,
      activation='gelu_exact',
      ws_eps=layers.TIMM_WS.eps,
      ws_eps_inside=layers.TIMM_WS.eps_inside,
    )
    for v in ('F0', 'F1', 'F2', 'F3', 'F4', 'F5', 'F6')
  },
}


@nf_network.register('NFNet', VARIANTS, MODELS)
class NFNet(WSConvCalls, nf_network.NFNetwork):
  """Normalizer-Free Network. ``__call__(x, is_training)`` returns a dict with 'logits'."""

  block_type = NFBlock
  default_activation = 'gelu'

  def __init__(
    self,
    num_classes: int,
    variant: str = 'F0',
    width: float = 1.0,
    se_ratio: float = 0.5,
    final_conv_mult: float | None = 2,
    final_conv_ch: int | None = None,
    use_two_convs: bool = True,
    group_size: int = 128,
    grouped_conv_impl: str | None = None,
    ws_eps: float = layers.WS_EPS,
    ws_eps_inside: bool = False,
    name: str = 'NFNet',
    **kwargs,
  ):
    """``kwargs`` are :class:`nf_network.NFNetwork`'s (alpha, stochdepth_rate,
    drop_rate, activation: 'gelu', fc_init: normal with std 0.01).

    ``ws_eps``/``ws_eps_inside`` set the weight standardization's eps and its form. The
    defaults are the official code's; timm's ``dm_nfnet_f*`` use ``1e-5`` inside the
    variance (``layers.TIMM_WS``) and the exact GELU.
    """
    super().__init__(num_classes, variant, name=name, **kwargs)
    params = self.params
    self.se_ratio, self.group_size = se_ratio, group_size
    self.use_two_convs = use_two_convs
    self.grouped_conv_impl = grouped_conv_impl
    self.ws_eps, self.ws_eps_inside = ws_eps, ws_eps_inside
    conv = self.make_conv
    ch = int(params['width'][0] * width) // 2
    self.stem = [
      conv(16, kernel_shape=3, stride=2, name='stem_conv0'),
      conv(32, kernel_shape=3, stride=1, name='stem_conv1'),
      conv(64, kernel_shape=3, stride=1, name='stem_conv2'),
      conv(ch, kernel_shape=3, stride=2, name='stem_conv3'),
    ]
    self.blocks = self.build_stages(
      ch,
      [int(w * width) for w in params['width']],
      params['depth'],
      _STRIDES,
      lambda in_ch, out_ch, index, **kw: self.make_block(in_ch, out_ch, **kw),
    )
    ch = self.blocks[-1].out_ch
    if final_conv_mult is None:
      if final_conv_ch is None:
        raise ValueError('Pass one of final_conv_mult or final_conv_ch.')
      final_ch = final_conv_ch
    else:
      final_ch = int(final_conv_mult * ch)
    self.final_conv = conv(final_ch, kernel_shape=1, name='final_conv')
    self.init_fc()

  @hk.transparent  # keeps the modules it makes out of a ~make_conv scope
  def make_conv(self, *args, **kwargs) -> hk.Module:
    """A WS convolution with this network's numerics (NFNetBN: conv + BatchNorm)."""
    return layers.WSConv2D(
      *args,
      grouped_conv_impl=self.grouped_conv_impl,
      eps=self.ws_eps,
      eps_inside=self.ws_eps_inside,
      **kwargs,
    )

  @hk.transparent  # keeps the modules it makes out of a ~make_block scope
  def make_block(self, in_ch: int, out_ch: int, **kwargs) -> hk.Module:
    """One residual block; ``kwargs`` are :meth:`build_stages`'s per-block ones."""
    return self.block_type(
      in_ch,
      out_ch,
      expansion=0.5,
      se_ratio=self.se_ratio,
      group_size=self.group_size,
      use_two_convs=self.use_two_convs,
      grouped_conv_impl=self.grouped_conv_impl,
      ws_eps=self.ws_eps,
      ws_eps_inside=self.ws_eps_inside,
      name='nf_block',  # the official name, also for NFNetBN's block type
      **kwargs,
    )

  def stem_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Four 3x3 convolutions, activated between them (not after the last)."""
    for i, conv in enumerate(self.stem):
      if i:
        x = self.activation(x)
      x = self.run_conv(conv, x, is_training)
    return x

  def final_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    return self.activation(self.run_conv(self.final_conv, x, is_training))

  def stem_macs(self, h: float, w: float) -> tuple[float, float, float]:
    macs, ch = 0.0, 3
    for conv in self.stem:
      macs += conv.count_macs(ch, h, w)
      h, w = h / conv.stride[0], w / conv.stride[1]
      ch = conv.output_channels
    return macs, h, w

  def final_macs(self, h: float, w: float) -> float:
    macs = self.final_conv.count_macs(self.blocks[-1].out_ch, h, w)
    return macs + self.final_conv.output_channels * self.num_classes
