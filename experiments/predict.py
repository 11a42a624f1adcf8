r"""Classifies image files with an NFNet checkpoint or the published weights; prints the top-k.

    python -m experiments.predict --model=nfnet_f0 --weights=F0_haiku.npz cat.jpg dog.png

``--weights`` takes any file :func:`nfnets.weights.load_params` reads: an official
``F*_haiku.npz`` (loaded without unpickling code), our ``.npz``, or a timm ``.safetensors`` /
``.pth``. Images are eval-preprocessed exactly as the evaluation pipeline does
(``data.preprocess.eval_image``: resize to test size + 32, centre crop, ImageNet mean/std) at the
variant's test resolution. For 1000-class models the names are the ImageNet synset ids and
readable names that TFDS ships (``n01440764 tench, Tinca tinca`` ...); ``--class_names`` takes
a file of names instead (one per line, in class order).

A training run's workdir holds all of that (experiments/run_info.py records its config and the
class names of the dataset it was trained on):

    python -m experiments.predict --workdir=/tmp/run cat.jpg dog.png

loads the run's newest checkpoint (EMA params unless ``--use_ema=false``) and prints the names
of the run's classes (ImageNet's synset ids and readable names for an ImageNet run) at the run's
eval resolution and preprocessing.
"""

import importlib.resources
import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from PIL import Image

import nfnets
from data import pipeline, preprocess
from experiments import init_from, run_info
from nfnets import weights


def load_image(path: str) -> np.ndarray:
  """Decodes a JPEG/PNG (any mode) to uint8 RGB ``[H, W, 3]``."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'), np.uint8)


def imagenet_class_ids() -> list[str]:
  """The 1000 ImageNet synset ids in TFDS ``imagenet2012`` label order (shipped with TFDS)."""
  root = importlib.resources.files('tensorflow_datasets')
  for rel in (
    'datasets/imagenet2012/labels.txt',
    'image_classification/imagenet2012_labels.txt',
  ):
    path = root.joinpath(rel)
    if path.is_file():
      return path.read_text().split()
  raise FileNotFoundError(
    'The imagenet2012 labels.txt was not found in tensorflow_datasets.'
  )


def imagenet_readable_names() -> list[str]:
  """Readable ImageNet class names in the same (sorted-synset) order, also shipped by TFDS."""
  from tensorflow_datasets.datasets.siscore import (
    labels,
  )  # a 1000-name list, class order

  names = list(labels.IMAGENET_LABELS_LIST)
  if len(names) != 1000:
    raise ValueError(
      f'Expected 1000 ImageNet names in TFDS, found {len(names)}.'
    )
  return names


def class_names(num_classes: int, names_file: str | None = None) -> list[str]:
  """Printable class names: synset ids (+ readable names from ``names_file``) or indices."""
  if names_file:
    with open(names_file) as f:
      rows = [line.rstrip('\n') for line in f if line.strip()]
    if len(rows) != num_classes:
      raise ValueError(
        f'{names_file} has {len(rows)} names; the model has {num_classes} '
        'classes.'
      )
    return rows
  if num_classes == 1000:
    return [
      f'{wnid} {name}'
      for wnid, name in zip(
        imagenet_class_ids(), imagenet_readable_names(), strict=True
      )
    ]
  return [f'class {i}' for i in range(num_classes)]


def load_model(
  model_name: str, weights_path: str, **overrides
) -> tuple[nfnets.Model, dict]:
  """The model ``model_name`` with the class count of ``weights_path``, and its checked params."""
  params = weights.load_params(weights_path)
  if weights.CLASSIFIER not in params:
    raise ValueError(
      f'{weights_path} has no classifier {weights.CLASSIFIER!r}; is it an '
      'NFNet checkpoint?'
    )
  num_classes = int(np.shape(params[weights.CLASSIFIER]['w'])[1])
  model = nfnets.create_model(model_name, num_classes=num_classes, **overrides)
  weights.check_params(params, model.param_shapes(), source=weights_path)
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  return model, params


def preprocess_images(
  images: Sequence[np.ndarray],
  image_size: int,
  eval_preproc: str = 'resize_crop_32',
) -> np.ndarray:
  """uint8 images -> the normalised NHWC float32 batch the evaluation pipeline would feed."""
  return np.stack(
    [preprocess.eval_image(im, image_size, eval_preproc) for im in images]
  )


_JITTED: dict[str, object] = {}


def jitted_apply(model: nfnets.Model):
  """``jax.jit(model.apply)``, one per distinct model, so repeated calls reuse the compile."""
  key = repr(model)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(model.apply, static_argnums=(4,))
  return _JITTED[key]


def predict(
  model: nfnets.Model,
  params,
  batch: np.ndarray,
  top_k: int = 5,
  model_state=None,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(indices, probabilities)`` of the ``top_k`` classes, each ``[N, top_k]``."""
  if not 1 <= top_k <= model.num_classes:
    raise ValueError(f'top_k must be in [1, {model.num_classes}], got {top_k}.')
  logits = np.asarray(
    jitted_apply(model)(
      params, model_state or {}, jax.random.PRNGKey(0), batch, False
    )[0]['logits']
  )
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  order = np.argsort(-logits, axis=-1, kind='stable')[:, :top_k]
  return order, np.take_along_axis(probs, order, axis=-1)


