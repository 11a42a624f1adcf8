"""Published checkpoints in and out: official pickles (safely), timm state dicts, our format.

Three layouts of the same numbers:

- Haiku params, ``{'NFNet/~/nf_block_3/~/conv1b': {'w': HWIO, 'gain': (O,), 'bias': (O,)}}``,
  what our models take and what the official ``F*_haiku.npz`` files hold. Those files are dill
  pickles despite their name, and a pickle can run any code when loaded, so
  :func:`load_official` rebuilds them with an unpickler that only knows plain containers and
  NumPy arrays and refuses every other class by name.
- Our own file format: a NumPy ``.npz`` of flattened ``'module/param'`` names, loaded with
  ``allow_pickle=False`` (:func:`save_npz`, :func:`load_npz`).
- timm's ``dm_nfnet_f*`` state dicts (PyTorch layout: OIHW convs with gains shaped (O,1,1,1),
  transposed linears), from NumPy dicts or ``.safetensors`` / ``.pth`` files
  (:func:`to_timm`, :func:`from_timm`). Safetensors is read and written here in NumPy; torch is
  imported only for ``.pth`` files.
"""

import dataclasses
import io
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import jax
import numpy as np

from nfnets import efficientnet_timm

Params = dict[str, dict[str, np.ndarray]]
PathLike = str | os.PathLike

CLASSIFIER = 'NFNet/~/linear'
_PREFIX = 'NFNet/~/'


# ---------------------------------------------------------------------------------------------
# Restricted unpickling of the official files.
# ---------------------------------------------------------------------------------------------


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


def _latin1_encode(text, encoding='latin1', errors='strict'):
  """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only."""
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

  _ALLOWED = None

  def find_class(self, module: str, name: str) -> Any:
    if RestrictedUnpickler._ALLOWED is None:
      RestrictedUnpickler._ALLOWED = _allowed_globals()
    try:
      return RestrictedUnpickler._ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f'Refusing to load {module}.{name}: a parameter file should only hold dicts '
        'and NumPy arrays, and this pickle asks for another class or function (it may '
        'try to run code). Allowed: '
        f'{sorted(f"{m}.{n}" for m, n in RestrictedUnpickler._ALLOWED)}.'
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


def _as_param_tree(tree: Any, source: str) -> Params:
  """Validates a loaded ``{module: {param: array}}`` tree; returns float32-or-native ndarrays."""
  if not isinstance(tree, Mapping):
    raise ValueError(
      f'{source}: expected a dict of modules, got {type(tree).__name__}.'
    )
  params: Params = {}
  for module, leaves in tree.items():
    if not isinstance(module, str) or not isinstance(leaves, Mapping):
      raise ValueError(
        f'{source}: expected {{module name: {{param name: array}}}}, got '
        f'{module!r}: {type(leaves).__name__}.'
      )
    params[module] = {}
    for name, value in leaves.items():
      array = np.asarray(value)
      if not isinstance(name, str) or array.dtype.kind not in 'fiub':
        raise ValueError(
          f'{source}: {module}/{name} is not a numeric array '
          f'(dtype {array.dtype}).'
        )
      params[module][name] = array
  return params


def load_official(path: PathLike) -> Params:
  """Loads an official ``F*_haiku.npz`` (a dill pickle) without executing code from it.

  Raises:
    UnsafePickleError: the file names any class beyond containers and NumPy arrays.
    ValueError: the file is not a ``{module: {param: array}}`` tree.
  """
  with open(path, 'rb') as f:
    tree = unpickle_safely(f)
  return _as_param_tree(tree, os.fspath(path))


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


# ---------------------------------------------------------------------------------------------
# Checking names and shapes against a model.
# ---------------------------------------------------------------------------------------------


def flatten(params: Mapping) -> dict[str, Any]:
  """``{module: {param: x}}`` -> ``{'module/param': x}`` (module names contain '/')."""
  return {
    f'{m}/{n}': v for m, leaves in params.items() for n, v in leaves.items()
  }


