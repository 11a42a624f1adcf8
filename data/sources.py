"""Where examples come from: a `Source` per dataset and split ranges read from its metadata.

A dataset name is one of
  - `imagenet2012`, `embedded_mnist`: the two built-in datasets;
  - `tfds:NAME` (e.g. `tfds:cifar10`, `tfds:imagenette/320px-v2`): any TFDS image
    classification dataset prepared under the data dir;
  - `folder:ROOT`: a folder of images, one sub-folder per class (see `data/folder.py`).

Split sizes, class counts and class names come from the prepared dataset's `DatasetInfo`, so a
small ImageNet (or any subset) trains without editing constants. Besides the dataset's own
splits (TFDS slicing allowed: `train[:90%]`), every dataset has `valid` (the first
`holdout_size(n)` train examples, as the official NFNet code holds out the first 10,000) and
`train_minus_valid` (the rest of train).
"""

import dataclasses
import types
from collections.abc import Callable

import tensorflow_datasets as tfds

# Held out of train for `valid`: min(HOLDOUT, HOLDOUT_FRACTION of train), at least one image.
# For ImageNet this is the official 10,000; a small dataset keeps 80% for training.
HOLDOUT = 10_000
HOLDOUT_FRACTION = 0.2
DERIVED_SPLITS = ('valid', 'train_minus_valid')


@dataclasses.dataclass(frozen=True)
class Source:
  """What differs between datasets; everything else is shared pipeline code."""

  name: str
  num_classes: int | None  # None: read from the prepared dataset's metadata.
  get_builder: Callable[[str | None], tfds.core.DatasetBuilder]
  # (builder, split) -> (TFDS split, start, end) in absolute example indices.
  split_range: Callable[[tfds.core.DatasetBuilder, str], tuple[str, int, int]]
  # None: keep JPEG bytes (decode-and-crop).
  decode: Callable | None
  train_area_range: tuple[float, float]
  train_flip: bool
  default_eval_preproc: str
  # None: discovered from the builder's features (`find_features`).
  image_key: str | None = 'image'
  label_key: str | None = 'label'

  def feature_keys(self, builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    if self.image_key and self.label_key:
      return self.image_key, self.label_key
    return find_features(builder)


def holdout_size(num_train: int, holdout: int = HOLDOUT) -> int:
  """Train examples held out as `valid`: min(holdout, HOLDOUT_FRACTION * num_train), >= 1."""
  return max(1, min(holdout, int(num_train * HOLDOUT_FRACTION)))


def split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  """{split name: examples} from the builder's metadata (empty when it has none)."""
  return {
    name: int(info.num_examples) for name, info in builder.info.splits.items()
  }


def metadata_split_range(
  sizes: dict[str, int],
  split: str,
  *,
  dataset: str,
  holdout: int = HOLDOUT,
  aliases: dict[str, str] | None = None,
) -> tuple[str, int, int]:
  """(TFDS split, start, end) of `split` given the prepared split sizes.

  `split` is `valid`, `train_minus_valid`, a name in `aliases` (e.g. ImageNet's `test` ->
  `validation`) or a TFDS split spec with at most one split (`train`, `train[:90%]`, `test[10:]`).
  """
  split = (aliases or {}).get(split, split)
  if split in DERIVED_SPLITS:
    if 'train' not in sizes:
      raise ValueError(
        f'{dataset} has no train split to hold {split!r} out of; its splits: '
        f'{sorted(sizes)}.'
      )
    n = sizes['train']
    k = holdout_size(n, holdout)
    if k >= n:
      raise ValueError(
        f'{dataset} train has {n} examples: too few to hold out a valid split.'
      )
    return ('train', 0, k) if split == 'valid' else ('train', k, n)
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split)
    absolute = instruction.to_absolute(
      {k: types.SimpleNamespace(num_examples=v) for k, v in sizes.items()}
    )
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(
      f'Unknown split {split!r} of {dataset}; accepted: {sorted(sizes)} (TFDS '
      f"slicing allowed, e.g. 'train[:90%]') or {DERIVED_SPLITS}. ({e})"
    ) from None
  if len(absolute) != 1:
    raise ValueError(
      f'Split {split!r} of {dataset} combines {len(absolute)} splits; pass one '
      'split (slicing allowed).'
    )
  (part,) = absolute
  n = sizes[part.splitname]
  start = 0 if part.from_ is None else part.from_
  end = n if part.to is None else part.to
  if not 0 <= start < end <= n:
    raise ValueError(f'Split {split!r} of {dataset} is empty (of {n}).')
  return part.splitname, start, end


def find_features(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
  """(image key, label key) of an image classification dataset, from its features."""
  info = builder.info
  features = info.features
  keys = tuple(info.supervised_keys or ())
  if (
    len(keys) == 2
    and all(isinstance(k, str) for k in keys)
    and isinstance(features[keys[0]], tfds.features.Image)
    and isinstance(features[keys[1]], tfds.features.ClassLabel)
  ):
    return keys[0], keys[1]
  images = [
    k for k, f in features.items() if isinstance(f, tfds.features.Image)
  ]
  labels = [
    k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)
  ]
  if len(images) != 1 or len(labels) != 1:
    raise ValueError(
      f'{builder.name} is not a single-image classification dataset: its '
      f'features are {dict(features.items())}; need exactly one Image and one '
      f'ClassLabel feature (found {images} and {labels}).'
    )
  return images[0], labels[0]


def class_names(builder: tfds.core.DatasetBuilder, label_key: str) -> list[str]:
  return list(builder.info.features[label_key].names)