def run(
  model_name: str,
  weights_path: str,
  image_paths: Sequence[str],
  image_size: int | None = None,
  eval_preproc: str = 'resize_crop_32',
  top_k: int = 5,
  names_file: str | None = None,
  **overrides,
) -> list[list[tuple[str, float]]]:
  """Classifies ``image_paths``; prints and returns ``[(name, probability)] * top_k`` each."""
  if not image_paths:
    raise ValueError(
      'No image files given; pass JPEG or PNG paths as arguments.'
    )
  model, params = load_model(model_name, weights_path, **overrides)
  size = image_size or model.test_imsize
  logging.info(
    '%s at %dx%d (%s), %d classes',
    model.name,
    size,
    size,
    eval_preproc,
    model.num_classes,
  )
  names = class_names(model.num_classes, names_file)
  return _classify(
    model, params, {}, names, image_paths, size, eval_preproc, top_k
  )


def run_class_names(info: dict) -> list[str]:
  """A run's class names; an ImageNet run's get the readable names next to the synset ids."""
  names = list(info['class_names'])
  if len(names) == 1000 and names == imagenet_class_ids():
    return class_names(1000)
  return names


def run_workdir(
  workdir: str,
  image_paths: Sequence[str],
  top_k: int = 5,
  use_ema: bool | None = None,
) -> list[list[tuple[str, float]]]:
  """Classifies ``image_paths`` with the newest checkpoint of the training run in ``workdir``
  and the class names of the dataset it was trained on; prints and returns the top-k."""
  if not image_paths:
    raise ValueError(
      'No image files given; pass JPEG or PNG paths as arguments.'
    )
  config = run_info.read_config(workdir)
  info = run_info.read(workdir)
  ema = config.optimizer.use_ema if use_ema is None else use_ema
  params, model_state, step = init_from.load_run(workdir, ema)
  model = nfnets.create_model(
    config.model,
    num_classes=info['num_classes'],
    **config.model_kwargs.to_dict(),
  )
  size = config.eval_imsize or model.test_imsize
  weights.check_params(
    params, model.param_shapes(size), source=f'{workdir} (step {step})'
  )
  eval_preproc = config.eval_preproc or pipeline.default_eval_preproc(
    info['dataset']
  )
  logging.info(
    '%s step %d (%s params) at %dx%d (%s), %d classes of %s',
    workdir,
    step,
    'EMA' if ema else 'raw',
    size,
    size,
    eval_preproc,
    model.num_classes,
    info['dataset'],
  )
  names = run_class_names(info)
  # A run on fewer than five classes prints them all.
  top_k = min(top_k, model.num_classes)
  return _classify(
    model, params, model_state, names, image_paths, size, eval_preproc, top_k
  )


def _classify(
  model, params, model_state, names, image_paths, size, eval_preproc, top_k
) -> list[list[tuple[str, float]]]:
  batch = preprocess_images(
    [load_image(p) for p in image_paths], size, eval_preproc
  )
  indices, probs = predict(model, params, batch, top_k, model_state)
  results = []
  for path, idx, prob in zip(image_paths, indices, probs):
    print(os.path.basename(path))
    rows = [(names[i], float(p)) for i, p in zip(idx, prob)]
    for rank, (name, p) in enumerate(rows, 1):
      print(f'  {rank}. {name:<40s} {p:.4f}')
    results.append(rows)
  return results


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module never claims flag names.
  flags.DEFINE_string(
    'model', 'nfnet_f0', 'Registered model name (nfnet_f0 ... nfnet_f7_plus).'
  )
  flags.DEFINE_string(
    'weights',
    None,
    'Official F*_haiku.npz, our .npz, or timm .safetensors/.pth.',
  )
  flags.DEFINE_string(
    'workdir',
    None,
    "A training run's workdir: its newest checkpoint, config and class names "
    '(instead of --weights and --model).',
  )
  flags.DEFINE_bool(
    'use_ema',
    None,
    "With --workdir: EMA params (default: the run's config.optimizer.use_ema).",
  )
  flags.DEFINE_integer(
    'image_size', None, "Input size; default the variant's test size."
  )
  flags.DEFINE_string(
    'eval_preproc',
    'resize_crop_32',
    'resize_crop_32 | crop_resize | resize | resize_crop_<pixels or fraction>.',
  )
  flags.DEFINE_integer('top_k', 5, 'Classes to print per image.')
  flags.DEFINE_string(
    'class_names', None, 'Optional file of class names (or "wnid name").'
  )


def main(argv: Sequence[str]) -> None:
  f = flags.FLAGS
  if bool(f.weights) == bool(f.workdir):
    raise app.UsageError('Pass exactly one of --weights=FILE or --workdir=DIR.')
  if f.workdir:
    run_workdir(f.workdir, argv[1:], top_k=f.top_k, use_ema=f.use_ema)
    return
  run(
    f.model,
    f.weights,
    argv[1:],
    image_size=f.image_size,
    eval_preproc=f.eval_preproc,
    top_k=f.top_k,
    names_file=f.class_names,
  )


if __name__ == '__main__':
  _define_flags()
  app.run(main)
