"""Input pipeline on the embedded digits and on mocked TFDS imagenet2012."""

import os
import re

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from data import augment, embedded_mnist, imagenet, pipeline, preprocess  # noqa: E402

MEAN = np.array(preprocess.MEAN_RGB)
STD = np.array(preprocess.STDDEV_RGB)
LO, HI = (0 - MEAN) / STD, (255 - MEAN) / STD


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  embedded_mnist.get_builder(data_dir)
  return data_dir


# ---------------------------------------------------------------- mocked imagenet2012
MOCK_TRAIN, MOCK_VALIDATION, MOCK_HOLDOUT, CORRUPT = 40, 17, 6, 5


def _mock_jpegs(n, seed):
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    h, w = rng.randint(20, 60, size=2)
    out.append(
      tf.io.encode_jpeg(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).numpy()
    )
  return out


_JPEGS = {
  'train': _mock_jpegs(MOCK_TRAIN, 0),
  'validation': _mock_jpegs(MOCK_VALIDATION, 1),
}


def _mock_as_dataset(self, split, corrupt=False, **kwargs):
  """Honours 'name[lo:hi]' slices (tfds.testing.mock_data's default generator does not)."""
  del self, kwargs
  name, lo, hi = re.fullmatch(r'(\w+)\[(\d+):(\d+)\]', split).groups()
  lo, hi = int(lo), int(hi)
  images = list(_JPEGS[name])
  if corrupt:
    images[CORRUPT] = images[CORRUPT][:200]  # Truncated JPEG: fails to decode.
  return tf.data.Dataset.from_tensor_slices(
    {
      'image': images[lo:hi],
      'label': np.arange(lo, hi, dtype=np.int64),
      'file_name': [f'{name}_{i}' for i in range(lo, hi)],
    }
  )


@pytest.fixture
def mock_imagenet(monkeypatch):
  monkeypatch.setattr(
    imagenet,
    'SPLIT_SIZES',
    {'train': MOCK_TRAIN, 'validation': MOCK_VALIDATION},
  )
  monkeypatch.setattr(imagenet, 'HOLDOUT', MOCK_HOLDOUT)
  monkeypatch.setattr(imagenet, 'check_prepared', lambda *a: None)
  with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
    yield


def _eval_labels(dataset, split, data_dir, process_count, batch_dims=(2, 3)):
  """Labels of the masked-in eval examples of every process, with the batch counts."""
  labels, counts = [], []
  for p in range(process_count):
    batches = list(
      pipeline.build_input(
        dataset,
        split,
        is_training=False,
        batch_dims=batch_dims,
        image_size=16,
        data_dir=data_dir,
        process_index=p,
        process_count=process_count,
      )
    )
    counts.append(len(batches))
    for b in batches:
      assert b['mask'].shape == tuple(batch_dims) and b['mask'].dtype == bool
      labels.extend(b['labels'][b['mask']].tolist())
  return labels, counts


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_mock_imagenet_eval_shards_cover_each_example_once(
  mock_imagenet, process_count
):
  # Labels are the example indices, so a sorted list proves: none missing, none twice.
  labels, counts = _eval_labels('imagenet2012', 'test', None, process_count)
  assert sorted(labels) == list(range(MOCK_VALIDATION))
  assert (
    len(set(counts)) == 1
  )  # Every process yields the same number of batches.
  labels, _ = _eval_labels(
    'imagenet2012', 'valid', None, process_count, batch_dims=(4,)
  )
  assert sorted(labels) == list(range(MOCK_HOLDOUT))


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_mock_imagenet_train_epoch_covers_shards(mock_imagenet, process_count):
  seen = []
  for p in range(process_count):
    raw, n_local, _ = pipeline.read_shard(
      pipeline.SOURCES['imagenet2012'],
      'train_minus_valid',
      None,
      p,
      process_count,
    )
    recs = pipeline.train_records(
      raw,
      n_local,
      seed=0,
      process_index=p,
      start_position=0,
      shuffle_buffer=1000,
    )
    positions, labels = [], []
    for pos, (_, label) in recs.take(2 * n_local):
      positions.append(int(pos))
      labels.append(int(label))
    assert positions == list(range(2 * n_local))
    # Each epoch is a permutation of the shard, and the two epochs are shuffled differently.
    assert sorted(labels[:n_local]) == sorted(labels[n_local:])
    assert labels[:n_local] != labels[n_local:]
    seen.extend(labels[:n_local])
  assert sorted(seen) == list(range(MOCK_HOLDOUT, MOCK_TRAIN))