def unflatten(flat: Mapping[str, Any]) -> Params:
  """Inverse of :func:`flatten`: splits each name at its last '/'."""
  params: Params = {}
  for key, value in flat.items():
    module, sep, name = key.rpartition('/')
    if not sep:
      raise ValueError(
        f'Flat parameter name {key!r} has no module part (expected '
        "'module/param')."
      )
    params.setdefault(module, {})[name] = value
  return params


@dataclasses.dataclass(frozen=True)
class ParamReport:
  """How a parameter tree differs from the one a model expects."""

  missing: tuple[str, ...]
  unexpected: tuple[str, ...]
  mismatched: tuple[
    tuple[str, tuple[int, ...], tuple[int, ...]], ...
  ]  # name, got, expected

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def __str__(self) -> str:
    if self.ok:
      return 'all names and shapes match'

    def listed(items: Sequence[str], limit: int = 12) -> str:
      more = (
        f', ... and {len(items) - limit} more' if len(items) > limit else ''
      )
      return ', '.join(items[:limit]) + more

    lines = []
    if self.missing:
      lines.append(f'{len(self.missing)} missing: {listed(self.missing)}')
    if self.unexpected:
      lines.append(
        f'{len(self.unexpected)} unexpected: {listed(self.unexpected)}'
      )
    if self.mismatched:
      lines.append(
        f'{len(self.mismatched)} mis-shaped: '
        + listed(
          [f'{n} has {g}, model expects {e}' for n, g, e in self.mismatched]
        )
      )
    return '; '.join(lines)


def compare_params(params: Mapping, expected: Mapping) -> ParamReport:
  """Compares names and shapes of ``params`` with ``expected`` (arrays or ShapeDtypeStructs)."""
  got, want = flatten(params), flatten(expected)
  mismatched = tuple(
    (k, tuple(np.shape(got[k])), tuple(want[k].shape))
    for k in sorted(got.keys() & want.keys())
    if tuple(np.shape(got[k])) != tuple(want[k].shape)
  )
  return ParamReport(
    missing=tuple(sorted(want.keys() - got.keys())),
    unexpected=tuple(sorted(got.keys() - want.keys())),
    mismatched=mismatched,
  )


def check_params(
  params: Mapping, expected: Mapping, source: str = 'params'
) -> None:
  """Raises a ValueError listing every missing, unexpected and mis-shaped parameter."""
  report = compare_params(params, expected)
  if not report.ok:
    raise ValueError(f'{source} does not fit the model: {report}.')


# ---------------------------------------------------------------------------------------------
# Our own format.
# ---------------------------------------------------------------------------------------------


def save_npz(path: PathLike, params: Mapping) -> None:
  """Saves params as an uncompressed ``.npz`` of flattened ``'module/param'`` arrays."""
  np.savez(
    path,
    **{k: np.asarray(v) for k, v in flatten(jax.device_get(params)).items()},
  )


def load_npz(path: PathLike) -> Params:
  """Loads :func:`save_npz` output; never unpickles (``allow_pickle=False``)."""
  with np.load(path, allow_pickle=False) as data:
    return _as_param_tree(
      unflatten({k: data[k] for k in data.files}), os.fspath(path)
    )


# ---------------------------------------------------------------------------------------------
# timm <-> Haiku.
# ---------------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r'^nf_block(?:_(\d+))?$')
# Our module (relative to a block) -> timm submodule, and the kind of tensor conversion.
_BLOCK_CONVS = {
  'conv0': 'conv1',
  'conv1': 'conv2',
  'conv1b': 'conv2b',
  'conv2': 'conv3',
  'conv_shortcut': 'downsample.conv',
}
_BLOCK_LINEARS = {
  'squeeze_excite/~/linear': 'attn_last.fc1',
  'squeeze_excite/~/linear_1': 'attn_last.fc2',
}


