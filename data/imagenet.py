"""TFDS `imagenet2012` from a local data dir: builder lookup, split ranges, clear errors.

Splits follow the official NFNet code: `train` is all 1,281,167 TFDS train images,
`train_minus_valid` is TFDS train without its first 10,000 images, `valid` is those 10,000,
`test` is the 50,000-image TFDS validation split.
"""

import os

import tensorflow_datasets as tfds

NAME = 'imagenet2012'
NUM_CLASSES = 1000
HOLDOUT = 10_000  # Held-out train images forming `valid` (the first ones, as the official code).
# Official sizes; used when the builder's metadata is absent (e.g. under tfds.testing.mock_data).
SPLIT_SIZES = {'train': 1_281_167, 'validation': 50_000}

_PREPARE_HELP = """\
TFDS imagenet2012 is not prepared under {data_dir} (looked for {version_dir}).
ImageNet cannot be downloaded automatically. To prepare it:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org
  2. Put both files in the TFDS manual download dir: {manual_dir}
     (or pass another one with --manual_dir / tfds.download.DownloadConfig(manual_dir=...)).
  3. Run once:  tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}
     or in Python: tfds.builder('imagenet2012', data_dir='{data_dir}').download_and_prepare()
Then pass data_dir={data_dir} (the directory that contains imagenet2012/)."""


def default_data_dir() -> str:
  return os.path.expanduser(
    os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  )


def check_prepared(builder: tfds.core.DatasetBuilder, data_dir: str) -> None:
  """Raises FileNotFoundError with preparation instructions if ImageNet is missing."""
  if not builder.is_prepared():
    raise FileNotFoundError(
      _PREPARE_HELP.format(
        data_dir=data_dir,
        version_dir=builder.data_dir,
        manual_dir=os.path.join(data_dir, 'downloads', 'manual'),
      )
    )


def get_builder(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  data_dir = data_dir or default_data_dir()
  builder = tfds.builder(NAME, data_dir=data_dir)
  check_prepared(builder, data_dir)
  return builder


def split_range(split: str) -> tuple[str, int, int]:
  """(TFDS split, start, end) of one of our splits, in absolute example indices."""
  train = SPLIT_SIZES['train']
  ranges = {
    'train': ('train', 0, train),
    'train_minus_valid': ('train', HOLDOUT, train),
    'valid': ('train', 0, HOLDOUT),
    'test': ('validation', 0, SPLIT_SIZES['validation']),
  }
  return ranges[split]
