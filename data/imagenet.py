"""TFDS `imagenet2012` from a local data dir: builder lookup, split ranges, clear errors.

Splits follow the official NFNet code: `train` is all 1,281,167 TFDS train images,
`train_minus_valid` is TFDS train without its first 10,000 images, `valid` is those 10,000,
`test` is the 50,000-image TFDS validation split. The sizes are read from the prepared
dataset's metadata: a smaller ImageNet (a subset, or the few images of a test) works, with one
warning, and holds out min(10,000, 20% of train) for `valid`.

Prepare it with `python -m data.prepare --dataset=imagenet2012 --data_dir=D --manual_dir=M`.
"""

import functools
import os

import tensorflow_datasets as tfds
from absl import logging

from data import sources

NAME = 'imagenet2012'
NUM_CLASSES = 1000
HOLDOUT = (
  sources.HOLDOUT
)  # At most this many of the first train images form `valid`.
# Official sizes; used when the builder's metadata is absent (e.g. under tfds.testing.mock_data).
SPLIT_SIZES = {'train': 1_281_167, 'validation': 50_000}

_PREPARE_HELP = """\
TFDS imagenet2012 is not prepared under {data_dir} (looked for {version_dir}).
ImageNet cannot be downloaded automatically. To prepare it:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org
  2. Put both files in one directory, e.g. {manual_dir}
  3. Run once:  python -m data.prepare --dataset=imagenet2012 --data_dir={data_dir} \\
                  --manual_dir={manual_dir}
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


def split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  """Prepared split sizes; the official ones when the metadata has none (mock data)."""
  sizes = sources.split_sizes(builder) or dict(SPLIT_SIZES)
  _warn_if_not_official(tuple(sorted(sizes.items())))
  return sizes


@functools.cache
def _warn_if_not_official(sizes: tuple) -> None:
  """Logs once per distinct set of sizes (the pipeline asks for them per split)."""
  sizes = dict(sizes)
  if any(sizes.get(k) != v for k, v in SPLIT_SIZES.items()):
    logging.warning(
      'The prepared imagenet2012 has splits %s, not the official %s: split '
      'sizes, the held-out valid split and the schedule follow the prepared '
      'data; results are not comparable with the paper.',
      sizes,
      SPLIT_SIZES,
    )


def split_range(
  builder: tfds.core.DatasetBuilder, split: str
) -> tuple[str, int, int]:
  """(TFDS split, start, end) of one of our splits, in absolute example indices."""
  return sources.metadata_split_range(
    split_sizes(builder),
    split,
    dataset=NAME,
    holdout=HOLDOUT,
    aliases={'test': 'validation'},
  )
