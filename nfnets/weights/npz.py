"""Our own weight format: a NumPy ``.npz`` of flattened ``'module/param'`` arrays.

Loaded with ``allow_pickle=False``, so a file can hold only arrays.
"""

import os
from collections.abc import Mapping

import jax
import numpy as np

from nfnets.weights.params import (
  Params,
  PathLike,
  as_param_tree,
  flatten,
  unflatten,
)


def save_npz(path: PathLike, params: Mapping) -> None:
  """Saves params as an uncompressed ``.npz`` of flattened ``'module/param'`` arrays."""
  np.savez(
    path,
    **{k: np.asarray(v) for k, v in flatten(jax.device_get(params)).items()},
  )


def load_npz(path: PathLike) -> Params:
  """Loads :func:`save_npz` output; never unpickles (``allow_pickle=False``)."""
  with np.load(path, allow_pickle=False) as data:
    return as_param_tree(
      unflatten({k: data[k] for k in data.files}), os.fspath(path)
    )
