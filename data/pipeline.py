"""One input pipeline for every dataset: TFDS records -> device-shaped numpy batches.

Train streams are infinite, shuffled per epoch and augmented; eval streams are one padded pass
with a `mask`. Both read only this process's contiguous shard of the split, so the processes of
a multi-host run together read every example exactly once per epoch.

Determinism and exact resume: each process's stream is a sequence of epochs; epoch `e` is the
shard in a fixed order shuffled with a seed derived from (seed, e, process); every example's
randomness (crop, flip, RandAugment) comes from stateless ops seeded by (seed, process, its
position in the stream), and batch mixing by the position of the batch's first example.
With `augment_before_mix=False` (the official NFNet setting) RandAugment runs on each mixed
output after MixUp/CutMix, seeded by the position of the output's first source example.
`start_step=k` therefore starts at epoch `k * examples_per_step // n_local`, skips the rest
without decoding, and yields exactly the batches a fresh iterator yields from step k on.
One caveat: a corrupt image is dropped (and counted in the logs), which shifts the examples
after it by one in a fresh run but not in a resumed run that started after it.
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from data import augment as augment_lib
from data import (
  embedded_mnist,
  folder,
  imagenet,
  preprocess,
  sources,
  tfds_source,
)

SPLITS = ('train', 'train_minus_valid', 'valid', 'test')
AUTOTUNE = tf.data.AUTOTUNE
_MAX_EPOCHS = 2**40
_MIN_SHUFFLE_BUFFER = 5_000
_RA_TAG, _MIX_TAG = 3, 7


Source = sources.Source


def _decode_grey_png(image_bytes: tf.Tensor) -> tf.Tensor:
  return tf.image.grayscale_to_rgb(tf.io.decode_png(image_bytes, channels=1))


SOURCES = {
  imagenet.NAME: Source(
    name=imagenet.NAME,
    num_classes=imagenet.NUM_CLASSES,
    get_builder=lambda d: imagenet.get_builder(d),
    split_range=imagenet.split_range,  # from the prepared metadata
    decode=None,
    train_area_range=(0.08, 1.0),
    train_flip=True,
    default_eval_preproc='resize_crop_32',
  ),
  # Digits: no flip (mirrored digits are other symbols), milder crops that keep the digit, and
  # a plain resize for eval (the 32 px eval crop is tuned for 224+ px photos, it would cut the
  # digit of a 28 px image).
  embedded_mnist.NAME: Source(
    name=embedded_mnist.NAME,
    num_classes=embedded_mnist.NUM_CLASSES,
    get_builder=lambda d: embedded_mnist.get_builder(d),
    split_range=lambda builder, split: embedded_mnist.split_range(split),
    decode=_decode_grey_png,
    train_area_range=(0.64, 1.0),
    train_flip=False,
    default_eval_preproc='resize',
  ),
}


def get_source(dataset: str) -> Source:
  """The source of ``dataset``: a name in ``SOURCES``, 'tfds:NAME' or 'folder:ROOT'."""
  if dataset.startswith(tfds_source.PREFIX):
    return tfds_source.make_source(dataset[len(tfds_source.PREFIX) :])
  if dataset.startswith(folder.PREFIX):
    return folder.make_source(dataset[len(folder.PREFIX) :])
  if dataset not in SOURCES:
    raise ValueError(
      f'Unknown dataset {dataset!r}; accepted: {sorted(SOURCES)}, '
      "'tfds:NAME' (a TFDS image classification dataset) or 'folder:ROOT' "
      '(a folder of images, one sub-folder per class).'
    )
  return SOURCES[dataset]


def _check_split(dataset: str, split: str) -> None:
  """The built-in datasets have fixed split names; the others take TFDS split specs."""
  if dataset in SOURCES and split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; accepted: {SPLITS}.')


def _builder(source: Source, data_dir: str | None):
  return source.get_builder(data_dir)


def num_classes(dataset: str, data_dir: str | None = None) -> int:
  """Classes of a dataset: fixed for the built-in ones, else from its metadata."""
  source = get_source(dataset)
  if source.num_classes is not None:
    return source.num_classes
  return len(class_names(dataset, data_dir))


def class_names(dataset: str, data_dir: str | None = None) -> list[str]:
  """Class names from the prepared dataset's label feature (index = label)."""
  source = get_source(dataset)
  if dataset == embedded_mnist.NAME:
    return [str(i) for i in range(embedded_mnist.NUM_CLASSES)]
  builder = _builder(source, data_dir)
  return sources.class_names(builder, source.feature_keys(builder)[1])


