"""The set-up the Normalizer-Free families (NFNet, NF-RegNet, NF-ResNet) share.

Each family checks the same arguments the same way, looks its activation up by name and ends
in the same classifier; only the stem, blocks and final convolution differ.
"""

from collections.abc import Mapping
from typing import Any

import haiku as hk

from nfnets import activations, layers, variants


class NFNetwork(hk.Module):
  """Base of the NF families' networks; subclasses build their stem and blocks."""

  def init_common(
    self,
    table: Mapping[str, Mapping[str, Any]],
    family: str,
    variant: str,
    num_classes: int,
    drop_rate: float | None,
    activation: str,
  ) -> Mapping[str, Any]:
    """Checks the shared arguments and sets them; returns the variant's row of ``table``.

    ``drop_rate=None`` takes the variant's own (the official per-variant dropout).
    """
    params = variants.lookup(table, variant, family)
    layers.check_num_classes(num_classes)
    self.num_classes = num_classes
    self.variant = variant
    self.activation = activations.get_activation(activation)
    self.drop_rate = params['drop_rate'] if drop_rate is None else drop_rate
    if not 0.0 <= self.drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {self.drop_rate}.')
    return params

  @hk.transparent  # the classifier keeps its official name, ~/linear
  def init_fc(
    self,
    fc_init: hk.initializers.Initializer | None,
    default_init: hk.initializers.Initializer,
  ) -> None:
    """The classifier: ``fc_init``, else the family's official ``default_init``."""
    self.fc = layers.Linear(self.num_classes, w_init=fc_init or default_init)
