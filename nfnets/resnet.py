"""BatchNorm ResNets: the baseline the NF papers compare against (official ``resnet.py``).

- ``resnet_v2_*``: BatchNorm pre-activation ResNet (``preactivation``);
- ``resnet_v1_*``: its post-activation form;
- ``unnorm_resnet_*``: the same pre-activation network with every normalization removed (He
  init), the diverging baseline of NF-ResNet Figure 1.

BatchNorm statistics live in Haiku state: ``Model.apply`` returns the updated state in training
mode and leaves it untouched in evaluation mode.
"""

import jax
import jax.numpy as jnp

from nfnets import baseline_layers, layers
from nfnets.baseline_layers import ResNetBase, batch_norm, he_conv

NORMS = ('batchnorm', 'none')


class ResBlock(layers.ResidualBlock):
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
    super().__init__(in_ch, out_ch, stride, activation, name=name)
    self.width, self.use_projection = out_ch // 4, use_projection
    self.preactivation = preactivation
    if norm == 'batchnorm':
      self.bn = [batch_norm(f'bn{i}') for i in range(3)]
    else:
      self.bn = None
    self.conv0 = he_conv(self.width, 1, name='conv0')
    self.conv1 = he_conv(self.width, 3, stride, name='conv1')
    self.conv2 = he_conv(out_ch, 1, name='conv2')
    if use_projection:
      self.conv_shortcut = he_conv(out_ch, 1, stride, name='conv_shortcut')
      if not preactivation and self.bn is not None:
        self.shortcut_bn = batch_norm('shortcut_bn')
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


@baseline_layers.register_resnet_family(
  'ResNet',
  resnet_v2={},
  resnet_v1=dict(preactivation=False),
  unnorm_resnet=dict(norm='none'),
)
class ResNet(ResNetBase):
  """BatchNorm (or unnormalized) ResNet, pre-activation by default (official ``resnet.py``)."""

  def __init__(
    self,
    num_classes: int,
    variant: str = 'ResNet50',
    norm: str = 'batchnorm',
    preactivation: bool = True,
    use_se: bool = False,
    se_ratio: float = 0.25,
    name: str = 'ResNet',
    **kwargs,
  ):
    """``kwargs`` are :class:`ResNetBase`'s (width, drop_rate, activation, fc_init)."""
    if norm not in NORMS:
      raise ValueError(f'Unknown norm {norm!r}; accepted: {NORMS}.')
    super().__init__(num_classes, variant, name=name, **kwargs)
    self.norm, self.preactivation = norm, preactivation
    if not preactivation and norm == 'batchnorm':
      self.initial_bn = batch_norm('initial_bn')
    self.blocks = baseline_layers.build_stages(
      self.depths,
      self.width,
      self.stem_ch,
      lambda in_ch, out_ch, stride, index: ResBlock(
        in_ch,
        out_ch,
        stride,
        use_projection=in_ch != out_ch or stride > 1,  # a stage's first
        norm=norm,
        preactivation=preactivation,
        activation=self.activation,
        use_se=use_se,
        se_ratio=se_ratio,
        name='res_block_v2' if preactivation else 'res_block_v1',
      ),
    )
    if preactivation and norm == 'batchnorm':
      self.final_bn = batch_norm('final_bn')

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    layers.check_images(x, baseline_layers.TOTAL_STRIDE)
    outputs = {}
    out = self.initial_conv(x)
    if not self.preactivation:
      if self.norm == 'batchnorm':
        out = self.initial_bn(out, is_training)
      out = self.activation(out)
    out = baseline_layers.stem_pool(out)
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    if self.preactivation:
      if self.norm == 'batchnorm':
        out = self.final_bn(out, is_training)
      out = self.activation(out)
    return self.head(out, is_training, outputs)