def _block_index(name: str) -> int:
  return int(_BLOCK_RE.match(name).group(1) or 0)


def _stage_starts(
  params: Mapping, depths: Sequence[int] | None
) -> list[tuple[int, int]]:
  """(stage, index-in-stage) of each block, in block order.

  Without ``depths`` a stage starts at each block that has a ``conv_shortcut``: every NFNet
  stage opens with a strided or widening block, and no other block has one.
  """
  blocks = sorted(
    {
      _block_index(m[len(_PREFIX) :].split('/')[0])
      for m in params
      if m.startswith(_PREFIX)
      and _BLOCK_RE.match(m[len(_PREFIX) :].split('/')[0])
    }
  )
  if blocks != list(range(len(blocks))):
    raise ValueError(f'Block indices are not contiguous from 0: {blocks}.')
  if depths is None:
    firsts = [
      i
      for i in blocks
      if f'{_PREFIX}{_block_name(i)}/~/conv_shortcut' in params
    ]
    if not firsts or firsts[0] != 0:
      raise ValueError(
        'Cannot infer stage depths (block 0 has no conv_shortcut); pass '
        'depths=.'
      )
    bounds = firsts + [len(blocks)]
    depths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
  if sum(depths) != len(blocks):
    raise ValueError(
      f'depths {tuple(depths)} sum to {sum(depths)}, but the params have '
      f'{len(blocks)} blocks.'
    )
  return [(s, b) for s, d in enumerate(depths) for b in range(d)]


def _block_name(index: int) -> str:
  return 'nf_block' if index == 0 else f'nf_block_{index}'


def _conv_to_timm(leaves: Mapping, prefix: str) -> dict[str, np.ndarray]:
  w = np.asarray(leaves['w'])
  return {
    f'{prefix}.weight': np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
    f'{prefix}.gain': np.asarray(leaves['gain']).reshape(-1, 1, 1, 1),
    f'{prefix}.bias': np.asarray(leaves['bias']),
  }


def _conv_from_timm(sd: Mapping, prefix: str) -> dict[str, np.ndarray]:
  return {
    'w': np.ascontiguousarray(
      np.asarray(sd[f'{prefix}.weight']).transpose(2, 3, 1, 0)
    ),
    'gain': np.asarray(sd[f'{prefix}.gain']).reshape(-1),
    'bias': np.asarray(sd[f'{prefix}.bias']),
  }


def _timm_names(
  params: Mapping, depths: Sequence[int] | None
) -> dict[str, tuple[str, str]]:
  """Our module name -> (timm prefix, kind in {'conv', 'se', 'fc', 'skip'})."""
  names = {}
  for i in range(4):
    names[f'{_PREFIX}stem_conv{i}'] = (f'stem.conv{i + 1}', 'conv')
  for i, (stage, b) in enumerate(_stage_starts(params, depths)):
    ours, theirs = f'{_PREFIX}{_block_name(i)}', f'stages.{stage}.{b}'
    names[ours] = (f'{theirs}.skipinit_gain', 'skip')
    for conv, tconv in _BLOCK_CONVS.items():
      names[f'{ours}/~/{conv}'] = (f'{theirs}.{tconv}', 'conv')
    for lin, tlin in _BLOCK_LINEARS.items():
      names[f'{ours}/~/{lin}'] = (f'{theirs}.{tlin}', 'se')
  names[f'{_PREFIX}final_conv'] = ('final_conv', 'conv')
  names[CLASSIFIER] = ('head.fc', 'fc')
  return names