def default_eval_preproc(dataset: str) -> str:
  """The eval preprocessing `build_input` uses for `dataset` when none is given."""
  return get_source(dataset).default_eval_preproc


def num_examples(dataset: str, split: str, data_dir: str | None = None) -> int:
  """Examples in a split over all processes, from the prepared dataset's metadata."""
  _check_split(dataset, split)
  source = get_source(dataset)
  _, start, end = source.split_range(_builder(source, data_dir), split)
  return end - start


def shard_range(
  start: int, end: int, process_index: int, process_count: int
) -> tuple[int, int]:
  """This process's contiguous part of [start, end); sizes differ by at most one."""
  n = end - start
  return (
    start + n * process_index // process_count,
    start + n * (process_index + 1) // process_count,
  )


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  randaugment: tuple[int, int] | None  # (layers, magnitude)
  mixup: bool
  cutmix: bool
  mixup_alpha: float = 0.2

  @property
  def mixing(self) -> bool:
    return self.mixup or self.cutmix


def parse_augment(augment: str | None) -> AugmentSpec:
  """Parses names such as 'randaugment_405' (4 layers, magnitude 5), 'mixup', 'cutmix',
  'cutmix_mixup_randaugment_415' (official: MixUp on half the batch, CutMix on the other)."""
  if not augment:
    return AugmentSpec(None, False, False)
  accepted = (
    "'randaugment_LMM' (L layers, magnitude MM), 'mixup', 'mixup_<alpha>', 'cutmix', "
    "joined with '_', e.g. 'cutmix_mixup_randaugment_405'"
  )
  tokens = augment.split('_')
  ra, mixup, cutmix, alpha = None, False, False, 0.2
  i = 0
  while i < len(tokens):
    tok = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    if (
      tok == 'randaugment'
      and nxt is not None
      and nxt.isdigit()
      and len(nxt) >= 2
    ):
      ra = (int(nxt[0]), int(nxt[1:]))
      i += 2
    elif tok == 'mixup':
      mixup = True
      i += 1
      if nxt is not None:
        try:
          alpha = float(nxt)
          i += 1
        except ValueError:
          pass
    elif tok == 'cutmix':
      cutmix = True
      i += 1
    else:
      raise ValueError(
        f'Cannot parse augment {augment!r} at {tok!r}; accepted: {accepted}.'
      )
  if ra is not None and not 0 <= ra[1] <= 30:
    raise ValueError(
      f'RandAugment magnitude must be in [0, 30], got {ra[1]} in {augment!r}.'
    )
  return AugmentSpec(ra, mixup, cutmix, alpha)


def read_shard(
  source: Source,
  split: str,
  data_dir: str | None,
  process_index: int,
  process_count: int,
) -> tuple[tf.data.Dataset, int, int]:
  """Raw (image bytes, label) records of this process's shard in a fixed order."""
  builder = source.get_builder(data_dir)
  tfds_split, start, end = source.split_range(builder, split)
  if end - start < process_count:
    raise ValueError(
      f'{source.name}/{split} has {end - start} examples, fewer than '
      f'process_count={process_count}.'
    )
  lo, hi = shard_range(start, end, process_index, process_count)
  max_shard = math.ceil((end - start) / process_count)
  image_key, label_key = source.feature_keys(builder)
  ds = builder.as_dataset(
    split=f'{tfds_split}[{lo}:{hi}]',
    decoders={image_key: tfds.decode.SkipDecoding()},
    shuffle_files=False,
    read_config=tfds.ReadConfig(add_tfds_id=False),
  )
  ds = ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))
  return ds, hi - lo, max_shard


def _log_skipped(count, position):
  logging.warning(
    'Skipped %d undecodable image(s) before stream position %d (total so far: %d).',
    int(count),
    int(position),
    _SKIPPED.add(int(count)),
  )
  return np.int64(0)


class _Counter:
  def __init__(self):
    self.total = 0

  def add(self, n: int) -> int:
    self.total += n
    return self.total


_SKIPPED = _Counter()


def skipped_images() -> int:
  """Number of corrupt images skipped so far by pipelines in this process."""
  return _SKIPPED.total


