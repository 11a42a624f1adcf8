"""The baselines the NF papers compare against, all in the registry.

- ``resnet_v2_*``: BatchNorm pre-activation ResNet (official ``resnet.py``, ``preactivation``);
  ``resnet_v1_*`` its post-activation form; ``unnorm_resnet_*`` the same pre-activation network
  with every normalization removed (He init), the diverging baseline of NF-ResNet Figure 1.
- ``skipinit_resnet_*``: SkipInit (De & Smith 2020): no normalization, a zero-init scalar gain
  on every residual branch (official ``skipinit_resnet.py``).
- ``fixup_resnet_*``: Fixup (Zhang et al. 2019): scalar biases and a scale per block,
  depth-scaled init and a zero-init last conv (official ``fixup_resnet.py``).
- ``nfnet_f*_bn``: NFNet-F* with plain convolutions each followed by BatchNorm instead of
  scaled weight standardization (the "F0 with BatchNorm" of the NFNet paper's speed numbers).

BatchNorm statistics live in Haiku state: ``Model.apply`` returns the updated state in training
mode and leaves it untouched in evaluation mode.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets import activations, cpu_conv, layers, nfnet, registry
from nfnets.nf_resnet import VARIANTS as RESNET_VARIANTS
from nfnets.nfnet import check_images

NORMS = ('batchnorm', 'none')
_BASE_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)
TOTAL_STRIDE = 32
IMSIZE = 224
_HE_INIT = hk.initializers.VarianceScaling(2.0, 'fan_in', 'truncated_normal')


def _batch_norm(name: str) -> hk.BatchNorm:
  return hk.BatchNorm(
    create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5, name=name
  )


def _conv(
  out_ch: int,
  kernel: int,
  stride: int = 1,
  name: str | None = None,
  with_bias: bool = False,
  w_init=_HE_INIT,
) -> hk.Conv2D:
  return hk.Conv2D(
    out_ch,
    kernel_shape=kernel,
    stride=stride,
    padding='SAME',
    with_bias=with_bias,
    w_init=w_init,
    name=name,
  )


def _conv_macs(
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


def _bottleneck_macs(
  in_ch: int,
  width: int,
  out_ch: int,
  stride: int,
  projection: bool,
  h: float,
  w: float,
) -> float:
  macs = _conv_macs(in_ch, width, 1, 1, h, w) + _conv_macs(
    width, width, 3, stride, h, w
  )
  if projection:
    macs += _conv_macs(in_ch, out_ch, 1, stride, h, w)
  return macs + _conv_macs(width, out_ch, 1, 1, h / stride, w / stride)


def _check_common(variant: str, num_classes: int, drop_rate: float) -> None:
  if variant not in RESNET_VARIANTS:
    raise ValueError(
      f'Unknown ResNet variant {variant!r}; accepted: '
      f'{sorted(RESNET_VARIANTS)}.'
    )
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(
      f'num_classes must be a positive int, got {num_classes!r}.'
    )
  if not 0.0 <= drop_rate < 1.0:
    raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')


class _ResNetBase(hk.Module):
  """Shared stem/head bookkeeping and MAC counting of the ResNet-layout baselines."""

  blocks: list
  num_classes: int

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds of one image at ``h x w`` (official per-conv rule)."""
    macs = _conv_macs(3, self.stem_ch, 7, 2, h, w)
    h, w = h / 4, w / 4  # stride-2 conv, stride-2 max pool
    for block in self.blocks:
      macs += _bottleneck_macs(
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

  def _head(self, out: jax.Array, is_training: bool, outputs: dict) -> dict:
    return layers.classifier_head(
      out, self.fc, self.drop_rate, is_training, outputs
    )


class ResBlock(hk.Module):
  """Bottleneck with optional BatchNorm, pre- (V2) or post-activation (V1)."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    stride: int,
    use_projection: bool,
    norm: str,
    preactivation: bool,
    activation=jax.nn.relu,
    use_se: bool = False,
    se_ratio: float = 0.25,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.width = in_ch, out_ch, out_ch // 4
    self.stride, self.use_projection = stride, use_projection
    self.preactivation, self.activation = preactivation, activation
    if norm == 'batchnorm':
      self.bn = [_batch_norm(f'bn{i}') for i in range(3)]
    else:
      self.bn = None
    self.conv0 = _conv(self.width, 1, name='conv0')
    self.conv1 = _conv(self.width, 3, stride, name='conv1')
    self.conv2 = _conv(out_ch, 1, name='conv2')
    if use_projection:
      self.conv_shortcut = _conv(out_ch, 1, stride, name='conv_shortcut')
      if not preactivation and self.bn is not None:
        self.shortcut_bn = _batch_norm('shortcut_bn')
    self.use_se = use_se
    if use_se:
      self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)

  def _norm(self, i: int, x: jax.Array, is_training: bool) -> jax.Array:
    return x if self.bn is None else self.bn[i](x, is_training)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    act = self.activation
    if self.preactivation:
      out = act(self._norm(0, x, is_training))
      shortcut = self.conv_shortcut(out) if self.use_projection else x
      out = self.conv0(out)
      out = self.conv1(act(self._norm(1, out, is_training)))
      out = self.conv2(act(self._norm(2, out, is_training)))
    else:
      shortcut = x
      if self.use_projection:
        shortcut = self.conv_shortcut(x)
        if self.bn is not None:
          shortcut = self.shortcut_bn(shortcut, is_training)
      out = act(self._norm(0, self.conv0(x), is_training))
      out = act(self._norm(1, self.conv1(out), is_training))
      out = self._norm(2, self.conv2(out), is_training)
    if self.use_se:
      out = self.se(out) * out
    res_avg_var = jnp.mean(jnp.var(out.astype(jnp.float32), axis=(0, 1, 2)))
    out = out + shortcut
    return (out if self.preactivation else act(out)), res_avg_var


class ResNet(_ResNetBase):
  """BatchNorm (or unnormalized) ResNet, pre-activation by default (official ``resnet.py``)."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    width: float = 4,
    norm: str = 'batchnorm',
    preactivation: bool = True,
    activation: str = 'relu',
    drop_rate: float = 0.0,
    use_se: bool = False,
    se_ratio: float = 0.25,
    fc_init: hk.initializers.Initializer | None = None,
    name: str = 'ResNet',
  ):
    super().__init__(name=name)
    _check_common(variant, num_classes, drop_rate)
    if norm not in NORMS:
      raise ValueError(f'Unknown norm {norm!r}; accepted: {NORMS}.')
    self.num_classes, self.drop_rate = num_classes, drop_rate
    self.norm, self.preactivation = norm, preactivation
    # Plain (not gamma-scaled) nonlinearity: normalization, not gamma, sets the scale here.
    if activation not in activations.RAW_ACTIVATIONS:
      raise ValueError(
        f'Unknown activation {activation!r}; accepted: '
        f'{sorted(activations.RAW_ACTIVATIONS)}.'
      )
    self.activation = activations.RAW_ACTIVATIONS[activation]
    self.stem_ch = int(16 * width)
    self.initial_conv = _conv(self.stem_ch, 7, 2, name='initial_conv')
    if not preactivation and norm == 'batchnorm':
      self.initial_bn = _batch_norm('initial_bn')
    self.blocks = []
    ch = self.stem_ch
    for base, depth, stride in zip(
      _BASE_WIDTHS, RESNET_VARIANTS[variant]['depth'], _STRIDES
    ):
      for i in range(depth):
        out_ch = int(base * width)
        self.blocks.append(
          ResBlock(
            ch,
            out_ch,
            stride if i == 0 else 1,
            use_projection=i == 0,
            norm=norm,
            preactivation=preactivation,
            activation=self.activation,
            use_se=use_se,
            se_ratio=se_ratio,
            name='res_block_v2' if preactivation else 'res_block_v1',
          )
        )
        ch = out_ch
    if preactivation and norm == 'batchnorm':
      self.final_bn = _batch_norm('final_bn')
    self.fc = layers.Linear(num_classes, w_init=fc_init or jnp.zeros)

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    if not self.preactivation:
      if self.norm == 'batchnorm':
        out = self.initial_bn(out, is_training)
      out = self.activation(out)
    out = hk.max_pool(
      out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
    )
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    if self.preactivation:
      if self.norm == 'batchnorm':
        out = self.final_bn(out, is_training)
      out = self.activation(out)
    return self._head(out, is_training, outputs)


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
    conv = lambda ch, k, s=1, n=None: _conv(ch, k, s, name=n, with_bias=True)
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


