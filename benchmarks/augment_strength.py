"""Mean absolute pixel change of one RandAugment pass, official code vs both our modes.

  python -m benchmarks.augment_strength --official_dir=/path/to/deepmind-research/nfnets

The photo (`--photo`) is by default scikit-learn's `china.jpg` (a real 427 x 640 JPEG),
centre-cropped to a square and resized (bicubic) to each variant's train resolution. One pass is
RandAugment with the variant's layers and magnitude (F0 '405' at 192 px, F1 '410' at 224 px,
F3 '415' at 320 px) on that uint8 image; the figure is mean |output - input| over pixels and
channels, averaged over `--passes` passes with different random draws. The official column runs
the official `autoaugment.distort_image_with_randaugment` itself (core-TF stand-ins for
tensorflow-addons, see tests/fixtures/make_official_augment_fixture.py); it is skipped without
--official_dir. Needs scikit-learn (a measuring dependency only).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from data import augment  # noqa: E402

_OFFICIAL_DIR = flags.DEFINE_string(
  'official_dir', None, 'Directory holding the official autoaugment.py.'
)
_PASSES = flags.DEFINE_integer('passes', 400, 'Passes averaged per figure.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random draws.')
_PHOTO = flags.DEFINE_string(
  'photo',
  'china.jpg',
  "A photo scikit-learn ships ('china.jpg', 'flower.jpg') or a path to one.",
)

# (variant, layers, magnitude, train resolution), from the official NFNet configs.
VARIANTS = (('F0', 4, 5, 192), ('F1', 4, 10, 224), ('F3', 4, 15, 320))


def photo(size: int) -> np.ndarray:
  if os.path.exists(_PHOTO.value):
    image = np.asarray(PIL.Image.open(_PHOTO.value).convert('RGB'))
  else:
    from sklearn.datasets import load_sample_image

    image = load_sample_image(_PHOTO.value)
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = PIL.Image.fromarray(image[top : top + side, left : left + side])
  return np.asarray(crop.resize((size, size), PIL.Image.BICUBIC))


def ours(image: np.ndarray, layers: int, magnitude: int, mode: str) -> float:
  @tf.function
  def one(i):
    seed = tf.stack([tf.constant(_SEED.value, tf.int64), i])
    out = augment.randaugment(
      tf.cast(image, tf.float32), seed, layers, magnitude, mode=mode
    )
    return tf.reduce_mean(tf.abs(out - tf.cast(image, tf.float32)))

  return float(
    np.mean([one(tf.constant(i, tf.int64)) for i in range(_PASSES.value)])
  )


def official(module, image: np.ndarray, layers: int, magnitude: int) -> float:
  tf.random.set_seed(_SEED.value)
  x = tf.constant(image)

  @tf.function  # A graph as in the official input pipeline; its draws are stateful.
  def one():
    out = module.distort_image_with_randaugment(x, layers, magnitude)
    return tf.reduce_mean(
      tf.abs(tf.cast(out, tf.float32) - tf.cast(x, tf.float32))
    )

  return float(np.mean([one() for _ in range(_PASSES.value)]))


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')  # The official code logs each pass.
  logging.set_verbosity(logging.ERROR)
  module = None
  if _OFFICIAL_DIR.value:
    from tests.fixtures import make_official_augment_fixture as fixture

    module = fixture.load_official_autoaugment(_OFFICIAL_DIR.value)
  print(
    f'mean |pixel change| of one pass, {os.path.basename(_PHOTO.value)}, {_PASSES.value} passes:'
  )
  print('variant  RA   px  official  mode=official  mode=corrected')
  for name, layers, magnitude, size in VARIANTS:
    image = photo(size)
    off = official(module, image, layers, magnitude) if module else float('nan')
    ours_off = ours(image, layers, magnitude, 'official')
    ours_cor = ours(image, layers, magnitude, 'corrected')
    print(
      f'{name:7s}  {layers}{magnitude:02d}  {size}  {off:8.1f}  '
      f'{ours_off:13.1f}  {ours_cor:14.1f}',
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
