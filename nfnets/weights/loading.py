"""Any supported weight file -> params, checked against a model; fine-tuning heads."""

import os
from collections.abc import Mapping

import jax
import numpy as np

from nfnets.weights.npz import load_npz
from nfnets.weights.official import load_official
from nfnets.weights.params import (
  CLASSIFIER,
  Params,
  PathLike,
  check_params,
  compare_params,
)
from nfnets.weights.timm import load_timm


def detect_format(path: PathLike) -> str:
  """'npz' (ours), 'official' (a pickle), 'safetensors' or 'pth', from the file's content."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(8)
  if path.endswith('.safetensors'):
    return 'safetensors'
  if path.endswith(('.pth', '.pt', '.bin')):
    return 'pth'
  if head[:2] == b'PK':
    return 'npz'  # a zip: np.savez (official files are pickles despite '.npz')
  if head[:1] == b'\x80':
    return 'official'
  raise ValueError(
    f'Cannot tell the format of {path!r}; accepted: our .npz, an official '
    'F*_haiku.npz pickle, a timm .safetensors or .pth.'
  )


def load_params(path: PathLike) -> Params:
  """Loads params from any supported file, without checking them against a model."""
  fmt = detect_format(path)
  if fmt == 'npz':
    return load_npz(path)
  if fmt == 'official':
    return load_official(path)
  return load_timm(path)


def load_for_model(
  path: PathLike, model, resolution: int | None = None
) -> Params:
  """Loads params from any supported file and checks every name and shape against ``model``.

  ``model`` is a :class:`nfnets.Model`; raises a ValueError listing the missing, unexpected
  and mis-shaped names when the file was made for another architecture or class count.
  """
  params = load_params(path)
  check_params(params, model.param_shapes(resolution), source=os.fspath(path))
  return {
    m: {n: np.asarray(v, np.float32) for n, v in leaves.items()}
    for m, leaves in params.items()
  }


def replace_classifier(
  params: Mapping, num_classes: int, rng: jax.Array, stddev: float = 0.01
) -> Params:
  """Returns ``params`` with a fresh ``num_classes`` classifier (official init N(0, 0.01))."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(
      f'num_classes must be a positive int, got {num_classes!r}.'
    )
  if CLASSIFIER not in params:
    raise ValueError(f'params have no classifier module {CLASSIFIER!r}.')
  in_features = np.shape(params[CLASSIFIER]['w'])[0]
  out = {m: dict(leaves) for m, leaves in params.items()}
  w = jax.random.normal(rng, (in_features, num_classes), np.float32) * stddev
  out[CLASSIFIER] = {
    'w': np.asarray(w),
    'b': np.zeros((num_classes,), np.float32),
  }
  return out


def load_pretrained_for_finetune(
  path: PathLike,
  model,
  rng: jax.Array | None = None,
  resolution: int | None = None,
) -> Params:
  """Published (or our) weights for ``model``, with a new classifier if its class count differs.

  Every parameter but the classifier must match ``model`` by name and shape.
  """
  params = load_params(path)
  expected = model.param_shapes(resolution)
  report = compare_params(params, expected)
  bad = [
    n for n, _, _ in report.mismatched if not n.startswith(CLASSIFIER + '/')
  ]
  if report.missing or report.unexpected or bad:
    raise ValueError(
      f'{os.fspath(path)} does not fit {model.name} apart from the '
      f'classifier: {report}.'
    )
  params = {
    m: {n: np.asarray(v, np.float32) for n, v in leaves.items()}
    for m, leaves in params.items()
  }
  if np.shape(params[CLASSIFIER]['w']) != tuple(
    expected[CLASSIFIER]['w'].shape
  ):
    rng = jax.random.PRNGKey(0) if rng is None else rng
    params = replace_classifier(params, model.num_classes, rng)
  return params
