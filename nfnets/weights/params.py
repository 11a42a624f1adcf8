"""Parameter trees as the weight files hold them: flat names, validation, comparison.

Haiku params are ``{'NFNet/~/nf_block_3/~/conv1b': {'w': HWIO, 'gain': (O,), 'bias': (O,)}}``;
files flatten them to ``'module/param'`` names.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Params = dict[str, dict[str, np.ndarray]]
PathLike = str | os.PathLike

# The classifier of the NFNets (official name), replaced when fine-tuning.
CLASSIFIER = 'NFNet/~/linear'


def as_param_tree(tree: Any, source: str) -> Params:
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
