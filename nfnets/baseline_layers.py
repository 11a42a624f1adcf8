"""Layers shared by the baselines (ResNet, SkipInit, Fixup, NFNet-BN).

Plain He-initialised convolutions, BatchNorm, the official per-convolution MAC rule and the
stem/head bookkeeping of the ResNet-layout networks.
"""

from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import activations, layers, registry, variants

STRIDES = (1, 2, 2, 2)
TOTAL_STRIDE = 32  # 7x7 conv (2) x max pool (2) x stages (1 * 2 * 2 * 2)
HE_INIT = hk.initializers.VarianceScaling(2.0, 'fan_in', 'truncated_normal')


def batch_norm(name: str) -> hk.BatchNorm:
  """BatchNorm as the official baselines configure it."""
  return hk.BatchNorm(
    create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5, name=name
  )


def he_conv(
  out_ch: int,
  kernel: int,
  stride: int = 1,
  name: str | None = None,
  with_bias: bool = False,
  w_init=HE_INIT,
) -> hk.Conv2D:
  """A plain SAME convolution, He-initialised by default."""
  return hk.Conv2D(
    out_ch,
    kernel_shape=kernel,
    stride=stride,
    padding='SAME',
    with_bias=with_bias,
    w_init=w_init,
    name=name,
  )


def conv_macs(
  in_ch: int,
  out_ch: int,
  kernel: int,
  stride: int,
  h: float,
  w: float,
  groups: int = 1,
) -> float:
  """The official ``count_conv_flops`` rule: out_ch * h*w / stride^2 * in_ch/groups * k^2."""
  return out_ch * h * w / stride**2 * in_ch / groups * kernel**2


def bottleneck_macs(
  in_ch: int,
  width: int,
  out_ch: int,
  stride: int,
  projection: bool,
  h: float,
  w: float,
) -> float:
  """MACs of a 1x1 -> 3x3 (strided) -> 1x1 bottleneck and its projection shortcut."""
  macs = conv_macs(in_ch, width, 1, 1, h, w) + conv_macs(
    width, width, 3, stride, h, w
  )
  if projection:
    macs += conv_macs(in_ch, out_ch, 1, stride, h, w)
  return macs + conv_macs(width, out_ch, 1, 1, h / stride, w / stride)


def build_stages(
  depths: Sequence[int],
  width: float,
  in_ch: int,
  make_block: Callable[[int, int, int, int], hk.Module],
) -> list[hk.Module]:
  """The blocks of a ResNet layout, stage by stage.

  ``make_block(in_ch, out_ch, stride, index)`` builds block ``index`` (counted over the
  whole network); the first block of each stage takes the stage's stride.
  """
  widths = [int(base * width) for base in variants.RESNET_BASE_WIDTHS]
  layout = layers.stage_layout(in_ch, widths, depths, STRIDES)
  return [
    make_block(block_in, block_out, stride, index)
    for index, (block_in, block_out, stride, _) in enumerate(layout)
  ]


def register_resnet_family(
  family: str, **prefixes: dict
) -> Callable[[type], type]:
  """Registers ``{prefix}_{26,38,50,...}`` for each ResNet depth, per ``prefix=kwargs``."""
  return registry.register_family(
    family,
    variants.RESNET,
    imsize=variants.RESNET_IMSIZE,
    models={
      f'{prefix}_{v.removeprefix("ResNet")}': dict(variant=v, **kwargs)
      for prefix, kwargs in prefixes.items()
      for v in variants.RESNET
    },
  )


def stem_pool(x: jax.Array) -> jax.Array:
  """The stride-2 3x3 max pool after the 7x7 stem convolution."""
  return hk.max_pool(
    x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
  )


