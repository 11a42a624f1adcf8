"""Datasets of one's own: ImageNet prepared from ILSVRC tars, tfds:NAME, folder:ROOT.

Every dataset here is written by the test: ILSVRC2012-format tars (a tar of per-synset tars of
JPEGs, the flat validation JPEGs whose labels ship inside tensorflow_datasets), image folders
with awkward files, and `tfds.testing.mock_data` for a named TFDS dataset.
"""

import io
import os
import tarfile

import numpy as np
import PIL.Image
import pytest
import requests
import tensorflow_datasets as tfds

from data import folder, imagenet, pipeline, prepare, sources, tfds_source
from experiments import train
from tests import test_train_fixtures as fx

_TFDS_IMAGENET = os.path.join(
  os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012'
)
N_VAL, PER_SYNSET = 6, 3


def _classifier_width(params) -> int:
  # The classifier is the shallowest `linear` (the SE block has deeper ones).
  key = min((k for k in params if k.endswith('linear')), key=len)
  return params[key]['w'].shape[-1]


def _jpeg(seed: int, size=(40, 48)) -> bytes:
  rng = np.random.RandomState(seed)
  out = io.BytesIO()
  PIL.Image.fromarray(rng.randint(0, 256, size + (3,), dtype=np.uint8)).save(
    out, format='JPEG'
  )
  return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _val_synsets(n: int) -> list[str]:
  """Labels TFDS gives the first n validation files (sorted names), from its own file."""
  with open(os.path.join(_TFDS_IMAGENET, 'validation_labels.txt')) as f:
    return f.read().split()[:n]


def write_ilsvrc_tars(manual_dir) -> list[str]:
  """ILSVRC2012_img_{train,val}.tar with the synsets of the first N_VAL validation images."""
  os.makedirs(manual_dir, exist_ok=True)
  synsets = sorted(set(_val_synsets(N_VAL)))
  with tarfile.open(
    os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w'
  ) as tar:
    for k, synset in enumerate(synsets):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as sub:
        for i in range(PER_SYNSET):
          _add(sub, f'{synset}_{i}.JPEG', _jpeg(100 * k + i))
      _add(tar, f'{synset}.tar', inner.getvalue())
  with tarfile.open(
    os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w'
  ) as tar:
    for i in range(N_VAL):
      _add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _jpeg(10_000 + i))
  return synsets


def test_imagenet_from_ilsvrc_tars_prepares_trains_and_evaluates(tmp_path):
  synsets = write_ilsvrc_tars(tmp_path / 'manual')
  data_dir = str(tmp_path / 'tfds')
  sizes = prepare.prepare(
    'imagenet2012', data_dir, manual_dir=str(tmp_path / 'manual')
  )
  n_train = len(synsets) * PER_SYNSET
  assert sizes == {'train': n_train, 'validation': N_VAL}
  # Split sizes and classes come from the prepared metadata, not the official constants.
  assert pipeline.num_examples('imagenet2012', 'train', data_dir) == n_train
  assert pipeline.num_examples('imagenet2012', 'test', data_dir) == N_VAL
  held = sources.holdout_size(n_train)
  assert held == int(0.2 * n_train)
  assert pipeline.num_examples('imagenet2012', 'valid', data_dir) == held
  assert (
    pipeline.num_examples('imagenet2012', 'train_minus_valid', data_dir)
    == n_train - held
  )
  names = pipeline.class_names('imagenet2012', data_dir)
  with open(os.path.join(_TFDS_IMAGENET, 'labels.txt')) as f:
    assert names == f.read().split()
  # The validation images carry the labels of TFDS's validation_labels.txt.
  builder = imagenet.get_builder(data_dir)
  got = {
    ex['file_name'].decode(): names[int(ex['label'])]
    for ex in tfds.as_numpy(builder.as_dataset(split='validation'))
  }
  assert got == {
    f'ILSVRC2012_val_{i + 1:08d}.JPEG': s
    for i, s in enumerate(_val_synsets(N_VAL))
  }
  # Trains and evaluates through the trainer.
  config = fx.tiny_config(
    dataset='imagenet2012',
    data_dir=data_dir,
    eval_split='test',
    train_batch_size=4,
    eval_batch_size=4,
    num_train_steps=2,
    checkpoint_every_steps=2,
  )
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['eval']['count'] == N_VAL
  assert np.isfinite(result['eval']['loss'])
  assert _classifier_width(result['state'].params) == 1000