def to_timm(
  params: Mapping, depths: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
  """Our NFNet params -> a timm ``dm_nfnet_f*`` state dict of NumPy arrays.

  ``depths`` (blocks per stage) is inferred from where the projection shortcuts are.
  """
  params = jax.device_get(params)
  names = _timm_names(params, depths)
  unknown = sorted(set(params) - set(names))
  if unknown:
    raise ValueError(f'No timm name for modules: {unknown}.')
  sd: dict[str, np.ndarray] = {}
  for module, leaves in params.items():
    prefix, kind = names[module]
    if kind == 'conv':
      sd.update(_conv_to_timm(leaves, prefix))
    elif kind == 'skip':
      sd[prefix] = np.asarray(leaves['skip_gain']).reshape(())
    elif kind == 'se':  # (in, out) linear -> (out, in, 1, 1) 1x1 conv
      sd[f'{prefix}.weight'] = np.ascontiguousarray(
        np.asarray(leaves['w']).T[:, :, None, None]
      )
      sd[f'{prefix}.bias'] = np.asarray(leaves['b'])
    else:  # 'fc': (in, out) -> torch Linear (out, in)
      sd[f'{prefix}.weight'] = np.ascontiguousarray(np.asarray(leaves['w']).T)
      sd[f'{prefix}.bias'] = np.asarray(leaves['b'])
  return sd


def _timm_depths(state_dict: Mapping) -> list[int]:
  blocks: dict[int, set[int]] = {}
  for key in state_dict:
    m = re.match(r'^stages\.(\d+)\.(\d+)\.', key)
    if m:
      blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  if sorted(blocks) != list(range(len(blocks))) or not blocks:
    raise ValueError(
      f'No contiguous timm stages.S.B.* keys found (stages {sorted(blocks)}).'
    )
  return [len(blocks[s]) for s in range(len(blocks))]


def from_timm(state_dict: Mapping) -> Params:
  """A timm ``dm_nfnet_f*`` state dict (NumPy or torch tensors) -> our NFNet params.

  Every key must be used exactly once; leftovers (e.g. a different architecture) raise.
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  depths = _timm_depths(sd)
  skeleton: dict[str, dict] = {
    f'{_PREFIX}{_block_name(i)}/~/conv_shortcut': {}
    for i in np.cumsum([0] + depths[:-1])
  }
  for i in range(sum(depths)):
    skeleton[f'{_PREFIX}{_block_name(i)}'] = {}
  names = _timm_names(skeleton, depths)
  params: Params = {}
  used: set[str] = set()
  for module, (prefix, kind) in names.items():
    if kind == 'conv':
      if f'{prefix}.weight' not in sd:
        continue  # e.g. blocks without a downsample conv
      params[module] = _conv_from_timm(sd, prefix)
      used.update(f'{prefix}.{n}' for n in ('weight', 'gain', 'bias'))
    elif kind == 'skip':
      params[module] = {'skip_gain': sd[prefix].reshape(()).astype(np.float32)}
      used.add(prefix)
    elif kind == 'se':
      params[module] = {
        'w': np.ascontiguousarray(sd[f'{prefix}.weight'][:, :, 0, 0].T),
        'b': sd[f'{prefix}.bias'],
      }
      used.update((f'{prefix}.weight', f'{prefix}.bias'))
    else:
      params[module] = {
        'w': np.ascontiguousarray(sd[f'{prefix}.weight'].T),
        'b': sd[f'{prefix}.bias'],
      }
      used.update((f'{prefix}.weight', f'{prefix}.bias'))
  leftover = sorted(set(sd) - used)
  if leftover:
    raise ValueError(
      f'timm state dict has keys with no NFNet counterpart: {leftover}.'
    )
  return params


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor, without importing torch
    return value.detach().cpu().numpy()
  return np.asarray(value)


# Safetensors, read and written with NumPy alone (format: 8-byte little-endian header size,
# a JSON header of {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes).
_ST_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def save_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes a ``.safetensors`` file (readable by ``safetensors.torch.load_file``)."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _ST_NAMES:
      raise ValueError(
        f'{name}: dtype {array.dtype} not storable; accepted: '
        f'{sorted(str(d) for d in _ST_NAMES)}.'
      )
    data = array.astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
    header[name] = {
      'dtype': _ST_NAMES[array.dtype],
      'shape': list(array.shape),
      'data_offsets': [offset, offset + len(data)],
    }
    chunks.append(data)
    offset += len(data)
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)
  with open(path, 'wb') as f:
    f.write(len(blob).to_bytes(8, 'little'))
    f.write(blob)
    for data in chunks:
      f.write(data)


def load_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into NumPy arrays (no torch, no code execution)."""
  with open(path, 'rb') as f:
    raw = f.read()
  size = int.from_bytes(raw[:8], 'little')
  if size <= 0 or size > len(raw) - 8:
    raise ValueError(
      f'{os.fspath(path)} is not a safetensors file (header size {size}).'
    )
  header = json.loads(raw[8 : 8 + size])
  body = memoryview(raw)[8 + size :]
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _ST_DTYPES:
      raise ValueError(
        f'{name}: safetensors dtype {info["dtype"]} not supported; '
        f'accepted: {sorted(_ST_DTYPES)}.'
      )
    start, end = info['data_offsets']
    dtype = np.dtype(_ST_DTYPES[info['dtype']]).newbyteorder('<')
    out[name] = (
      np.frombuffer(body[start:end], dtype=dtype).reshape(info['shape']).copy()
    )
  return out


def _import_torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      'Reading or writing .pth files needs PyTorch (an optional extra: '
      '`pip install torch`); .safetensors and .npz files do not.'
    ) from e
  return torch