class ResNetBase(hk.Module):
  """Stem, classifier and MAC counting of the ResNet-layout baselines.

  Takes the options every baseline has, the way :class:`nf_network.NFNetwork` does for
  the NF families: a family's constructor takes its own and passes these on. It builds
  the 7x7 stem convolution and the classifier, in that order; the subclass then builds
  its blocks into ``self.blocks`` (:func:`build_stages` with ``self.depths``).
  """

  blocks: list

  def __init__(
    self,
    num_classes: int,
    variant: str,
    width: float = 4,
    drop_rate: float = 0.0,
    activation: str = 'relu',
    fc_init: hk.initializers.Initializer | None = None,
    name: str | None = None,
  ):
    """Checks and keeps the options every ResNet-layout baseline takes.

    Args:
      num_classes: classifier outputs.
      variant: a ResNet depth from the table in nfnets/variants.py ('ResNet50').
      width: channel multiplier of the official ``16 * width`` stem and stage widths.
      drop_rate: dropout before the classifier.
      activation: a name from ``activations.RAW_ACTIVATIONS``; plain, not
        gamma-scaled, as these networks do not rely on gamma.
      fc_init: the classifier's initializer; None is the official zero init.
      name: the module name.
    """
    super().__init__(name=name)
    self.depths = variants.lookup(variants.RESNET, variant, 'ResNet')['depth']
    layers.check_num_classes(num_classes)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
    if activation not in activations.RAW_ACTIVATIONS:
      raise ValueError(
        f'Unknown activation {activation!r}; accepted: '
        f'{sorted(activations.RAW_ACTIVATIONS)}.'
      )
    self.num_classes, self.drop_rate, self.width = num_classes, drop_rate, width
    self.activation = activations.RAW_ACTIVATIONS[activation]
    self.stem_ch = int(16 * width)
    self.initial_conv = he_conv(self.stem_ch, 7, 2, name='initial_conv')
    self.fc = layers.Linear(num_classes, w_init=fc_init or jnp.zeros)

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds of one image at ``h x w`` (official per-conv rule)."""
    macs = conv_macs(3, self.stem_ch, 7, 2, h, w)
    h, w = h / 4, w / 4  # stride-2 conv, stride-2 max pool
    for block in self.blocks:
      macs += bottleneck_macs(
        block.in_ch,
        block.width,
        block.out_ch,
        block.stride,
        block.use_projection,
        h,
        w,
      )
      if getattr(block, 'use_se', False):
        macs += block.se.count_macs()
      h, w = h / block.stride, w / block.stride
    return macs + self.blocks[-1].out_ch * self.num_classes

  def head(self, out: jax.Array, is_training: bool, outputs: dict) -> dict:
    """Pool, dropout and classifier (see layers.classifier_head)."""
    return layers.classifier_head(
      out, self.fc, self.drop_rate, is_training, outputs
    )


class InitScaledResNet(ResNetBase):
  """An unnormalized ResNet that its initialization keeps trainable (SkipInit, Fixup).

  The two differ only in their block (``block_cls``, named ``block_name``), their default
  name and the scalar parameters around the stem and head (``stem_output``,
  ``final_features``).
  """

  default_name: str
  block_cls: type[layers.ResidualBlock]
  block_name: str

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    stochdepth_rate: float = 0.1,
    name: str | None = None,
    **kwargs,
  ):
    """``kwargs`` are :class:`ResNetBase`'s (width, drop_rate, activation, fc_init)."""
    super().__init__(
      num_classes, variant, name=name or self.default_name, **kwargs
    )
    num_blocks = sum(self.depths)
    self.blocks = build_stages(
      self.depths,
      self.width,
      self.stem_ch,
      lambda in_ch, out_ch, stride, index: self.block_cls(
        in_ch,
        out_ch,
        stride=stride,
        activation=self.activation,
        stochdepth_rate=stochdepth_rate * index / num_blocks,
        name=self.block_name,
        **self.block_kwargs(num_blocks),
      ),
    )

  def block_kwargs(self, num_blocks: int) -> dict:
    """Arguments of ``block_cls`` beyond the common ones, for ``num_blocks`` blocks."""
    del num_blocks
    return {}

  @hk.transparent
  def stem_output(self, x: jax.Array) -> jax.Array:
    """The stem convolution's output on its way to the max pool."""
    return x

  @hk.transparent
  def final_features(self, x: jax.Array) -> jax.Array:
    """The last block's output on its way to the classifier head."""
    return x

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    layers.check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = stem_pool(self.stem_output(self.initial_conv(x)))
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    return self.head(self.final_features(out), is_training, outputs)
