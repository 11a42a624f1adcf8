"""Published checkpoints in and out: official pickles (safely), timm state dicts, our format.

One module per format, every public name importable from ``nfnets.weights``:

- :mod:`~nfnets.weights.params`: the ``{module: {param: array}}`` tree, flat names, checks
  of names and shapes against a model.
- :mod:`~nfnets.weights.official`: the official ``F*_haiku.npz`` dill pickles, loaded by a
  restricted unpickler that runs no code.
- :mod:`~nfnets.weights.npz`: our own ``.npz`` of flattened names (``allow_pickle=False``).
- :mod:`~nfnets.weights.timm`: timm ``dm_nfnet_f*`` state dicts, ``.safetensors`` or ``.pth``.
- :mod:`~nfnets.weights.loading`: any file -> params for a model, and fine-tuning heads.
"""

from nfnets.weights.loading import (
  detect_format,
  load_for_model,
  load_params,
  load_pretrained_for_finetune,
  replace_classifier,
)
from nfnets.weights.npz import load_npz, save_npz
from nfnets.weights.official import (
  RestrictedUnpickler,
  UnsafePickleError,
  load_official,
  save_official,
  unpickle_safely,
)
from nfnets.weights.params import (
  CLASSIFIER,
  ParamReport,
  Params,
  PathLike,
  as_param_tree,
  check_params,
  compare_params,
  flatten,
  unflatten,
)
from nfnets.weights.timm import (
  from_timm,
  load_safetensors,
  load_timm,
  save_safetensors,
  save_timm,
  to_timm,
)

__all__ = [
  'CLASSIFIER',
  'ParamReport',
  'Params',
  'PathLike',
  'RestrictedUnpickler',
  'UnsafePickleError',
  'as_param_tree',
  'check_params',
  'compare_params',
  'detect_format',
  'flatten',
  'from_timm',
  'load_for_model',
  'load_npz',
  'load_official',
  'load_params',
  'load_pretrained_for_finetune',
  'load_safetensors',
  'load_timm',
  'replace_classifier',
  'save_npz',
  'save_official',
  'save_safetensors',
  'save_timm',
  'to_timm',
  'unflatten',
  'unpickle_safely',
]