def test_mock_imagenet_train_batches(mock_imagenet):
  it = pipeline.build_input(
    'imagenet2012',
    'train',
    is_training=True,
    batch_dims=[2, 4],
    image_size=24,
    augment='cutmix_mixup_randaugment_105',
    dtype=tf.bfloat16.as_numpy_dtype,
  )
  b = next(it)
  assert set(b) == {'images', 'labels', 'mix_labels', 'ratio'}
  assert b['images'].shape == (2, 4, 24, 24, 3)
  assert b['images'].dtype == np.dtype(tf.bfloat16.as_numpy_dtype)
  assert b['labels'].dtype == np.int32 and b['mix_labels'].shape == (2, 4)
  assert np.all((b['ratio'] >= 0) & (b['ratio'] <= 1))
  images = b['images'].astype(np.float32)
  assert np.all(images >= LO.min() - 0.02) and np.all(images <= HI.max() + 0.02)


def test_mock_imagenet_eval_preprocs(mock_imagenet):
  for eval_preproc in ('resize_crop_32', 'crop_resize'):
    b = next(
      pipeline.build_input(
        'imagenet2012',
        'test',
        is_training=False,
        batch_dims=[5],
        image_size=20,
        eval_preproc=eval_preproc,
      )
    )
    assert (
      b['images'].shape == (5, 20, 20, 3) and b['images'].dtype == np.float32
    )
    assert np.all(b['images'] >= LO - 1e-5) and np.all(b['images'] <= HI + 1e-5)
  with pytest.raises(ValueError, match='eval_preproc'):
    pipeline.build_input(
      'imagenet2012',
      'test',
      is_training=False,
      batch_dims=[5],
      image_size=20,
      eval_preproc='center',
    )


def test_corrupt_jpeg_is_skipped_and_counted(monkeypatch):
  monkeypatch.setattr(
    imagenet,
    'SPLIT_SIZES',
    {'train': MOCK_TRAIN, 'validation': MOCK_VALIDATION},
  )
  monkeypatch.setattr(imagenet, 'check_prepared', lambda *a: None)
  before = pipeline.skipped_images()
  with tfds.testing.mock_data(
    as_dataset_fn=lambda self, split, **kw: _mock_as_dataset(
      self, split, corrupt=True
    )
  ):
    labels, _ = _eval_labels('imagenet2012', 'test', None, 1)
  assert sorted(labels) == [i for i in range(MOCK_VALIDATION) if i != CORRUPT]
  assert pipeline.skipped_images() == before + 1


def test_missing_imagenet_error_says_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    pipeline.build_input(
      'imagenet2012',
      'train',
      is_training=True,
      batch_dims=[2],
      image_size=32,
      data_dir=str(tmp_path),
    )
  msg = str(err.value)
  assert (
    str(tmp_path) in msg
    and 'manual' in msg
    and 'ILSVRC2012_img_train.tar' in msg
  )


# ---------------------------------------------------------------- embedded digits
def test_embedded_splits_are_fixed_and_stratified(mnist_dir):
  builder = embedded_mnist.get_builder(mnist_dir)
  for split, per_class in (('train', 400), ('test', 100)):
    labels = np.array(
      [int(x['label']) for x in builder.as_dataset(split=split)]
    )
    np.testing.assert_array_equal(
      np.bincount(labels, minlength=10), [per_class] * 10
    )
  idx = embedded_mnist.stratified_indices()
  assert len(np.intersect1d(idx['train'], idx['test'])) == 0
  assert len(np.union1d(idx['train'], idx['test'])) == 5000
  assert pipeline.num_examples('embedded_mnist', 'train') == 4000
  assert pipeline.num_examples('embedded_mnist', 'test') == 1000
  assert pipeline.num_classes('embedded_mnist') == 10


