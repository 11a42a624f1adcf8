"""The official ``F*_haiku.npz`` files, loaded without running code from them.

Those files are dill pickles despite their name, and a pickle can run any code when loaded, so
:func:`load_official` rebuilds them with an unpickler that only knows plain containers and
NumPy arrays and refuses every other class by name.
"""

import io
import os
import pickle
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from nfnets.weights.params import Params, PathLike, as_param_tree


class UnsafePickleError(pickle.UnpicklingError):
  """The file asks for a class or function outside the allow-list: it was not loaded."""


def _multiarray():
  try:
    from numpy._core import multiarray  # NumPy >= 2
  except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray
  return multiarray


def _numeric():
  try:
    from numpy._core import numeric  # NumPy >= 2
  except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import numeric
  return numeric


def _safe_create_array(f, args, state, npdict=None):
  """dill's ``_create_array`` restricted to plain ndarrays (no ``__dict__`` payload)."""
  if f is not _multiarray()._reconstruct:
    raise UnsafePickleError(
      f'dill array record with constructor {f!r}; only '
      'numpy _reconstruct is accepted.'
    )
  if npdict:
    raise UnsafePickleError(
      'dill array record carries an instance __dict__ (an ndarray '
      'subclass); refused.'
    )
  array = f(*args)
  array.__setstate__(state)
  return array


def _safe_reconstruct_jax_array(fun, args, arr_state, aval_state):
  """A pickled ``jax.Array`` (``jax._src.array._reconstruct_array``) rebuilt as a NumPy array."""
  del aval_state  # weak_type and friends; meaningless for stored weights.
  return _safe_create_array(fun, args, arr_state)


def _latin1_encode(text, encoding='utf-8', errors='strict'):
  """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only.

  The defaults are ``_codecs.encode``'s own, so a record that leaves out the
  encoding means UTF-8 and is refused like any other codec.
  """
  if (
    encoding.replace('-', '').replace('_', '').lower() != 'latin1'
    or errors != 'strict'
  ):
    raise UnsafePickleError(
      f'_codecs.encode with encoding {encoding!r}; only latin1 is accepted.'
    )
  if not isinstance(text, str):
    raise UnsafePickleError(
      f'_codecs.encode of a {type(text).__name__}; expected str.'
    )
  return text.encode('latin1')


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """Every global a stored param tree may name, mapped to what it is rebuilt with.

  Found by dumping dicts of NumPy arrays (and a jax array) with dill 0.4 and pickle, protocols
  2-5, under NumPy 1 and 2 module names. Anything else, in particular ``builtins``, ``os``,
  ``subprocess``, ``dill._dill._load_type`` or ``_create_function``, is refused.
  """
  multiarray, numeric = _multiarray(), _numeric()
  allowed: dict[tuple[str, str], Any] = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('collections', 'OrderedDict'): dict,
    ('_codecs', 'encode'): _latin1_encode,
    ('dill._dill', '_create_array'): _safe_create_array,
    ('dill.dill', '_create_array'): _safe_create_array,
    ('jax._src.array', '_reconstruct_array'): _safe_reconstruct_jax_array,
  }
  for mod in ('numpy.core', 'numpy._core'):
    allowed[(f'{mod}.multiarray', '_reconstruct')] = multiarray._reconstruct
    allowed[(f'{mod}.multiarray', 'scalar')] = multiarray.scalar
    allowed[(f'{mod}.numeric', '_frombuffer')] = numeric._frombuffer
  return allowed


class RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds only dicts, lists, tuples, scalars and NumPy arrays; refuses any other class."""

  def __init__(self, file: BinaryIO):
    super().__init__(file)
    # Built per unpickler, so that nothing a load does can widen a later one.
    self._allowed = _allowed_globals()

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f'Refusing to load {module}.{name}: a parameter file should only hold dicts '
        'and NumPy arrays, and this pickle asks for another class or function (it may '
        'try to run code). Allowed: '
        f'{sorted(f"{m}.{n}" for m, n in self._allowed)}.'
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafePickleError(
      f'Refusing persistent id {pid!r} in a parameter file.'
    )


def unpickle_safely(file: BinaryIO | bytes) -> Any:
  """Loads a pickle (plain or dill-written) of containers and NumPy arrays, nothing else."""
  if isinstance(file, bytes | bytearray):
    file = io.BytesIO(file)
  return RestrictedUnpickler(file).load()


def load_official(path: PathLike) -> Params:
  """Loads an official ``F*_haiku.npz`` (a dill pickle) without executing code from it.

  Raises:
    UnsafePickleError: the file names any class beyond containers and NumPy arrays.
    ValueError: the file is not a ``{module: {param: array}}`` tree.
  """
  with open(path, 'rb') as f:
    tree = unpickle_safely(f)
  return as_param_tree(tree, os.fspath(path))


def save_official(path: PathLike, params: Mapping, protocol: int = 4) -> None:
  """Writes params as the official files are: a pickle of ``{module: {param: ndarray}}``.

  Uses the standard pickler; dill writes the same records for such a tree apart from routing
  arrays through ``dill._dill._create_array``, which :func:`load_official` also accepts.
  """
  tree = {
    m: {n: np.asarray(v) for n, v in leaves.items()}
    for m, leaves in params.items()
  }
  with open(path, 'wb') as f:
    pickle.dump(tree, f, protocol=protocol)