class SkipInitResNet(_ResNetBase):
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
    _check_common(variant, num_classes, drop_rate)
    self.num_classes, self.drop_rate = num_classes, drop_rate
    self.activation = activations.RAW_ACTIVATIONS[activation]
    self.stem_ch = int(16 * width)
    self.initial_conv = _conv(self.stem_ch, 7, 2, name='initial_conv')
    depths = RESNET_VARIANTS[variant]['depth']
    self.blocks, ch, index = [], self.stem_ch, 0
    for base, depth, stride in zip(_BASE_WIDTHS, depths, _STRIDES):
      for i in range(depth):
        out_ch = int(base * width)
        self.blocks.append(
          SkipInitBlock(
            ch,
            out_ch,
            stride if i == 0 else 1,
            self.activation,
            stochdepth_rate * index / sum(depths),
            name='nf_res_block',
          )
        )
        ch, index = out_ch, index + 1
    self.fc = layers.Linear(num_classes, w_init=fc_init or jnp.zeros)

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    out = hk.max_pool(
      out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
    )
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    return self._head(self.activation(out), is_training, outputs)


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
    self.conv0 = _conv(
      self.width,
      1,
      name='conv0',
      w_init=normal(math.sqrt(2 / self.width) * depth_scale),
    )
    self.conv1 = _conv(
      self.width,
      3,
      stride,
      name='conv1',
      w_init=normal(math.sqrt(2 / (self.width * 9)) * depth_scale),
    )
    self.conv2 = _conv(out_ch, 1, name='conv2', w_init=jnp.zeros)
    if self.use_projection:
      self.conv_shortcut = _conv(
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


class FixupResNet(_ResNetBase):
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
    _check_common(variant, num_classes, drop_rate)
    self.num_classes, self.drop_rate = num_classes, drop_rate
    self.activation = activations.RAW_ACTIVATIONS[activation]
    self.stem_ch = int(16 * width)
    self.initial_conv = _conv(self.stem_ch, 7, 2, name='initial_conv')
    depths = RESNET_VARIANTS[variant]['depth']
    self.blocks, ch, index = [], self.stem_ch, 0
    for base, depth, stride in zip(_BASE_WIDTHS, depths, _STRIDES):
      for i in range(depth):
        out_ch = int(base * width)
        self.blocks.append(
          FixupBlock(
            ch,
            out_ch,
            sum(depths),
            stride if i == 0 else 1,
            self.activation,
            stochdepth_rate * index / sum(depths),
            name='res_block',
          )
        )
        ch, index = out_ch, index + 1
    self.fc = layers.Linear(num_classes, w_init=fc_init or jnp.zeros)

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    check_images(x, TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    out = self.activation(
      out + hk.get_parameter('bias1', (), jnp.float32, init=jnp.zeros)
    )
    out = hk.max_pool(
      out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
    )
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    out = out + hk.get_parameter('bias2', (), jnp.float32, init=jnp.zeros)
    return self._head(out, is_training, outputs)


class BNConv2D(hk.Module):
  """Plain convolution (no bias) followed by BatchNorm: the NFNet-BN stand-in for WSConv2D.

  The weight is HWIO under the name 'w' as in WSConv2D; grouped convolutions use the same
  per-backend strategy (``cpu_conv.grouped_conv``) so speed comparisons isolate the norm.
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
    self.bn = _batch_norm('batchnorm')

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
    return _conv_macs(
      in_ch,
      self.output_channels,
      self.kernel_shape[0],
      self.stride[0],
      h,
      w,
      self.feature_group_count,
    )


class NFNetBNBlock(hk.Module):
  """``nfnet.NFBlock`` with every WS conv replaced by conv + BatchNorm (same shapes)."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    group_size: int,
    stride: int,
    beta: float,
    alpha: float,
    activation,
    se_ratio: float = 0.5,
    stochdepth_rate: float | None = None,
    grouped_conv_impl: str | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
    self.beta, self.alpha, self.activation = beta, alpha, activation
    width = int(out_ch * 0.5)
    self.groups = max(1, width // group_size)
    self.width = group_size * self.groups if width >= group_size else width
    conv = lambda *a, **k: BNConv2D(
      *a, grouped_conv_impl=grouped_conv_impl, **k
    )
    self.conv0 = conv(self.width, 1, name='conv0')
    self.conv1 = conv(self.width, 3, stride, self.groups, name='conv1')
    self.conv1b = conv(self.width, 3, 1, self.groups, name='conv1b')
    self.conv2 = conv(out_ch, 1, name='conv2')
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, name='conv_shortcut')
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)
    self.has_stochdepth = (
      stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0
    )
    if self.has_stochdepth:
      self.stoch_depth = layers.StochDepth(stochdepth_rate)

  def __call__(
    self, x: jax.Array, is_training: bool
  ) -> tuple[jax.Array, jax.Array]:
    out = self.activation(x) * jnp.asarray(self.beta, x.dtype)
    if self.stride > 1:
      shortcut = hk.avg_pool(
        out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding='SAME'
      )
      shortcut = self.conv_shortcut(shortcut, is_training)
    elif self.use_projection:
      shortcut = self.conv_shortcut(out, is_training)
    else:
      shortcut = x
    out = self.conv0(out, is_training)
    out = self.conv1(self.activation(out), is_training)
    out = self.conv1b(self.activation(out), is_training)
    out = self.conv2(self.activation(out), is_training)
    out = (self.se(out) * 2) * out
    res_avg_var = jnp.mean(jnp.var(out.astype(jnp.float32), axis=(0, 1, 2)))
    if self.has_stochdepth:
      out = self.stoch_depth(out, is_training)
    skip_gain = hk.get_parameter('skip_gain', (), jnp.float32, init=jnp.zeros)
    out = out * skip_gain.astype(out.dtype)
    return out * jnp.asarray(self.alpha, out.dtype) + shortcut, res_avg_var

  def count_macs(self, h: float, w: float) -> float:
    macs = self.conv0.count_macs(self.in_ch, h, w)
    macs += self.conv1.count_macs(self.width, h, w)
    h, w = h / self.stride, w / self.stride
    macs += self.conv1b.count_macs(self.width, h, w)
    if self.use_projection:
      macs += self.conv_shortcut.count_macs(self.in_ch, h, w)
    return macs + self.se.count_macs() + self.conv2.count_macs(self.width, h, w)


class NFNetBN(hk.Module):
  """NFNet-F* with BatchNorm in place of weight standardization (same widths and depths)."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'F0',
    width: float = 1.0,
    se_ratio: float = 0.5,
    alpha: float = 0.2,
    stochdepth_rate: float = 0.1,
    drop_rate: float | None = None,
    activation: str = 'gelu',
    group_size: int = 128,
    grouped_conv_impl: str | None = None,
    name: str = 'NFNet_BN',
  ):
    super().__init__(name=name)
    if variant not in nfnet.VARIANTS:
      raise ValueError(
        f'Unknown NFNet variant {variant!r}; accepted: '
        f'{sorted(nfnet.VARIANTS)}.'
      )
    if not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(
        f'num_classes must be a positive int, got {num_classes!r}.'
      )
    params = nfnet.VARIANTS[variant]
    self.num_classes = num_classes
    self.activation = activations.get_activation(activation)
    self.drop_rate = params['drop_rate'] if drop_rate is None else drop_rate
    conv = lambda *a, **k: BNConv2D(
      *a, grouped_conv_impl=grouped_conv_impl, **k
    )
    ch = int(params['width'][0] * width) // 2
    self.stem = [
      conv(16, 3, 2, name='stem_conv0'),
      conv(32, 3, 1, name='stem_conv1'),
      conv(64, 3, 1, name='stem_conv2'),
      conv(ch, 3, 2, name='stem_conv3'),
    ]
    self.blocks, expected_std, index = [], 1.0, 0
    num_blocks = sum(params['depth'])
    for block_width, depth, stride in zip(
      params['width'], params['depth'], (1, 2, 2, 2)
    ):
      for i in range(depth):
        out_ch = int(block_width * width)
        self.blocks.append(
          NFNetBNBlock(
            ch,
            out_ch,
            group_size,
            stride if i == 0 else 1,
            1.0 / expected_std,
            alpha,
            self.activation,
            se_ratio,
            stochdepth_rate * index / num_blocks,
            grouped_conv_impl,
            name='nf_block',
          )
        )
        ch, index = out_ch, index + 1
        if i == 0:
          expected_std = 1.0
        expected_std = math.sqrt(expected_std**2 + alpha**2)
    self.final_conv = conv(2 * ch, 1, name='final_conv')
    self.fc = layers.Linear(
      num_classes, w_init=hk.initializers.RandomNormal(stddev=0.01)
    )

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    check_images(x, nfnet.TOTAL_STRIDE)
    outputs = {}
    out = x
    for i, conv in enumerate(self.stem):
      out = conv(out, is_training)
      if i < len(self.stem) - 1:
        out = self.activation(out)
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    out = self.activation(self.final_conv(out, is_training))
    return layers.classifier_head(
      out, self.fc, self.drop_rate, is_training, outputs
    )

  def count_macs(self, h: float, w: float) -> float:
    macs, ch = 0.0, 3
    for conv in self.stem:
      macs += conv.count_macs(ch, h, w)
      h, w, ch = h / conv.stride[0], w / conv.stride[1], conv.output_channels
    for block in self.blocks:
      macs += block.count_macs(h, w)
      h, w = h / block.stride, w / block.stride
    macs += self.final_conv.count_macs(self.blocks[-1].out_ch, h, w)
    return macs + self.final_conv.output_channels * self.num_classes


def _resnet_info(kwargs: dict) -> dict:
  variant = kwargs.get('variant', 'ResNet50')
  if variant not in RESNET_VARIANTS:
    raise ValueError(
      f'Unknown ResNet variant {variant!r}; accepted: '
      f'{sorted(RESNET_VARIANTS)}.'
    )
  return dict(
    train_imsize=IMSIZE,
    test_imsize=IMSIZE,
    drop_rate=kwargs.get('drop_rate', 0.0),
  )


def _family(cls):
  def build(num_classes: int, **kwargs):
    return cls(num_classes=num_classes, **kwargs)

  build.variant_info = _resnet_info
  return build


def _nfnet_bn(num_classes: int, **kwargs) -> NFNetBN:
  return NFNetBN(num_classes=num_classes, **kwargs)


_nfnet_bn.variant_info = (
  nfnet._variant_info
)  # Same resolutions and recipe as the NFNet.

_resnet, _skipinit, _fixup = (
  _family(ResNet),
  _family(SkipInitResNet),
  _family(FixupResNet),
)
for _variant in RESNET_VARIANTS:
  _depth = _variant.removeprefix('ResNet')
  registry.register(f'resnet_v2_{_depth}', _resnet, variant=_variant)
  registry.register(
    f'resnet_v1_{_depth}', _resnet, variant=_variant, preactivation=False
  )
  registry.register(
    f'unnorm_resnet_{_depth}', _resnet, variant=_variant, norm='none'
  )
  registry.register(f'skipinit_resnet_{_depth}', _skipinit, variant=_variant)
  registry.register(f'fixup_resnet_{_depth}', _fixup, variant=_variant)
for _variant in nfnet.VARIANTS:
  _name = 'nfnet_' + _variant.lower().replace('+', '_plus') + '_bn'
  registry.register(_name, _nfnet_bn, variant=_variant, stochdepth_rate=0.25)