@pytest.mark.parametrize('dtype', [np.float32, tf.bfloat16.as_numpy_dtype])
def test_embedded_train_batch_shapes_dtypes_ranges(mnist_dir, dtype):
  b = next(
    pipeline.build_input(
      'embedded_mnist',
      'train',
      is_training=True,
      batch_dims=[2, 8],
      image_size=32,
      data_dir=mnist_dir,
      dtype=dtype,
    )
  )
  assert set(b) == {'images', 'labels'}
  assert b['images'].shape == (2, 8, 32, 32, 3) and b[
    'images'
  ].dtype == np.dtype(dtype)
  assert b['labels'].shape == (2, 8) and b['labels'].dtype == np.int32
  images = b['images'].astype(np.float32)
  tol = 0.02 if dtype != np.float32 else 1e-5
  assert np.all(images >= LO - tol) and np.all(images <= HI + tol)
  # Grey digits to RGB: the three channels hold the same pixel value before normalisation.
  pixels = images * STD + MEAN
  np.testing.assert_allclose(
    pixels[..., 0], pixels[..., 1], atol=1.0 if tol > 1e-3 else 1e-3
  )
  assert (
    images.min() < LO.max() and images.max() > HI.min()
  )  # Black background, white ink.
  assert set(b['labels'].ravel()) <= set(range(10))