def test_prepare_imagenet_errors_say_what_to_do(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='is not a directory'):
    prepare.prepare('imagenet2012', data_dir, manual_dir=str(tmp_path / 'no'))
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'ILSVRC2012_img_train.tar').write_bytes(b'x' * 600)
  with pytest.raises(FileNotFoundError) as err:
    prepare.prepare(
      'imagenet2012', data_dir, manual_dir=str(tmp_path / 'manual')
    )
  assert "['ILSVRC2012_img_val.tar']" in str(err.value)
  assert 'image-net.org' in str(err.value)
  (tmp_path / 'manual' / 'ILSVRC2012_img_val.tar').write_bytes(b'x' * 600)
  with pytest.raises(ValueError, match='not a tar archive'):
    prepare.prepare(
      'imagenet2012', data_dir, manual_dir=str(tmp_path / 'manual')
    )
  # An interrupted earlier build: refused with the remedy, cleaned on request.
  write_ilsvrc_tars(tmp_path / 'manual')
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  leftover = os.path.join(
    os.path.dirname(builder.data_dir), f'incomplete.ABC123_{builder.version}'
  )
  os.makedirs(leftover)
  with pytest.raises(RuntimeError, match='--clean_incomplete'):
    prepare.prepare(
      'imagenet2012', data_dir, manual_dir=str(tmp_path / 'manual')
    )
  prepare.check_not_interrupted(builder, clean=True)
  assert not os.path.exists(leftover)
  # Not prepared and no manual dir: the training-time error says how to prepare.
  with pytest.raises(FileNotFoundError, match='python -m data.prepare'):
    pipeline.num_examples('imagenet2012', 'train', data_dir)


def test_split_sizes_from_metadata_and_holdout():
  sizes = {'train': 1_281_167, 'validation': 50_000}
  ranges = {
    s: sources.metadata_split_range(
      sizes, s, dataset='x', aliases={'test': 'validation'}
    )
    for s in pipeline.SPLITS
  }
  assert ranges == {
    'train': ('train', 0, 1_281_167),
    'train_minus_valid': ('train', 10_000, 1_281_167),
    'valid': ('train', 0, 10_000),
    'test': ('validation', 0, 50_000),
  }
  small = {'train': 80, 'test': 40}
  assert sources.metadata_split_range(small, 'valid', dataset='x') == (
    'train',
    0,
    16,
  )
  assert sources.metadata_split_range(small, 'train[:75%]', dataset='x') == (
    'train',
    0,
    60,
  )
  assert sources.metadata_split_range(small, 'test[10:]', dataset='x') == (
    'test',
    10,
    40,
  )
  with pytest.raises(ValueError, match="accepted: \\['test', 'train'\\]"):
    sources.metadata_split_range(small, 'validation', dataset='x')
  with pytest.raises(ValueError, match='combines 2 splits'):
    sources.metadata_split_range(small, 'train+test', dataset='x')


# ------------------------------------------------------------------- tfds:NAME
def test_tfds_dataset_by_name_with_mock_data(monkeypatch):
  monkeypatch.setattr(tfds_source, 'check_prepared', lambda *a: None)
  # mock_data has no split metadata; give the sizes its records have.
  monkeypatch.setattr(
    sources, 'split_sizes', lambda b: {'train': 12, 'test': 12}
  )
  tfds_source.get_builder.cache_clear()
  with tfds.testing.mock_data(num_examples=12):
    names = pipeline.class_names('tfds:cifar10')
    # The names of the builder's label feature (mock_data's metadata numbers them).
    info_names = tfds.builder('cifar10').info.features['label'].names
    assert names == info_names and len(names) == 10
    assert pipeline.num_classes('tfds:cifar10') == 10
    assert pipeline.num_examples('tfds:cifar10', 'train[:50%]') == 6
    batch = next(
      pipeline.build_input(
        'tfds:cifar10',
        'train',
        is_training=True,
        batch_dims=[4],
        image_size=16,
      )
    )
    assert batch['images'].shape == (4, 16, 16, 3)
    assert all(0 <= label < 10 for label in batch['labels'])
    evals = list(
      pipeline.build_input(
        'tfds:cifar10', 'test', is_training=False, batch_dims=[5], image_size=8
      )
    )
    assert sum(int(b['mask'].sum()) for b in evals) == 12
  tfds_source.get_builder.cache_clear()


