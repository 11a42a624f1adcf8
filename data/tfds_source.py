"""`tfds:NAME`: any TFDS image-classification dataset, e.g. `tfds:cifar10`,
`tfds:oxford_flowers102`, `tfds:imagenette/320px-v2`.

The image and label features and the class names come from the builder's `DatasetInfo`; the
split names are the dataset's own (`--config.train_split=train`,
`--config.eval_split=validation`, TFDS slicing allowed) plus `valid`/`train_minus_valid`.
Reading never downloads: prepare the dataset once with
`python -m data.prepare --dataset=tfds:NAME --data_dir=D` (downloads are TFDS's business).
"""

import functools
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from data import sources

PREFIX = 'tfds:'

_NOT_PREPARED = """\
TFDS dataset {name!r} is not prepared under {data_dir} (looked for {version_dir}).
Training never downloads. Prepare it once (this downloads it, so it needs internet):
  python -m data.prepare --dataset=tfds:{name} --data_dir={data_dir}
or copy an already prepared {name} directory there, then pass --config.data_dir={data_dir}."""


def default_data_dir() -> str:
  return os.path.expanduser(
    os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  )


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG/GIF/BMP bytes (greyscale or RGBA too) -> uint8 [H, W, 3]."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


@functools.cache
def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared builder; FileNotFoundError that says how to prepare it otherwise."""
  data_dir = data_dir or default_data_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f'{PREFIX}{name}: no such TFDS dataset ({e}). The catalog: '
      'https://www.tensorflow.org/datasets/catalog/overview'
    ) from None
  check_prepared(builder, name, data_dir)
  return builder


def check_prepared(builder, name: str, data_dir: str) -> None:
  if not builder.is_prepared():
    raise FileNotFoundError(
      _NOT_PREPARED.format(
        name=name, data_dir=data_dir, version_dir=builder.data_dir
      )
    )


def make_source(name: str) -> sources.Source:
  if not name:
    raise ValueError(
      "Pass a TFDS dataset name: 'tfds:NAME', e.g. tfds:cifar10."
    )

  def builder_fn(data_dir):
    return get_builder(name, data_dir)

  def split_range(builder, split):
    return sources.metadata_split_range(
      sources.split_sizes(builder), split, dataset=PREFIX + name
    )

  return sources.Source(
    name=PREFIX + name,
    num_classes=None,
    get_builder=builder_fn,
    split_range=split_range,
    decode=decode_rgb,
    train_area_range=(0.08, 1.0),
    train_flip=True,
    default_eval_preproc='resize_crop_32',
    image_key=None,  # discovered from the builder's features
    label_key=None,
  )
