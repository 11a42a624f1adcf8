"""Host input-pipeline throughput: train images/s with and without augmentation.

  python -m benchmarks.input_pipeline --dataset=embedded_mnist --image_size=192
  python -m benchmarks.input_pipeline --dataset=imagenet2012 --data_dir=/data/tfds

The trainer must never wait on data: compare images/s here with the model's step rate.
"""

import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from data import pipeline  # noqa: E402

_DATASET = flags.DEFINE_string(
  'dataset', 'embedded_mnist', 'imagenet2012 | embedded_mnist'
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'TFDS data dir (default ~/tensorflow_datasets).'
)
_IMAGE_SIZE = flags.DEFINE_integer(
  'image_size', 192, 'Train resolution (F0: 192).'
)
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed batches (after warm-up).')
_WARMUP = flags.DEFINE_integer(
  'warmup', 3, 'Untimed batches (tracing, buffers).'
)
_AUGMENTS = flags.DEFINE_list(
  'augments',
  ['none', 'randaugment_405', 'cutmix_mixup_randaugment_405'],
  "Augment names to time; 'none' for no augmentation.",
)

_AUGMENT_MODES = flags.DEFINE_list(
  'augment_mode',
  ['official', 'corrected'],
  "RandAugment modes to time ('official', 'corrected').",
)
_BEFORE_MIX = flags.DEFINE_bool(
  'augment_before_mix',
  False,
  'RandAugment before MixUp/CutMix (False: after, as the NFNet configs).',
)


def measure(augment: str | None, augment_mode: str = 'official') -> float:
  """Images/s of train batches (output images; mixing reads two stream images for each)."""
  it = pipeline.build_input(
    _DATASET.value,
    'train',
    is_training=True,
    batch_dims=[_BATCH.value],
    image_size=_IMAGE_SIZE.value,
    data_dir=_DATA_DIR.value,
    augment=augment,
    augment_mode=augment_mode,
    augment_before_mix=_BEFORE_MIX.value,
    process_index=0,
    process_count=1,
  )
  for _ in range(_WARMUP.value):
    next(it)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    next(it)
  return _STEPS.value * _BATCH.value / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.info('CPU cores: %d', os.cpu_count())
  for name in _AUGMENTS.value:
    augment = None if name == 'none' else name
    modes = _AUGMENT_MODES.value if augment and 'randaugment' in name else ['-']
    for mode in modes:
      rate = measure(augment, 'official' if mode == '-' else mode)
      print(
        f'{_DATASET.value} train {_IMAGE_SIZE.value}px augment={name} '
        f'mode={mode} before_mix={_BEFORE_MIX.value}: {rate:.1f} images/s '
        f'({os.cpu_count()} CPU cores)',
        flush=True,
      )


if __name__ == '__main__':
  app.run(main)
