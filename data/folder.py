"""`folder:ROOT`: train on a folder of images.

Two layouts:
  - `ROOT/<split>/<class>/*` (TFDS `ImageFolder` layout), chosen when `ROOT/train/` exists and
    holds folders: the splits are the sub-folders of ROOT (`train`, `test`, `val`, ...);
  - `ROOT/<class>/*` otherwise: `test` holds out a deterministic, stratified HOLDOUT_FRACTION
    (20%, at least one image) of each class with two or more images (a fixed permutation of the
    sorted file names per class); `train` is the rest.
Class names are the sorted class-folder names of `train`; every other split may only use them.

The folder is converted once into an ordinary TFDS dataset under
`DATA_DIR/folder/<name>-<hash of the listing>/` (a changed folder is converted again), so
sharding across processes, shuffling and exact resume are those of ImageNet. Every file is
decoded with PIL at conversion: JPEG, PNG, greyscale, RGBA/LA/P (composited on white), CMYK
JPEGs and 16-bit PNGs become 8-bit RGB; files that are not images and corrupt or truncated
images are skipped and counted in the log, never met mid-epoch.
"""

import dataclasses
import functools
import hashlib
import io
import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import logging

from data import sources, tfds_source

PREFIX = 'folder:'
HOLDOUT_FRACTION = sources.HOLDOUT_FRACTION
_SPLIT_SEED = (
  0  # Fixed: the held-out split is part of the dataset's definition.
)
_FORMAT = 1  # Bump to re-convert every folder when the conversion changes.


@dataclasses.dataclass(frozen=True)
class Listing:
  """The files of each split, as (path relative to ROOT, class name), and the class names."""

  root: str
  splits: dict  # split -> tuple of (relpath, class)
  class_names: tuple
  key: str  # hash of the listing (names, sizes, modification times)


def _subdirs(path: str) -> list[str]:
  return sorted(
    e.name
    for e in os.scandir(path)
    if e.is_dir() and not e.name.startswith('.')
  )


def _files(path: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      if not name.startswith('.'):
        out.append(os.path.join(dirpath, name))
  return out


def list_folder(root: str) -> Listing:
  """Lists the files per split and class; ValueError on a missing or empty folder."""
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f'Image folder {root} does not exist (from --config.dataset={PREFIX}'
      f'{root}). Pass folder:ROOT with ROOT/<class>/<images> or '
      'ROOT/<split>/<class>/<images>.'
    )
  split_layout = os.path.isdir(os.path.join(root, 'train')) and bool(
    _subdirs(os.path.join(root, 'train'))
  )
  by_split = {}
  for split in _subdirs(root) if split_layout else ['']:
    split_dir = os.path.join(root, split)
    classes = _subdirs(split_dir)
    by_split[split or 'all'] = {
      c: [os.path.relpath(f, root) for f in _files(os.path.join(split_dir, c))]
      for c in classes
    }
  if not any(by_split.values()) or not any(
    files for split in by_split.values() for files in split.values()
  ):
    raise ValueError(
      f'Image folder {root} has no class folders with files. Expected '
      'ROOT/<class>/<images> (e.g. ROOT/cat/1.jpg, ROOT/dog/2.png) or '
      'ROOT/train/<class>/<images> with other splits next to train/.'
    )
  train = by_split['train' if split_layout else 'all']
  class_names = tuple(sorted(train))
  for split, classes in by_split.items():
    for c, files in classes.items():
      if not files:
        raise ValueError(
          f'Class folder {os.path.join(root, "" if split == "all" else split, c)}'
          ' holds no files; add images or remove the folder.'
        )
    extra = sorted(set(classes) - set(class_names))
    if extra:
      raise ValueError(
        f'Split {split!r} of {root} has classes that train lacks: {extra}. '
        f'Train classes: {list(class_names)}. Add train images for them or '
        'remove them.'
      )
  digest = hashlib.sha256(f'{_FORMAT}:{root}'.encode())
  for classes in by_split.values():
    for files in classes.values():
      for rel in files:
        st = os.stat(os.path.join(root, rel))
        digest.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  splits = {
    split: tuple((rel, c) for c in sorted(classes) for rel in classes[c])
    for split, classes in by_split.items()
  }
  return Listing(root, splits, class_names, digest.hexdigest()[:12])


