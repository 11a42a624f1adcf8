r"""Prepares a dataset once, before training: ImageNet from its tars, a TFDS dataset, a folder.

    python -m data.prepare --dataset=imagenet2012 --data_dir=D --manual_dir=M
    python -m data.prepare --dataset=tfds:cifar10 --data_dir=D        # downloads (TFDS)
    python -m data.prepare --dataset=folder:/photos --data_dir=D      # converts the folder

ImageNet is built by TFDS's own `imagenet2012` builder in this process, so `apache_beam` (which
the `tfds build` command imports) is not needed. M must hold ILSVRC2012_img_train.tar (a tar of
per-synset tars of JPEGs) and ILSVRC2012_img_val.tar (the flat ILSVRC2012_val_%08d.JPEG
files); the validation labels ship inside tensorflow_datasets.
"""

import glob
import os
import shutil
import tarfile

import tensorflow_datasets as tfds
from absl import app, flags, logging

from data import folder, imagenet, pipeline, tfds_source

TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')

_DATASET = flags.DEFINE_string(
  'dataset', None, 'imagenet2012, tfds:NAME or folder:ROOT.'
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  None,
  'TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).',
)
_MANUAL_DIR = flags.DEFINE_string(
  'manual_dir', None, 'imagenet2012: the directory holding the ILSVRC2012 tars.'
)
_CLEAN = flags.DEFINE_bool(
  'clean_incomplete',
  False,
  'Delete what an interrupted earlier build left behind, then build.',
)


def check_manual_dir(manual_dir: str | None) -> str:
  """The manual dir, or FileNotFoundError naming what is missing and what to do."""
  if not manual_dir:
    raise ValueError(
      'Pass --manual_dir=M, the directory holding ILSVRC2012_img_train.tar and '
      'ILSVRC2012_img_val.tar (downloaded from https://image-net.org).'
    )
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
      f'--manual_dir={manual_dir} is not a directory. Pass the directory that '
      f'holds {" and ".join(TARS)}.'
    )
  missing = [t for t in TARS if not os.path.isfile(os.path.join(manual_dir, t))]
  if missing:
    found = sorted(os.listdir(manual_dir))[:20]
    raise FileNotFoundError(
      f'{manual_dir} lacks {missing} (it holds {found or "nothing"}). Download '
      'the ILSVRC2012 tars from https://image-net.org and put them there '
      'unextracted, under these exact names; or pass the right --manual_dir.'
    )
  for t in TARS:
    path = os.path.join(manual_dir, t)
    if not tarfile.is_tarfile(path):
      raise ValueError(
        f'{path} is not a tar archive (an interrupted download?). Download it '
        'again from https://image-net.org.'
      )
  return manual_dir


def incomplete_builds(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Directories an interrupted earlier build of `builder` left behind."""
  parent = os.path.dirname(builder.data_dir)
  return sorted(
    glob.glob(os.path.join(parent, f'incomplete.*{builder.version}'))
  )


def check_not_interrupted(
  builder: tfds.core.DatasetBuilder, clean: bool
) -> None:
  leftovers = incomplete_builds(builder)
  half_written = os.path.isdir(builder.data_dir) and not builder.is_prepared()
  if half_written:
    leftovers.append(builder.data_dir)
  if not leftovers:
    return
  if not clean:
    raise RuntimeError(
      f'An earlier build of {builder.name} was interrupted: it left '
      f'{leftovers}. Rerun with --clean_incomplete to delete them and build '
      'again (or delete them yourself).'
    )
  for path in leftovers:
    logging.warning('Deleting the interrupted build %s.', path)
    shutil.rmtree(path)


def prepare_imagenet(
  data_dir: str, manual_dir: str | None, clean_incomplete: bool = False
) -> tfds.core.DatasetBuilder:
  """Builds TFDS imagenet2012 under data_dir from the tars in manual_dir."""
  manual_dir = check_manual_dir(manual_dir)
  builder = tfds.builder(imagenet.NAME, data_dir=data_dir)
  if builder.is_prepared():
    logging.info(
      '%s is already prepared at %s.', imagenet.NAME, builder.data_dir
    )
    return builder
  check_not_interrupted(builder, clean_incomplete)
  logging.info(
    'Building %s under %s from %s.', imagenet.NAME, data_dir, manual_dir
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
  )
  return builder


def prepare_tfds(
  name: str, data_dir: str, clean_incomplete: bool = False
) -> tfds.core.DatasetBuilder:
  """Downloads and prepares TFDS dataset ``name`` under data_dir, once."""
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  check_not_interrupted(builder, clean_incomplete)
  logging.info('Downloading and preparing %s under %s.', name, data_dir)
  try:
    builder.download_and_prepare()
  except OSError as error:  # requests' ConnectionError is an OSError
    raise ConnectionError(
      f'Downloading {name} failed: {error}\nTFDS downloads this dataset from '
      'its publisher, so this needs internet access. On an offline machine, '
      f'prepare it where there is a network and copy {name}/ into '
      f'{data_dir}, or give your images as folder:ROOT.'
    ) from error
  return builder


def prepare(
  dataset: str,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  clean_incomplete: bool = False,
) -> dict[str, int]:
  """Prepares `dataset` under data_dir; returns its split sizes."""
  data_dir = os.path.abspath(
    os.path.expanduser(data_dir or tfds_source.default_data_dir())
  )
  if dataset == imagenet.NAME:
    prepare_imagenet(data_dir, manual_dir, clean_incomplete)
  elif dataset.startswith(tfds_source.PREFIX):
    prepare_tfds(dataset[len(tfds_source.PREFIX) :], data_dir, clean_incomplete)
  elif dataset.startswith(folder.PREFIX) or dataset in pipeline.SOURCES:
    pass  # Converted (or built) on first use below.
  else:
    raise ValueError(
      f'Unknown dataset {dataset!r}; accepted: imagenet2012, embedded_mnist, '
      'tfds:NAME, folder:ROOT.'
    )
  source = pipeline.get_source(dataset)
  builder = source.get_builder(data_dir)
  sizes = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
  logging.info(
    '%s is ready under %s: splits %s, %d classes.',
    dataset,
    data_dir,
    sizes,
    pipeline.num_classes(dataset, data_dir),
  )
  return sizes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if not _DATASET.value:
    raise app.UsageError(
      'Pass --dataset=imagenet2012, tfds:NAME or folder:ROOT.'
    )
  sizes = prepare(
    _DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value, _CLEAN.value
  )
  print(f'{_DATASET.value}: {sizes}')


if __name__ == '__main__':
  app.run(main)
