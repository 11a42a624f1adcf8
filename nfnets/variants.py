"""Every model family's variant table, in one place (as the official ``base.py`` keeps them).

A variant is an architecture (widths, depths) plus the facts of its training recipe that the
papers publish with it (train and test resolution, dropout, RandAugment level, weight decay).
The family modules build networks from these tables and register their names from them; the
configs and paper tables read them from here.
"""

from collections.abc import Mapping
from typing import Any

Variant = dict[str, Any]


def _table(columns: str, *rows: tuple[Any, ...]) -> dict[str, Variant]:
  """``{name: {column: value}}`` from rows ``(name, *values)``, one per variant.

  ``columns`` names the values in order; a ``None`` value is left out of the variant (the
  official recipe does not set it).
  """
  names = columns.split()
  return {
    name: {k: v for k, v in zip(names, values, strict=True) if v is not None}
    for name, *values in rows
  }


# NFNet F0-F7 (NFNet paper, Table 3, and the official release): the same depths, resolutions
# and recipe for the base widths (F*) and the wider F*+ models.
NFNET_WIDTH = (256, 512, 1536, 1536)
NFNET_PLUS_WIDTH = (384, 768, 2048, 2048)
_NFNET_RECIPES = _table(
  'depth train_imsize test_imsize RA_level drop_rate',
  ('F0', (1, 2, 6, 3), 192, 256, '405', 0.2),
  ('F1', (2, 4, 12, 6), 224, 320, '410', 0.3),
  ('F2', (3, 6, 18, 9), 256, 352, '410', 0.4),
  ('F3', (4, 8, 24, 12), 320, 416, '415', 0.4),
  ('F4', (5, 10, 30, 15), 384, 512, '415', 0.5),
  ('F5', (6, 12, 36, 18), 416, 544, '415', 0.5),
  ('F6', (7, 14, 42, 21), 448, 576, '415', 0.5),
  ('F7', (8, 16, 48, 24), 480, 608, '415', 0.5),
)
# 'F0', ..., 'F7' in order: the base variants, each also available as '+'.
NFNET_BASE_VARIANTS = tuple(_NFNET_RECIPES)
NFNET: dict[str, Variant] = {}
for _key, _recipe in _NFNET_RECIPES.items():
  NFNET[_key] = dict(width=NFNET_WIDTH, **_recipe)
  NFNET[_key + '+'] = dict(width=NFNET_PLUS_WIDTH, **_recipe)

# Blocks per stage of the ResNet layouts shared by NF-ResNets and the baselines (ResNet,
# SkipInit, Fixup). 26 is the NF-ResNet paper's smallest model; 288 and 600 are the official
# release's deep variants (used for the signal-propagation plots).
RESNET: dict[str, Variant] = {
  'ResNet26': dict(depth=(2, 2, 2, 2)),
  'ResNet50': dict(depth=(3, 4, 6, 3)),
  'ResNet101': dict(depth=(3, 4, 23, 3)),
  'ResNet152': dict(depth=(3, 8, 36, 3)),
  'ResNet200': dict(depth=(3, 24, 36, 3)),
  'ResNet288': dict(depth=(24, 24, 24, 24)),
  'ResNet600': dict(depth=(50, 50, 50, 50)),
}
# Stage widths of a ResNet layout, before its ``width`` multiplier (4 by default: 256 ...
# 2048), and the resolution the NF-ResNet paper trains and tests them at.
RESNET_BASE_WIDTHS = (64, 128, 256, 512)
RESNET_IMSIZE = 224

# NF-RegNet B0-B8 (official release, base.py: nf_regnet_params): stage widths before the 0.75
# width multiplier; weight decay as the official experiment_nf_regnets.py sets it
# (5e-5 + 1e-5 * level, B0-B5 only; none for B6-B8).
NF_REGNET = _table(
  'width depth train_imsize test_imsize drop_rate weight_decay',
  ('B0', (48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2, 5e-5),
  ('B1', (48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2, 6e-5),
  ('B2', (56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3, 7e-5),
  ('B3', (56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3, 8e-5),
  ('B4', (64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4, 9e-5),
  ('B5', (80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4, 1e-4),
  ('B6', (88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5, None),
  ('B7', (96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5, None),
  ('B8', (104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5, None),
)

# EfficientNet B0-B7 (Tan & Le 2019; the TF reference's efficientnet_params): width and depth
# multipliers of B0's layout, one resolution for training and testing, dropout before the
# classifier. The NFNet paper compares against these in Table 3.
EFFICIENTNET = _table(
  'width_mult depth_mult train_imsize test_imsize drop_rate',
  ('B0', 1.0, 1.0, 224, 224, 0.2),
  ('B1', 1.0, 1.1, 240, 240, 0.2),
  ('B2', 1.1, 1.2, 260, 260, 0.3),
  ('B3', 1.2, 1.4, 300, 300, 0.3),
  ('B4', 1.4, 1.8, 380, 380, 0.4),
  ('B5', 1.6, 2.2, 456, 456, 0.4),
  ('B6', 1.8, 2.6, 528, 528, 0.5),
  ('B7', 2.0, 3.1, 600, 600, 0.5),
)


def lookup(table: Mapping[str, Variant], variant: str, family: str) -> Variant:
  """``table[variant]``, or a ValueError that names the family and the accepted variants."""
  if variant not in table:
    raise ValueError(
      f'Unknown {family} variant {variant!r}; accepted: {sorted(table)}.'
    )
  return table[variant]