def _count_skipped(ds: tf.data.Dataset, first_position: int) -> tf.data.Dataset:
  """Drops elements whose decoding failed and logs how many, from gaps in 'position'."""
  ds = ds.ignore_errors()

  def step(prev, ex):
    gap = ex['position'] - prev - 1
    tf.cond(
      gap > 0,
      lambda: tf.py_function(_log_skipped, [gap, ex['position']], tf.int64),
      lambda: tf.constant(0, tf.int64),
    )
    return ex['position'], ex

  return ds.scan(tf.constant(first_position - 1, tf.int64), step)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1
  return options


def _reshape_and_cast(batch: dict, batch_dims: Sequence[int], dtype) -> dict:
  out = {}
  for key, value in batch.items():
    if key == 'position':
      continue
    value = tf.reshape(value, list(batch_dims) + value.shape.as_list()[1:])
    if key == 'images':
      value = tf.cast(value, tf.as_dtype(dtype))
    out[key] = value
  return out


def build_input(
  dataset: str,
  split: str,
  *,
  is_training: bool,
  batch_dims: Sequence[int],
  image_size: int,
  data_dir: str | None = None,
  augment: str | None = None,
  augment_mode: str = 'official',
  augment_before_mix: bool = True,
  eval_preproc: str | None = None,
  dtype=np.float32,
  seed: int = 0,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches shaped [*batch_dims, ...] of this process's shard (see module docstring).

  eval_preproc: 'resize_crop_32' (official), 'crop_resize', 'resize' or None for the dataset's
  default ('resize_crop_32' for ImageNet, 'resize' for the 28 px digits).
  augment_mode: RandAugment ops, 'official' or 'corrected' (see data/augment.py).
  augment_before_mix: RandAugment each source image, then mix (True, the official default);
  False mixes first and RandAugments the mixed images (the official NFNet configs).
  With MixUp/CutMix each output example mixes two stream examples, so a train step consumes
  2 x prod(batch_dims) examples (as in the official code).
  """
  source = get_source(dataset)
  _check_split(dataset, split)
  batch_dims = [int(d) for d in batch_dims]
  if not batch_dims or any(d < 1 for d in batch_dims):
    raise ValueError(f'batch_dims must be positive ints, got {batch_dims}.')
  if image_size < 1:
    raise ValueError(f'image_size must be positive, got {image_size}.')
  if np.dtype(dtype) not in (
    np.dtype(np.float32),
    np.dtype(tf.bfloat16.as_numpy_dtype),
  ):
    raise ValueError(f'dtype must be float32 or bfloat16, got {dtype}.')
  process_index = (
    jax.process_index() if process_index is None else int(process_index)
  )
  process_count = (
    jax.process_count() if process_count is None else int(process_count)
  )
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index {process_index} not in [0, process_count={process_count}).'
    )
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  local_batch = int(np.prod(batch_dims))
  base_seed = tf.constant([seed, process_index], tf.int64)

  augment_lib.check_mode(augment_mode)
  if is_training:
    spec = parse_augment(augment)
    if spec.mixup and spec.cutmix and local_batch % 2:
      raise ValueError(
        f'MixUp + CutMix splits the batch in halves: prod(batch_dims) must be '
        f'even, got {local_batch}.'
      )
    raw, n_local, _ = read_shard(
      source, split, data_dir, process_index, process_count
    )
    ds = _train_stream(
      raw,
      n_local,
      source,
      spec,
      local_batch,
      image_size,
      base_seed,
      seed,
      process_index,
      start_step,
      augment_mode,
      augment_before_mix,
    )
  else:
    if augment:
      raise ValueError(
        f'augment={augment!r} is for training; eval takes augment=None.'
      )
    eval_preproc = eval_preproc or source.default_eval_preproc
    preprocess.check_eval_preproc(eval_preproc)
    raw, _, max_shard = read_shard(
      source, split, data_dir, process_index, process_count
    )
    ds = _eval_stream(
      raw,
      source,
      local_batch,
      image_size,
      eval_preproc,
      math.ceil(max_shard / local_batch),
    )
  ds = ds.map(lambda b: _reshape_and_cast(b, batch_dims, dtype))
  ds = ds.prefetch(AUTOTUNE).with_options(_options())
  return ds.as_numpy_iterator()


def train_records(
  raw: tf.data.Dataset,
  n_local: int,
  seed: int,
  process_index: int,
  start_position: int,
  shuffle_buffer: int,
) -> tf.data.Dataset:
  """(stream position, record) from `start_position` on: epoch after epoch of the shard, each
  shuffled with a seed derived from (seed, epoch, process); skipping costs no decoding."""
  first_epoch, offset = divmod(start_position, n_local)
  buffer = min(n_local, shuffle_buffer)

  def epoch(e):
    epoch_seed = (
      tf.constant(seed, tf.int64) * 1_000_003 + e * 1_009 + process_index
    )
    ds = raw.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    return ds.enumerate().map(lambda i, x: (e * n_local + i, x))

  return (
    tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch).skip(offset)
  )


def _train_stream(
  raw,
  n_local,
  source,
  spec,
  local_batch,
  image_size,
  base_seed,
  seed,
  process_index,
  start_step,
  augment_mode='official',
  augment_before_mix=True,
) -> tf.data.Dataset:
  per_step = local_batch * (2 if spec.mixing else 1)
  start_position = start_step * per_step
  ds = train_records(
    raw,
    n_local,
    seed,
    process_index,
    start_position,
    max(10 * per_step, _MIN_SHUFFLE_BUFFER),
  )

  ra = spec.randaugment
  ra_after_mix = ra is not None and spec.mixing and not augment_before_mix
  ra_first = ra is not None and not ra_after_mix

  def randaugment(image, position):
    ra_seed = preprocess.fold_in(
      preprocess.fold_in(base_seed, position), _RA_TAG
    )
    return augment_lib.randaugment(image, ra_seed, *ra, mode=augment_mode)

  def example(position, record):
    image, label = record
    ex_seed = preprocess.fold_in(base_seed, position)
    if source.decode is not None:
      image = source.decode(image)
    image = preprocess.train_image(
      image,
      ex_seed,
      image_size,
      area_range=source.train_area_range,
      flip=source.train_flip,
    )
    if ra_first:
      image = preprocess.normalize(randaugment(image, position))
    elif not ra_after_mix:
      image = preprocess.normalize(image)
    return {'images': image, 'labels': label, 'position': position}

  ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = _count_skipped(ds, start_position)
  ds = ds.batch(
    per_step,
    drop_remainder=True,
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  if spec.mixing:

    def mix(batch):
      mix_seed = preprocess.fold_in(
        preprocess.fold_in(base_seed, batch['position'][0]), _MIX_TAG
      )
      return augment_lib.mix_batch(
        batch,
        mix_seed,
        use_mixup=spec.mixup,
        use_cutmix=spec.cutmix,
        mixup_alpha=spec.mixup_alpha,
      )

    ds = ds.map(mix, num_parallel_calls=AUTOTUNE, deterministic=True)
    if ra_after_mix:
      # As the official dataset.py: unbatch, RandAugment each mixed image, rebatch. The
      # seed is that of the output's first source example, a fixed stream position.
      def augment_mixed(ex):
        image = randaugment(ex['images'], ex['position'])
        return dict(ex, images=preprocess.normalize(image))

      ds = ds.unbatch().map(
        augment_mixed, num_parallel_calls=AUTOTUNE, deterministic=True
      )
      ds = ds.batch(local_batch, drop_remainder=True)
  return ds


def _eval_stream(
  raw, source, local_batch, image_size, eval_preproc, num_batches
) -> tf.data.Dataset:

  def example(position, record):
    image, label = record
    if source.decode is not None:
      image = source.decode(image)
    image = preprocess.eval_image_tf(image, image_size, eval_preproc)
    return {
      'images': preprocess.normalize(image),
      'labels': label,
      'mask': tf.constant(True),
      'position': position,
    }

  ds = raw.enumerate().map(
    example, num_parallel_calls=AUTOTUNE, deterministic=True
  )
  ds = _count_skipped(ds, 0)
  ds = ds.batch(local_batch)

  def pad(batch):
    n = local_batch - tf.shape(batch['labels'])[0]
    return {
      k: tf.pad(v, [[0, n]] + [[0, 0]] * (v.shape.rank - 1))
      for k, v in batch.items()
    }

  ds = ds.map(pad)
  empty = {
    'images': tf.zeros([local_batch, image_size, image_size, 3], tf.float32),
    'labels': tf.zeros([local_batch], tf.int32),
    'mask': tf.zeros([local_batch], tf.bool),
    'position': tf.zeros([local_batch], tf.int64),
  }
  # Every process yields the same number of batches (collectives in eval stay in step).
  return ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(
    num_batches
  )
