"""The set-up the Normalizer-Free families (NFNet, NF-RegNet, NF-ResNet) share.

Each family takes the same options the same way (its variant, alpha, stochastic depth,
dropout, activation and classifier init), builds its stages with the same signal-propagation
bookkeeping and ends in the same classifier; only the stem, blocks and final convolution
differ. The options live here once; a family's constructor takes its own and passes the
rest on as ``**kwargs``.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import haiku as hk
import jax

from nfnets import activations, layers, registry, variants


class NFNetwork(hk.Module):
  """Base of the NF families' networks; subclasses build their stem and blocks.

  A subclass is registered with :func:`register`, which gives it its ``family`` (for
  error messages) and ``variant_table``; it names its official ``default_activation``
  (and ``default_fc_init`` where that is not the normal(0.01) of NFNet and NF-ResNet).
  Its constructor calls this one first, then builds its stem, :meth:`build_stages` and
  final layers, and ends with :meth:`init_fc`; it says how its stem and final layers run
  (:meth:`stem_features`, :meth:`final_features`) and count (:meth:`stem_macs`,
  :meth:`final_macs`).
  """

  variant_table: Mapping[str, Mapping[str, Any]]
  family: str
  default_activation: str
  default_fc_init: hk.initializers.Initializer = hk.initializers.RandomNormal(
    stddev=0.01
  )
  # Every NF family's stem and stages halve the resolution five times.
  total_stride: int = 32
  blocks: list[hk.Module]

  def __init__(
    self,
    num_classes: int,
    variant: str,
    alpha: float = 0.2,
    stochdepth_rate: float = 0.1,
    drop_rate: float | None = None,
    activation: str | None = None,
    fc_init: hk.initializers.Initializer | None = None,
    name: str | None = None,
  ):
    """Checks and keeps the options every NF family takes.

    Args:
      num_classes: classifier outputs.
      variant: a key of the family's variant table (nfnets/variants.py).
      alpha: the residual branches' scale (the papers' 0.2).
      stochdepth_rate: stochastic depth of the last block; it grows linearly from 0.
      drop_rate: dropout before the classifier; None takes the variant's own (the
        official per-variant rate; 0 where the table has none).
      activation: a name from ``activations``; None takes the family's.
      fc_init: the classifier's initializer; None takes the family's official one.
      name: the module name (the official one by default in each family).
    """
    super().__init__(name=name)
    self.params = variants.lookup(self.variant_table, variant, self.family)
    layers.check_num_classes(num_classes)
    self.num_classes = num_classes
    self.variant = variant
    self.alpha, self.stochdepth_rate = alpha, stochdepth_rate
    self.activation = activations.get_activation(
      activation or self.default_activation
    )
    if drop_rate is None:
      drop_rate = self.params.get('drop_rate', 0.0)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
    self.drop_rate = drop_rate
    self.fc_init = fc_init or self.default_fc_init
    self.train_imsize = self.params.get('train_imsize')
    self.test_imsize = self.params.get('test_imsize')

  @hk.transparent  # the blocks keep their official names, ~/nf_block_3
  def build_stages(
    self,
    in_ch: int,
    widths: Sequence[int],
    depths: Sequence[int],
    strides: Sequence[int],
    make_block: Callable[..., hk.Module],
  ) -> list[hk.Module]:
    """:func:`layers.build_nf_stages` with this network's alpha and stochastic depth.

    ``make_block(in_ch, out_ch, index, **kwargs)`` passes ``kwargs`` (stride, beta,
    stochastic depth rate, and this network's alpha and activation) to its block.
    """
    return layers.build_nf_stages(
      in_ch,
      widths,
      depths,
      strides,
      self.alpha,
      self.stochdepth_rate,
      lambda block_in, block_out, index, **kwargs: make_block(
        block_in,
        block_out,
        index,
        alpha=self.alpha,
        activation=self.activation,
        **kwargs,
      ),
    )

  @hk.transparent  # the classifier keeps its official name, ~/linear
  def init_fc(self) -> None:
    """The classifier, made last as the official code makes it."""
    self.fc = layers.Linear(self.num_classes, w_init=self.fc_init)

  def stem_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The stem's output on images ``x``: the first block's input."""
    raise NotImplementedError

  def final_features(self, x: jax.Array, is_training: bool) -> jax.Array:
    """The last block's output ``x`` on its way to the pooled classifier."""
    raise NotImplementedError

  def stem_macs(self, h: float, w: float) -> tuple[float, float, float]:
    """The stem's multiply-adds at ``h x w``, and the resolution it hands on."""
    raise NotImplementedError

  def final_macs(self, h: float, w: float) -> float:
    """Multiply-adds after the last block (at ``h x w``), classifier included."""
    raise NotImplementedError

  def __call__(
    self, x: jax.Array, is_training: bool, return_metrics: bool = False
  ) -> dict[str, jax.Array]:
    """Runs the network on NHWC images ``x`` of shape ``[N, H, W, 3]``.

    Returns 'logits' (float32), 'pool' (pre-classifier features) and, with
    ``return_metrics``, per-block signal statistics ``avg_sq_mean_i``, ``avg_var_i``
    (i = 0 for the stem output) and ``res_avg_var_i``.
    """
    layers.check_images(x, self.total_stride)
    outputs = {}
    out = self.stem_features(x, is_training)
    out = layers.run_blocks(
      self.blocks, out, is_training, return_metrics, outputs
    )
    return layers.classifier_head(
      self.final_features(out, is_training),
      self.fc,
      self.drop_rate,
      is_training,
      outputs,
    )

  def count_macs(self, h: float, w: float) -> float:
    """Multiply-adds of one image at ``h x w``, counted as the official ``count_flops``."""
    macs, h, w = self.stem_macs(h, w)
    for block in self.blocks:
      macs += block.count_macs(h, w)
      h, w = h / block.stride, w / block.stride
    return macs + self.final_macs(h, w)


def register(
  label: str,
  variant_table: Mapping[str, Mapping[str, Any]],
  models: Mapping[str, Mapping[str, Any]],
  imsize: int | None = None,
) -> Callable[[type[NFNetwork]], type[NFNetwork]]:
  """Class decorator: :func:`registry.register_family` for an NF family.

  It also gives the class its ``family`` label and ``variant_table``, which the
  constructor looks variants up in, so the two are stated once.
  """

  def decorator(cls: type[NFNetwork]) -> type[NFNetwork]:
    cls.family, cls.variant_table = label, variant_table
    return registry.register_family(label, variant_table, models, imsize)(cls)

  return decorator