def _read_timm(path: str) -> Mapping[str, Any]:
  if path.endswith('.safetensors'):
    return load_safetensors(path)
  if path.endswith(('.pth', '.pt', '.bin')):
    torch = _import_torch()
    sd = torch.load(path, map_location='cpu', weights_only=True)
    if 'state_dict' in sd and isinstance(sd['state_dict'], Mapping):
      sd = sd['state_dict']
    return sd
  raise ValueError(
    f'Unknown timm checkpoint extension for {path!r}; accepted: .safetensors, '
    '.pth, .pt, .bin.'
  )


def load_timm(path: PathLike, with_state: bool = False):
  """Reads a timm checkpoint (``.safetensors`` or ``.pth``) as our params.

  ``dm_nfnet_f*`` and ``tf_efficientnet_b*`` state dicts are told apart by their key names.
  With ``with_state`` returns ``(params, state)``: an EfficientNet's BatchNorm statistics, or
  an empty state for an NFNet. Without it, an EfficientNet's statistics are dropped.
  """
  sd = _read_timm(os.fspath(path))
  if efficientnet_timm.is_timm_efficientnet(sd):
    params, state = efficientnet_timm.from_timm(sd)
  else:
    params, state = from_timm(sd), {}
  return (params, state) if with_state else params


def save_timm(
  path: PathLike,
  params: Mapping,
  depths: Sequence[int] | None = None,
  state: Mapping | None = None,
) -> None:
  """Writes our params as a timm state dict (``.safetensors`` or ``.pth``).

  NFNet params become a ``dm_nfnet_f*`` state dict; EfficientNet params, with their
  BatchNorm ``state``, a ``tf_efficientnet_b*`` one.
  """
  if efficientnet_timm.is_efficientnet_params(params):
    if state is None:
      raise ValueError('Saving an EfficientNet for timm needs its state.')
    sd = efficientnet_timm.to_timm(params, state)
  else:
    sd = to_timm(params, depths)
  path = os.fspath(path)
  if path.endswith('.safetensors'):
    save_safetensors(path, sd)
  elif path.endswith(('.pth', '.pt', '.bin')):
    torch = _import_torch()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, path)
  else:
    raise ValueError(
      f'Unknown timm checkpoint extension for {path!r}; accepted: '
      '.safetensors, .pth, .pt, .bin.'
    )


# ---------------------------------------------------------------------------------------------
# Any file -> params for a model.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Fine-tuning.
# ---------------------------------------------------------------------------------------------


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
