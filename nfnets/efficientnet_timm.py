"""timm ``tf_efficientnet_b*`` state dicts <-> our EfficientNet ``(params, state)``.

Our module names are timm's with Haiku separators (``EfficientNet/~/blocks_2_1/~/conv_dw``
is ``blocks.2.1.conv_dw``), so the mapping renames and changes layouts: OIHW convolutions to
HWIO (depthwise ``[C, 1, k, k]`` to ``[k, k, 1, C]``), the squeeze-excite 1x1 convolutions and
the classifier to ``[in, out]`` dense weights, and BatchNorm's ``weight``/``bias`` to
``scale``/``offset`` parameters, its ``running_mean``/``running_var`` to ``mean``/``var``
state. ``num_batches_tracked`` has no counterpart (our BatchNorm uses a fixed momentum).
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

PREFIX = 'EfficientNet/~/'
_BN_PARAMS = {'scale': 'weight', 'offset': 'bias'}
_BN_STATE = {'mean': 'running_mean', 'var': 'running_var'}
_BN_RE = re.compile(r'(^|\.)bn\d$')
# Every module a tf_efficientnet_b* state dict holds.
_MODULE_RE = re.compile(
  r'^(conv_stem|bn[12]|conv_head|classifier|blocks\.\d+\.\d+\.'
  r'(conv_pw|conv_dw|conv_pwl|bn[123]|se\.conv_reduce|se\.conv_expand))$'
)


def is_timm_efficientnet(state_dict: Mapping[str, Any]) -> bool:
  """Whether a timm state dict is an EfficientNet's (it has ``conv_stem`` and ``blocks``)."""
  return 'conv_stem.weight' in state_dict and any(
    k.startswith('blocks.') for k in state_dict
  )


def is_efficientnet_params(params: Mapping[str, Any]) -> bool:
  return f'{PREFIX}conv_stem' in params


def _to_timm_prefix(module: str) -> str:
  if not module.startswith(PREFIX):
    raise ValueError(f'Not an EfficientNet module: {module!r}.')
  name = module[len(PREFIX) :].replace('/~/', '.')
  return re.sub(r'^blocks_(\d+)_(\d+)', r'blocks.\1.\2', name)


def _from_timm_prefix(prefix: str) -> str:
  name = re.sub(r'^blocks\.(\d+)\.(\d+)', r'blocks_\1_\2', prefix)
  return PREFIX + name.replace('.', '/~/')


def _np(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor, without importing torch
    return value.detach().cpu().numpy()
  return np.asarray(value)


def to_timm(params: Mapping, state: Mapping) -> dict[str, np.ndarray]:
  """Our EfficientNet ``(params, state)`` -> a timm ``tf_efficientnet_b*`` state dict."""
  params, state = jax.device_get((params, state))
  sd: dict[str, np.ndarray] = {}
  for module, leaves in params.items():
    prefix = _to_timm_prefix(module)
    if _BN_RE.search(prefix):
      for ours, theirs in _BN_PARAMS.items():
        sd[f'{prefix}.{theirs}'] = np.asarray(leaves[ours], np.float32)
      if module not in state:
        raise ValueError(f'No BatchNorm statistics in state for {module!r}.')
      for ours, theirs in _BN_STATE.items():
        sd[f'{prefix}.{theirs}'] = np.asarray(state[module][ours], np.float32)
      sd[f'{prefix}.num_batches_tracked'] = np.zeros((), np.int64)
      continue
    w = np.asarray(leaves['w'], np.float32)
    if w.ndim == 4:  # HWIO -> OIHW
      sd[f'{prefix}.weight'] = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    elif '.se.' in prefix:  # dense [in, out] -> 1x1 conv [out, in, 1, 1]
      sd[f'{prefix}.weight'] = np.ascontiguousarray(w.T[:, :, None, None])
    else:  # the classifier: dense [in, out] -> torch Linear [out, in]
      sd[f'{prefix}.weight'] = np.ascontiguousarray(w.T)
    if 'b' in leaves:
      sd[f'{prefix}.bias'] = np.asarray(leaves['b'], np.float32)
  return sd


def from_timm(state_dict: Mapping[str, Any]) -> tuple[dict, dict]:
  """A timm ``tf_efficientnet_b*`` state dict -> our ``(params, state)``.

  Every key is used once (``num_batches_tracked`` is dropped); anything else raises.
  """
  sd = {k: _np(v) for k, v in state_dict.items()}
  if not is_timm_efficientnet(sd):
    raise ValueError(
      'Not a timm EfficientNet state dict (no conv_stem.weight / blocks.*).'
    )
  params: dict[str, dict[str, np.ndarray]] = {}
  state: dict[str, dict[str, np.ndarray]] = {}
  used: set[str] = set()
  for key in sorted(sd):
    prefix, _, leaf = key.rpartition('.')
    if not _MODULE_RE.match(prefix):
      continue  # reported as left over below
    module = _from_timm_prefix(prefix)
    value = sd[key]
    if _BN_RE.search(prefix):
      if leaf == 'num_batches_tracked':
        used.add(key)
        continue
      ours = {v: k for k, v in _BN_PARAMS.items()}.get(leaf)
      if ours is not None:
        params.setdefault(module, {})[ours] = value.astype(np.float32)
        used.add(key)
      ours = {v: k for k, v in _BN_STATE.items()}.get(leaf)
      if ours is not None:
        state.setdefault(module, {})[ours] = value.astype(np.float32)
        used.add(key)
      continue
    if leaf == 'weight':
      if value.ndim == 4 and '.se.' not in f'.{prefix}.':
        w = value.transpose(2, 3, 1, 0)
      elif value.ndim == 4:
        w = value[:, :, 0, 0].T
      elif value.ndim == 2:
        w = value.T
      else:
        raise ValueError(f'{key}: unexpected shape {value.shape}.')
      params.setdefault(module, {})['w'] = np.ascontiguousarray(w, np.float32)
      used.add(key)
    elif leaf == 'bias':
      params.setdefault(module, {})['b'] = value.astype(np.float32)
      used.add(key)
  leftover = sorted(set(sd) - used)
  if leftover:
    raise ValueError(
      f'timm state dict has keys with no EfficientNet counterpart: {leftover}.'
    )
  return params, state
