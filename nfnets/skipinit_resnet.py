"""SkipInit ResNets (De & Smith 2020; official ``skipinit_resnet.py``).

No normalization: a zero-init scalar gain on every residual branch keeps each block the
identity at initialization.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import activations, baseline_layers, layers, registry, variants
from nfnets.baseline_layers import ResNetBase, he_conv


class SkipInitBlock(hk.Module):
  """Unnormalized pre-activation bottleneck whose branch is scaled by a zero-init scalar."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    stride: int,
    activation,
    stochdepth_rate: float | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.width = in_ch, out_ch, out_ch // 4
    self.stride, self.activation = stride, activation
    self.use_projection = stride > 1 or in_ch != out_ch
    conv = lambda ch, k, s=1, n=None: he_conv(ch, k, s, name=n, with_bias=True)
    self.conv0 = conv(self.width, 1, n='conv0')
    self.conv1 = conv(self.width, 3, stride, n='conv1')
    self.conv2 = conv(out_ch, 1, n='conv2')
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride, n='conv_shortcut')
    self.has_stochdepth = (
      stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0
    )
    if self.has_stochdepth:
      self.stoch_depth = layers.StochDepth(stochdepth_rate)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    out = self.activation(x)
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    res_avg_var = jnp.mean(jnp.var(out.astype(jnp.float32), axis=(0, 1, 2)))
    if self.has_stochdepth:
      out = self.stoch_depth(out, is_training)
    out = out * hk.get_parameter('skip_gain', (), jnp.float32, init=jnp.zeros)
    return out + shortcut, res_avg_var


@registry.register_family(
  'ResNet',  # the ResNet variant table
  variants.RESNET,
  default_variant='ResNet50',
  imsize=variants.RESNET_IMSIZE,
  models={
    f'skipinit_resnet_{v.removeprefix("ResNet")}': dict(variant=v)
    for v in variants.RESNET
  },
)
class SkipInitResNet(ResNetBase):
  """SkipInit ResNet (official ``skipinit_resnet.py``)."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    width: float = 4,
    stochdepth_rate: float = 0.1,
    drop_rate: float = 0.0,
    activation: str = 'relu',
    fc_init: hk.initializers.Initializer | None = None,
    name: str = 'SkipInit_ResNet',
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
      lambda in_ch, out_ch, stride, index: SkipInitBlock(
        in_ch,
        out_ch,
        stride,
        self.activation,
        stochdepth_rate * index / sum(depths),
        name='nf_res_block',
      ),
    )
    self.fc = layers.Linear(num_classes, w_init=fc_init or jnp.zeros)

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    layers.check_images(x, baseline_layers.TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    out = baseline_layers.stem_pool(out)
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    return self.head(self.activation(out), is_training, outputs)
