"""timm's ``dm_nfnet_f*`` state dicts <-> our NFNet params (and EfficientNets).

``load_timm``/``save_timm`` also read and write ``tf_efficientnet_b*`` state dicts, told apart
by their key names; their mapping lives in :mod:`nfnets.efficientnet_timm`.

timm's layout is PyTorch's: OIHW convolutions with gains shaped (O, 1, 1, 1), squeeze-excite
linears as 1x1 convolutions, a transposed classifier. Files are ``.safetensors`` (read and
written with the ``safetensors`` package's NumPy API, no torch) or ``.pth`` (torch is imported
only for those).
"""

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from nfnets import efficientnet_timm
from nfnets.weights.params import CLASSIFIER, Params, PathLike

_PREFIX = 'NFNet/~/'

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


def save_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes a ``.safetensors`` file (readable by ``safetensors.torch.load_file``)."""
  safetensors.numpy.save_file(
    {name: np.ascontiguousarray(v) for name, v in tensors.items()},
    os.fspath(path),
  )


def load_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into NumPy arrays (no torch, no code execution)."""
  try:
    return safetensors.numpy.load_file(os.fspath(path))
  except safetensors.SafetensorError as e:
    raise ValueError(
      f'{os.fspath(path)} is not a readable safetensors file: {e}'
    ) from e


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