@pytest.mark.parametrize(
  'augment_mode,augment_before_mix', [('corrected', True), ('official', False)]
)
def test_embedded_determinism_and_exact_resume(
  mnist_dir, augment_mode, augment_before_mix
):
  kw = dict(
    is_training=True,
    batch_dims=[1, 8],
    image_size=16,
    data_dir=mnist_dir,
    augment='cutmix_mixup_randaugment_105',
    augment_mode=augment_mode,
    augment_before_mix=augment_before_mix,
    process_index=1,
    process_count=50,
  )
  # 50 processes: an 80-example shard, 16 examples per step, so 5 steps per epoch.
  fresh = pipeline.build_input('embedded_mnist', 'train', seed=3, **kw)
  fresh = [next(fresh) for _ in range(8)]
  again = pipeline.build_input('embedded_mnist', 'train', seed=3, **kw)
  for a, b in zip(fresh[:3], [next(again) for _ in range(3)], strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for k in (3, 7):  # Mid-epoch, and in the next epoch.
    resumed = next(
      pipeline.build_input(
        'embedded_mnist', 'train', seed=3, start_step=k, **kw
      )
    )
    for key in fresh[k]:
      np.testing.assert_array_equal(fresh[k][key], resumed[key])
  other = next(pipeline.build_input('embedded_mnist', 'train', seed=4, **kw))
  assert not np.array_equal(other['images'], fresh[0]['images'])


@pytest.mark.parametrize('batch_dims', [(7,), (2, 64), (1000,), (3, 400)])
def test_embedded_eval_padding_counts_every_example_once(mnist_dir, batch_dims):
  batches = list(
    pipeline.build_input(
      'embedded_mnist',
      'test',
      is_training=False,
      batch_dims=batch_dims,
      image_size=8,
      data_dir=mnist_dir,
    )
  )
  n = int(np.prod(batch_dims))
  assert len(batches) == -(-1000 // n)
  masks = np.concatenate([b['mask'].ravel() for b in batches])
  assert masks.sum() == 1000 and masks[:1000].all() and not masks[1000:].any()
  labels = np.concatenate([b['labels'].ravel() for b in batches])[masks]
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [100] * 10)


def test_augment_before_mix_false_mixes_first_then_augments(
  mnist_dir, monkeypatch
):
  """A non-linear stand-in for RandAugment (x^2 / 255) tells the two orders apart: mixing
  first gives f(mix(a, b)), which the pipeline without RandAugment lets us compute."""
  seeds = []

  def fake_randaugment(image, seed, num_layers, magnitude, *, mode):
    assert (num_layers, magnitude, mode) == (2, 10, 'official')
    seeds.append(seed)
    return tf.square(tf.clip_by_value(image, 0.0, 255.0)) / 255.0

  kw = dict(
    is_training=True,
    batch_dims=[6],
    image_size=12,
    data_dir=mnist_dir,
    seed=1,
    process_index=0,
    process_count=1,
  )
  plain = next(
    pipeline.build_input('embedded_mnist', 'train', augment='mixup', **kw)
  )
  monkeypatch.setattr(augment, 'randaugment', fake_randaugment)
  after = next(
    pipeline.build_input(
      'embedded_mnist',
      'train',
      augment='mixup_randaugment_210',
      augment_before_mix=False,
      **kw,
    )
  )
  before = next(
    pipeline.build_input(
      'embedded_mnist',
      'train',
      augment='mixup_randaugment_210',
      augment_before_mix=True,
      **kw,
    )
  )
  assert seeds  # the stand-in was traced
  mixed = plain['images'] * STD + MEAN
  want = (np.square(np.clip(mixed, 0, 255)) / 255.0 - MEAN) / STD
  np.testing.assert_allclose(after['images'], want, atol=1e-3)
  np.testing.assert_array_equal(after['labels'], plain['labels'])
  np.testing.assert_array_equal(after['ratio'], plain['ratio'])
  assert np.abs(before['images'] - want).max() > 0.1


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_embedded_shards_cover_each_example_once(mnist_dir, process_count):
  keys = []
  for p in range(process_count):
    for b in pipeline.build_input(
      'embedded_mnist',
      'test',
      is_training=False,
      batch_dims=[128],
      image_size=28,
      data_dir=mnist_dir,
      process_index=p,
      process_count=process_count,
    ):
      keys.extend(img.tobytes() for img in b['images'][b['mask']])
  assert len(keys) == 1000
  assert len(set(keys)) == len(keys) - _duplicates_in_test()


def _duplicates_in_test():
  images, _ = embedded_mnist.load_digits()
  test = images[embedded_mnist.stratified_indices()['test']]
  return len(test) - len({x.tobytes() for x in test})


def test_eval_image_matches_the_eval_pipeline(mnist_dir):
  builder = embedded_mnist.get_builder(mnist_dir)
  first = next(iter(builder.as_dataset(split='test[0:1]')))['image'].numpy()
  batch = next(
    pipeline.build_input(
      'embedded_mnist',
      'test',
      is_training=False,
      batch_dims=[4],
      image_size=32,
      data_dir=mnist_dir,
    )
  )
  np.testing.assert_allclose(
    preprocess.eval_image(first[..., 0], 32, 'resize'),
    batch['images'][0],
    atol=1e-5,
  )
  photo = np.random.RandomState(0).randint(0, 256, (50, 70, 3)).astype(np.uint8)
  out = preprocess.eval_image(photo, 24)
  assert out.shape == (24, 24, 3) and out.dtype == np.float32
  with pytest.raises(ValueError, match='uint8'):
    preprocess.eval_image(photo.astype(np.float32), 24)


def test_bad_arguments_name_accepted_values(mnist_dir):
  kw = dict(is_training=True, batch_dims=[2], image_size=8, data_dir=mnist_dir)
  with pytest.raises(ValueError, match='imagenet2012'):
    pipeline.build_input('cifar10', 'train', **kw)
  with pytest.raises(ValueError, match='train_minus_valid'):
    pipeline.build_input('embedded_mnist', 'validation', **kw)
  with pytest.raises(ValueError, match='randaugment'):
    pipeline.build_input('embedded_mnist', 'train', augment='autoaugment', **kw)
  with pytest.raises(ValueError, match='process_index'):
    pipeline.build_input(
      'embedded_mnist', 'train', process_index=2, process_count=2, **kw
    )


@pytest.mark.parametrize('start, end', [(0, 10), (5, 5), (3, 50_003), (7, 9)])
@pytest.mark.parametrize('process_count', [1, 2, 3, 8])
def test_shard_range_partitions_the_range_evenly(start, end, process_count):
  shards = [
    pipeline.shard_range(start, end, i, process_count)
    for i in range(process_count)
  ]
  # Contiguous, in process order, covering [start, end) exactly once...
  assert shards[0][0] == start and shards[-1][1] == end
  for (_, hi), (lo, _) in zip(shards, shards[1:]):
    assert hi == lo
  # ...with sizes floor(n / p) or one more.
  n = end - start
  sizes = [hi - lo for lo, hi in shards]
  assert set(sizes) <= {n // process_count, -(-n // process_count)}
  assert sum(sizes) == n