def test_tfds_dataset_not_prepared_says_how(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    pipeline.num_classes('tfds:cifar10', str(tmp_path))
  msg = str(err.value)
  assert 'not prepared' in msg
  assert f'--dataset=tfds:cifar10 --data_dir={tmp_path}' in msg
  with pytest.raises(ValueError, match='no such TFDS dataset'):
    pipeline.num_classes('tfds:no_such_dataset_xyz', str(tmp_path))


def test_tfds_download_without_network_says_what_to_do(tmp_path, monkeypatch):
  # Offline, TFDS's downloader raises requests' ConnectionError (an OSError)
  # from deep inside download_and_prepare.
  def offline(self, *args, **kwargs):
    raise requests.exceptions.ConnectionError('Name or service not known')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
  with pytest.raises(ConnectionError) as err:
    prepare.prepare('tfds:cifar10', str(tmp_path))
  msg = str(err.value)
  assert 'Downloading cifar10 failed: Name or service not known' in msg
  assert f'copy cifar10/ into {tmp_path}' in msg
  assert 'folder:ROOT' in msg


# ---------------------------------------------------------------- folder:ROOT
def _pil(c: int, size=(20, 24)) -> PIL.Image.Image:
  rng = np.random.RandomState(c)
  base = np.full(size + (3,), 80 * c, np.uint8)
  return PIL.Image.fromarray(base + rng.randint(0, 40, size + (3,), np.uint8))


def write_awkward_folder(root, classes=('ant', 'bee', 'cat')) -> int:
  """Each class: RGB JPEG, PNG, greyscale, RGBA, CMYK JPEG, 16-bit PNG; plus a text file and a
  truncated JPEG. Returns the number of readable images."""
  for c, name in enumerate(classes):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    image = _pil(c)
    image.save(f'{d}/rgb.jpg')
    image.save(f'{d}/rgb.png')
    image.convert('L').save(f'{d}/grey.png')
    image.convert('RGBA').save(f'{d}/rgba.png')
    image.convert('CMYK').save(f'{d}/cmyk.jpg')
    grey16 = np.asarray(image.convert('L')).astype(np.uint16) * 257
    PIL.Image.fromarray(grey16).save(f'{d}/grey16.png')
  with open(os.path.join(root, classes[0], 'notes.txt'), 'w') as f:
    f.write('not an image')
  data = io.BytesIO()
  _pil(0).save(data, format='JPEG')
  with open(os.path.join(root, classes[1], 'truncated.jpg'), 'wb') as f:
    f.write(data.getvalue()[:150])
  return 6 * len(classes)


def test_to_rgb_converts_every_mode_like_pil():
  image = _pil(1)
  rgb = np.asarray(image)
  grey = np.asarray(image.convert('L'))
  np.testing.assert_array_equal(folder.to_rgb(image), rgb)
  np.testing.assert_array_equal(
    folder.to_rgb(image.convert('L')), np.stack([grey] * 3, -1)
  )
  grey16 = PIL.Image.fromarray(grey.astype(np.uint16) * 257)
  np.testing.assert_array_equal(folder.to_rgb(grey16), np.stack([grey] * 3, -1))
  transparent = image.convert('RGBA')
  transparent.putalpha(0)
  assert (folder.to_rgb(transparent) == 255).all()  # composited on white
  cmyk = image.convert('CMYK')
  np.testing.assert_array_equal(
    folder.to_rgb(cmyk), np.asarray(cmyk.convert('RGB'))
  )


def test_folder_with_awkward_files_trains_after_skipping_and_counting(
  tmp_path, caplog
):
  root = str(tmp_path / 'photos')
  readable = write_awkward_folder(root)
  data_dir = str(tmp_path / 'tfds')
  dataset = f'folder:{root}'
  with caplog.at_level('WARNING'):
    names = pipeline.class_names(dataset, data_dir)
  assert names == ['ant', 'bee', 'cat']
  assert 'Skipped 2 file(s)' in caplog.text
  assert 'notes.txt' in caplog.text and 'truncated.jpg' in caplog.text
  n_train = pipeline.num_examples(dataset, 'train', data_dir)
  n_test = pipeline.num_examples(dataset, 'test', data_dir)
  # Stratified: round(20% of 6) = 1 per class held out.
  assert (n_train, n_test) == (readable - 3, 3)
  builder = folder.get_builder(root, data_dir)
  test_labels = [
    int(ex['label']) for ex in tfds.as_numpy(builder.as_dataset(split='test'))
  ]
  assert sorted(test_labels) == [0, 1, 2]
  # Deterministic: the same folder gives the same held-out files.
  first = sorted(
    ex['file_name'] for ex in tfds.as_numpy(builder.as_dataset(split='test'))
  )
  folder.get_builder.cache_clear()
  again = folder.get_builder(root, str(tmp_path / 'tfds2'))
  assert first == sorted(
    ex['file_name'] for ex in tfds.as_numpy(again.as_dataset(split='test'))
  )
  # Sharding: two processes' eval shards cover every test image once.
  labels = []
  for p in range(2):
    for b in pipeline.build_input(
      dataset,
      'test',
      is_training=False,
      batch_dims=[2],
      image_size=8,
      data_dir=data_dir,
      process_index=p,
      process_count=2,
    ):
      labels += b['labels'][b['mask']].tolist()
  assert sorted(labels) == [0, 1, 2]

  # Exact resume: batches from step 3 equal a fresh stream's batches 3 and 4.
  def stream(start):
    return pipeline.build_input(
      dataset,
      'train',
      is_training=True,
      batch_dims=[4],
      image_size=8,
      data_dir=data_dir,
      start_step=start,
    )

  fresh = stream(0)
  fresh_batches = [next(fresh) for _ in range(5)]
  resumed = stream(3)
  for want in fresh_batches[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['images'], want['images'])
    np.testing.assert_array_equal(got['labels'], want['labels'])
  # And the trainer trains and evaluates on it.
  config = fx.tiny_config(
    dataset=dataset,
    data_dir=data_dir,
    eval_split='test',
    train_batch_size=4,
    eval_batch_size=4,
    num_train_steps=2,
    checkpoint_every_steps=2,
  )
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['eval']['count'] == 3
  assert _classifier_width(result['state'].params) == 3


def test_folder_split_layout(tmp_path):
  root = tmp_path / 'root'
  for split, n in (('train', 3), ('val', 2)):
    for c, name in enumerate(('x', 'y')):
      d = root / split / name
      d.mkdir(parents=True)
      for i in range(n):
        _pil(c).save(d / f'{i}.png')
  dataset = f'folder:{root}'
  data_dir = str(tmp_path / 'tfds')
  assert pipeline.class_names(dataset, data_dir) == ['x', 'y']
  assert pipeline.num_examples(dataset, 'train', data_dir) == 6
  assert pipeline.num_examples(dataset, 'val', data_dir) == 4
  with pytest.raises(ValueError, match="accepted: \\['train', 'val'\\]"):
    pipeline.num_examples(dataset, 'test', data_dir)


def test_folder_bad_inputs_fail_before_training(tmp_path):
  data_dir = str(tmp_path / 'tfds')

  def classes(root):
    folder.get_builder.cache_clear()
    return pipeline.num_classes(f'folder:{root}', data_dir)

  with pytest.raises(FileNotFoundError, match='does not exist'):
    classes(tmp_path / 'missing')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no class folders with files'):
    classes(tmp_path / 'empty')
  (tmp_path / 'a' / 'cat').mkdir(parents=True)
  (tmp_path / 'a' / 'dog').mkdir(parents=True)
  _pil(0).save(tmp_path / 'a' / 'cat' / '0.png')
  with pytest.raises(ValueError, match='dog holds no files'):
    classes(tmp_path / 'a')
  (tmp_path / 'a' / 'dog' / 'x.txt').write_text('text')
  with pytest.raises(
    ValueError, match="\\['dog'\\] .* hold no readable images"
  ):
    classes(tmp_path / 'a')
  for split, name in (('train', 'cat'), ('test', 'cat'), ('test', 'emu')):
    (tmp_path / 'b' / split / name).mkdir(parents=True, exist_ok=True)
    _pil(0).save(tmp_path / 'b' / split / name / '0.png')
  with pytest.raises(ValueError, match="classes that train lacks: \\['emu'\\]"):
    classes(tmp_path / 'b')
  folder.get_builder.cache_clear()


# ------------------------------------------------------ class names in the workdir
def test_run_info_records_the_folder_class_names(tmp_path):
  from experiments import predict, run_info

  root = tmp_path / 'r'
  for name in ('zebra', 'apple'):
    (root / name).mkdir(parents=True)
    for i in range(2):
      _pil(i).save(root / name / f'{i}.png')
  workdir = str(tmp_path / 'w')
  assert run_info.read(workdir) is None
  run_info.write(workdir, f'folder:{root}', str(tmp_path / 'tfds'))
  info = run_info.read(workdir)
  assert info['class_names'] == ['apple', 'zebra'] and info['num_classes'] == 2
  assert info['dataset'] == f'folder:{root}'
  names_file = os.path.join(workdir, run_info.NAMES_FILE)
  assert predict.class_names(2, names_file) == ['apple', 'zebra']
