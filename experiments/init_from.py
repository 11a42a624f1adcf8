"""A new run from a finished run's parameters or a weights file: `config.init_from`.

The "new data arrived" loop (docs/data.md): `--config.init_from=OLD_WORKDIR` takes the newest
readable checkpoint of OLD_WORKDIR, its EMA parameters by default (`config.init_from_ema`; the
EMA parameters are what that run evaluated), and `--config.init_from=FILE` takes any file
:func:`nfnets.weights.load_params` reads (official `F*_haiku.npz`, our `.npz`, timm
`.safetensors`/`.pth`). Only parameters (and, from a workdir, the model state) move over: the
optimizer state, the step and the schedule start fresh, as in any new run.

Every parameter but the classifier must match the new model by name and shape. The classifier
is kept when its shape matches (same class count) and otherwise stays as the new model
initialised it (N(0, 0.01) for NFNets, the official fine-tuning's initialisation), with a log
line saying so.

The trainer calls :func:`initial_state` only for a run with no checkpoint of its own: a resumed
run restores its own checkpoint and never reads the source again (it may even be gone).

`config.pretrained` is the older name of the same mechanism and is still accepted.
"""

import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import checkpointing, run_info
from nfnets import weights

# The classifier is the top module's `linear` (as optim's default AGC exclusion assumes):
# `NFNet/~/linear`, or `<top>/linear` when the model builds it inside `__call__`.
_CLASSIFIER = re.compile(r'^[^/]+/(~/)?linear$')
# A saved leaf path, e.g. `.ema_params['NFNet/~/linear']['w']`.
_LEAF = re.compile(r"^\.(\w+)\['([^']*)'\]\['([^']*)'\]$")


def source_spec(config: ml_collections.ConfigDict) -> str | None:
  """The run or file to start from (`init_from`, or its alias `pretrained`), or None."""
  init_from = config.get('init_from') or ''
  pretrained = config.get('pretrained') or ''
  if init_from and pretrained and init_from != pretrained:
    raise ValueError(
      f'config.init_from={init_from!r} and config.pretrained={pretrained!r} '
      'disagree; pretrained is the older name of init_from: set only '
      'init_from.'
    )
  spec = init_from or pretrained
  required = config.get('require_init_from') or config.get('require_pretrained')
  if not spec and required:
    raise ValueError(
      f'Config {config.name!r} starts from trained weights: pass '
      "--config.init_from=WORKDIR_OR_WEIGHTS (a finished run's workdir, or a "
      'weights file such as F0_haiku.npz).'
    )
  return spec or None


def classifier_module(params: dict) -> str:
  """The name of the classifier module in a Haiku params dict."""
  names = [m for m in params if _CLASSIFIER.match(m)]
  if len(names) != 1:
    raise ValueError(
      'Cannot tell the classifier of this model: expected one top-level '
      f'`linear` module, found {names or "none"}.'
    )
  return names[0]


def _nest(leaves: dict[str, np.ndarray], attribute: str) -> dict:
  """`{path: array}` of a saved TrainState -> the `{module: {name: array}}` of `attribute`."""
  tree: dict = {}
  for path, value in leaves.items():
    match = _LEAF.match(path)
    if match and match.group(1) == attribute:
      tree.setdefault(match.group(2), {})[match.group(3)] = value
  return tree


def load_run(workdir: str, ema: bool = True) -> tuple[dict, dict, int]:
  """(params, model_state, step) of the newest readable checkpoint of a training workdir.

  ``ema``: the EMA parameters, unless the run trained without EMA (then they were never
  updated, and the raw parameters are returned with a log line).
  """
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f'{workdir} has no checkpoints/ directory: is it the --workdir of a '
      'training run?'
    )
  info = run_info.read(workdir) or {}
  trained_ema = info.get('config', {}).get('optimizer', {}).get('use_ema', True)
  if ema and not trained_ema:
    logging.warning(
      '%s trained without EMA; using its raw parameters.', workdir
    )
    ema = False
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=None, identity={})
  try:
    read = ckpt.restore_leaves()
  finally:
    ckpt.close()
  if read is None:
    raise ValueError(f'No readable checkpoint under {directory}.')
  meta, leaves = read
  params = _nest(leaves, 'ema_params' if ema else 'params')
  if not params:
    raise ValueError(
      f'The checkpoint under {directory} holds no parameters (format '
      f'version {meta.get("format_version")}).'
    )
  return params, _nest(leaves, 'model_state'), int(meta['step'])


def load_source(spec: str, ema: bool = True) -> tuple[dict, dict | None, str]:
  """(params, model_state or None, description) of a workdir or a weights file."""
  if os.path.isdir(spec):
    params, model_state, step = load_run(spec, ema)
    which = 'EMA' if ema else 'raw'
    return params, model_state, f'run {spec} (step {step}, {which} params)'
  if os.path.isfile(spec):
    return weights.load_params(spec), None, f'weights file {spec}'
  raise FileNotFoundError(
    f'config.init_from={spec!r} is neither a training workdir nor a weights '
    'file.'
  )


def _same_shapes(a: dict, b: dict) -> bool:
  flat_a, flat_b = weights.flatten(a), weights.flatten(b)
  return flat_a.keys() == flat_b.keys() and all(
    np.shape(flat_a[k]) == np.shape(flat_b[k]) for k in flat_a
  )


def merge(
  source: dict, init_params: dict, *, what: str, model_name: str
) -> dict:
  """``init_params`` with every tensor from ``source``; the classifier only if it fits."""
  classifier = classifier_module(init_params)
  report = weights.compare_params(source, init_params)
  bad = [
    n for n, _, _ in report.mismatched if not n.startswith(classifier + '/')
  ]
  if report.missing or report.unexpected or bad:
    raise ValueError(
      f'{what} does not fit {model_name} apart from the classifier: {report}.'
    )
  params = {
    m: {
      n: np.asarray(source[m][n], np.asarray(v).dtype)
      for n, v in leaves.items()
    }
    for m, leaves in init_params.items()
  }
  if not _same_shapes(
    {classifier: source[classifier]}, {classifier: init_params[classifier]}
  ):
    theirs = np.shape(source[classifier]['w'])
    ours = np.shape(init_params[classifier]['w'])
    logging.info(
      'init_from: the classifier of %s is %s, this run needs %s (another '
      'class count): re-initialised as the model initialises it.',
      what,
      theirs,
      ours,
    )
    params[classifier] = {
      n: np.asarray(v) for n, v in init_params[classifier].items()
    }
  return params


def initial_state(
  state: Any, config: ml_collections.ConfigDict, model: Any, optimizer: Any
) -> Any:
  """The first TrainState of a new run: ``state`` (a fresh init) or, with `init_from`, the
  source's parameters, a fresh optimizer state and EMA params equal to the parameters."""
  spec = source_spec(config)
  if spec is None:
    return state
  ema = config.get('init_from_ema', True)
  source, source_state, what = load_source(spec, ema)
  params = merge(
    source, jax.device_get(state.params), what=what, model_name=model.name
  )
  model_state = state.model_state
  if source_state and _same_shapes(source_state, model_state):
    model_state = source_state
  logging.info(
    'init_from: %d tensors from %s; fresh optimizer state and schedule.',
    len(jax.tree_util.tree_leaves(params)),
    what,
  )
  return state._replace(
    params=params,
    model_state=model_state,
    opt_state=jax.device_get(optimizer.init(params)),
    ema_params=jax.tree_util.tree_map(np.copy, params),
  )