def to_rgb(image: PIL.Image.Image) -> np.ndarray:
  """Any PIL image -> uint8 [H, W, 3]: 16-bit scaled to 8, alpha composited on white."""
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    array = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode.startswith('I;16') or array.max() > 255 else 255
    grey = np.clip(np.round(array * 255.0 / top), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == 'P':
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA'):
    image = image.convert('RGBA')
    white = PIL.Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = PIL.Image.alpha_composite(white, image)
  return np.asarray(image.convert('RGB'), dtype=np.uint8)


def read_image(path: str) -> bytes | None:
  """Encoded RGB bytes of an image file (its own bytes when already an RGB JPEG), or None
  when the file is not an image or is corrupt or truncated."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    image = PIL.Image.open(io.BytesIO(data))
    image.load()  # Raises on truncated or corrupt data.
    if image.format == 'JPEG' and image.mode == 'RGB':
      return data
    out = io.BytesIO()
    PIL.Image.fromarray(to_rgb(image)).save(out, format='PNG')
    return out.getvalue()
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
    return None


class FolderImages(tfds.core.GeneratorBasedBuilder):
  """The images of one folder, converted to RGB; one builder data dir per folder listing."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images of a folder, one sub-folder per class.'}
  code_path = None  # Nothing to download, no checksums file to look up.

  def __init__(self, *, listing: Listing, **kwargs):
    self._listing = listing
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'Images of {self._listing.root}.',
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(
            names=list(self._listing.class_names)
          ),
          'file_name': tfds.features.Text(),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      name: self._generate_examples(files)
      for name, files in _split_files(self._listing).items()
    }

  def _generate_examples(self, files):
    for position, (rel, c, data) in enumerate(files):
      yield (
        position,
        {
          'image': io.BytesIO(data),
          'label': self._listing.class_names.index(c),
          'file_name': rel,
        },
      )


def _decoded(listing: Listing) -> tuple[dict, list[str]]:
  """{split: [(relpath, class, bytes)]} of the readable images, and the skipped files."""
  out, skipped = {}, []
  for split, files in listing.splits.items():
    out[split] = []
    for rel, c in files:
      data = read_image(os.path.join(listing.root, rel))
      if data is None:
        skipped.append(rel)
      else:
        out[split].append((rel, c, data))
  return out, skipped


def _split_files(listing: Listing) -> dict:
  """Every split's readable images in a fixed, class-mixed order (balanced shards)."""
  decoded, skipped = _decoded(listing)
  if skipped:
    logging.warning(
      'Skipped %d file(s) of %s that are not images or are corrupt or '
      'truncated: %s%s',
      len(skipped),
      listing.root,
      skipped[:20],
      ' ...' if len(skipped) > 20 else '',
    )
  for split, files in decoded.items():
    present = {c for _, c, _ in files}
    names = {c for _, c in listing.splits[split]}
    empty = sorted(names - present)
    if empty:
      raise ValueError(
        f'Class folder(s) {empty} of split {split!r} in {listing.root} hold no '
        'readable images (every file was skipped as not an image or corrupt).'
      )
  rng = np.random.RandomState(_SPLIT_SEED)
  if 'all' in decoded:  # Class layout: a stratified held-out `test`.
    train, test = [], []
    for c in listing.class_names:
      files = [f for f in decoded['all'] if f[1] == c]
      k = int(round(len(files) * HOLDOUT_FRACTION))
      k = max(1, k) if len(files) >= 2 else 0
      order = rng.permutation(len(files))
      test += [files[i] for i in order[:k]]
      train += [files[i] for i in order[k:]]
    decoded = {'train': train, 'test': test} if test else {'train': train}
  return {
    split: [files[i] for i in rng.permutation(len(files))]
    for split, files in decoded.items()
  }


@functools.cache
def get_builder(root: str, data_dir: str | None) -> FolderImages:
  """The converted dataset of `root`, converting it first when the folder is new or changed."""
  listing = list_folder(root)
  data_dir = data_dir or tfds_source.default_data_dir()
  name = os.path.basename(listing.root.rstrip(os.sep)) or 'root'
  builder = FolderImages(
    listing=listing,
    data_dir=os.path.join(data_dir, 'folder', f'{name}-{listing.key}'),
  )
  if not builder.is_prepared():
    logging.info(
      'Converting %s (%d classes) under %s.',
      listing.root,
      len(listing.class_names),
      builder.data_dir,
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
    )
  listed = sum(len(f) for f in listing.splits.values())
  kept = sum(sources.split_sizes(builder).values())
  if kept < listed:
    logging.warning(
      '%s: %d of %d files are used; %d were skipped (not images, corrupt or '
      'truncated).',
      listing.root,
      kept,
      listed,
      listed - kept,
    )
  return builder


def make_source(root: str) -> sources.Source:
  if not root:
    raise ValueError("Pass an image folder: 'folder:/path/to/root'.")

  def split_range(builder, split):
    return sources.metadata_split_range(
      sources.split_sizes(builder), split, dataset=PREFIX + root
    )

  return sources.Source(
    name=PREFIX + root,
    num_classes=None,
    get_builder=lambda data_dir: get_builder(root, data_dir),
    split_range=split_range,
    decode=tfds_source.decode_rgb,
    train_area_range=(0.08, 1.0),
    train_flip=True,
    default_eval_preproc='resize_crop_32',
  )
