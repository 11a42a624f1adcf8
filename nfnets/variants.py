"""Every model family's variant table, in one place (as the official ``base.py`` keeps them).

A variant is an architecture (widths, depths) plus the facts of its training recipe that the
papers publish with it (train and test resolution, dropout, RandAugment level, weight decay).
The family modules build networks from these tables and register their names from them; the
configs and paper tables read them from here.
"""

from collections.abc import Mapping
from typing import Any

Variant = dict[str, Any]

# NFNet F0-F7 (NFNet paper, Table 3, and the official release): the same depths, resolutions
# and recipe for the base widths (F*) and the wider F*+ models.
NFNET_WIDTH = (256, 512, 1536, 1536)
NFNET_PLUS_WIDTH = (384, 768, 2048, 2048)
_NFNET_RECIPES: dict[str, Variant] = {
  'F0': dict(
    depth=(1, 2, 6, 3),
    train_imsize=192,
    test_imsize=256,
    RA_level='405',
    drop_rate=0.2,
  ),
  'F1': dict(
    depth=(2, 4, 12, 6),
    train_imsize=224,
    test_imsize=320,
    RA_level='410',
    drop_rate=0.3,
  ),
  'F2': dict(
    depth=(3, 6, 18, 9),
    train_imsize=256,
    test_imsize=352,
    RA_level='410',
    drop_rate=0.4,
  ),
  'F3': dict(
    depth=(4, 8, 24, 12),
    train_imsize=320,
    test_imsize=416,
    RA_level='415',
    drop_rate=0.4,
  ),
  'F4': dict(
    depth=(5, 10, 30, 15),
    train_imsize=384,
    test_imsize=512,
    RA_level='415',
    drop_rate=0.5,
  ),
  'F5': dict(
    depth=(6, 12, 36, 18),
    train_imsize=416,
    test_imsize=544,
    RA_level='415',
    drop_rate=0.5,
  ),
  'F6': dict(
    depth=(7, 14, 42, 21),
    train_imsize=448,
    test_imsize=576,
    RA_level='415',
    drop_rate=0.5,
  ),
  'F7': dict(
    depth=(8, 16, 48, 24),
    train_imsize=480,
    test_imsize=608,
    RA_level='415',
    drop_rate=0.5,
  ),
}
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
# (5e-5 + 1e-5 * level, B0-B5 only).
NF_REGNET: dict[str, Variant] = {
  'B0': dict(
    width=(48, 104, 208, 440),
    depth=(1, 3, 6, 6),
    train_imsize=192,
    test_imsize=224,
    drop_rate=0.2,
    weight_decay=5e-5,
  ),
  'B1': dict(
    width=(48, 104, 208, 440),
    depth=(2, 4, 7, 7),
    train_imsize=224,
    test_imsize=256,
    drop_rate=0.2,
    weight_decay=6e-5,
  ),
  'B2': dict(
    width=(56, 112, 232, 488),
    depth=(2, 4, 8, 8),
    train_imsize=240,
    test_imsize=272,
    drop_rate=0.3,
    weight_decay=7e-5,
  ),
  'B3': dict(
    width=(56, 128, 248, 528),
    depth=(2, 5, 9, 9),
    train_imsize=288,
    test_imsize=320,
    drop_rate=0.3,
    weight_decay=8e-5,
  ),
  'B4': dict(
    width=(64, 144, 288, 616),
    depth=(2, 6, 11, 11),
    train_imsize=320,
    test_imsize=384,
    drop_rate=0.4,
    weight_decay=9e-5,
  ),
  'B5': dict(
    width=(80, 168, 336, 704),
    depth=(3, 7, 14, 14),
    train_imsize=384,
    test_imsize=456,
    drop_rate=0.4,
    weight_decay=1e-4,
  ),
  'B6': dict(
    width=(88, 184, 376, 792),
    depth=(3, 8, 16, 16),
    train_imsize=448,
    test_imsize=528,
    drop_rate=0.5,
  ),
  'B7': dict(
    width=(96, 208, 416, 880),
    depth=(4, 10, 19, 19),
    train_imsize=512,
    test_imsize=600,
    drop_rate=0.5,
  ),
  'B8': dict(
    width=(104, 232, 456, 968),
    depth=(4, 11, 22, 22),
    train_imsize=600,
    test_imsize=672,
    drop_rate=0.5,
  ),
}

# EfficientNet B0-B7 (Tan & Le 2019; the TF reference's efficientnet_params): width and depth
# multipliers of B0's layout, one resolution for training and testing, dropout before the
# classifier. The NFNet paper compares against these in Table 3.
EFFICIENTNET: dict[str, Variant] = {
  f'B{i}': dict(
    width_mult=w, depth_mult=d, train_imsize=r, test_imsize=r, drop_rate=p
  )
  for i, (w, d, r, p) in enumerate(
    (
      (1.0, 1.0, 224, 0.2),
      (1.0, 1.1, 240, 0.2),
      (1.1, 1.2, 260, 0.3),
      (1.2, 1.4, 300, 0.3),
      (1.4, 1.8, 380, 0.4),
      (1.6, 2.2, 456, 0.4),
      (1.8, 2.6, 528, 0.5),
      (2.0, 3.1, 600, 0.5),
    )
  )
}


def lookup(table: Mapping[str, Variant], variant: str, family: str) -> Variant:
  """``table[variant]``, or a ValueError that names the family and the accepted variants."""
  if variant not in table:
    raise ValueError(
      f'Unknown {family} variant {variant!r}; accepted: {sorted(table)}.'
    )
  return table[variant]
