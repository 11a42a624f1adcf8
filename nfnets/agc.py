"""Adaptive Gradient Clipping (Brock et al. 2021, arXiv 2102.06171, section 4).

A *unit* is one output unit of a layer: for an HWIO conv kernel the slice ``w[:, :, :, o]``
(norm over H, W, I), for an ``(in, out)`` linear weight the column ``w[:, o]`` (norm over
``in``), and for vectors and scalars (gains, biases, skip gains) the whole tensor. A unit's
gradient ``G_i`` is rescaled to norm ``clipping * max(||W_i||, eps)`` when its norm exceeds that
bound and is returned bit-for-bit unchanged otherwise. Norms are always taken in float32, so
bfloat16 gradients are clipped with the same decisions as their float32 originals.

Unlike ``optax.adaptive_grad_clip`` this never guesses: a kernel of shape ``(1, 1, 1, C)`` still
has C units (optax squeezes it and clips the whole tensor as one unit), rank-3 and rank-5
parameters raise a ValueError naming the parameter unless the caller says which axes a unit
spans (``unit_axes``), and the per-unit clip decisions are available for logging
(:func:`clip_fractions`).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# A unit's norm is taken over these axes of the parameter (the complement indexes the units).
Axes = tuple[int, ...]
# Per-parameter override of the reduction axes: a mapping from parameter path
# ('NFNet/~/linear/w') to axes, or a function (path, shape) -> axes; None means "default".
UnitAxes = (
  Mapping[str, Sequence[int]]
  | Callable[[str, tuple[int, ...]], Sequence[int] | None]
)

# Guards the division when a gradient norm is zero (the clip never triggers then anyway).
_DIV_EPS = 1e-6


def param_path(keypath: Sequence[Any]) -> str:
  """'NFNet/~/linear/w' for the key path of ``params['NFNet/~/linear']['w']``."""
  parts = []
  for key in keypath:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def default_unit_axes(shape: Sequence[int], name: str = '<unnamed>') -> Axes:
  """The axes one unit's norm spans, from the parameter's rank (Haiku layouts).

  Rank 0/1 (scalars, gains, biases): the whole tensor. Rank 2 (``(in, out)`` linear): axis 0.
  Rank 4 (HWIO conv): axes 0, 1, 2. Anything else is ambiguous (a rank-3 tensor may be a 1D
  conv ``(W, I, O)`` or a multi-head ``(in, heads, out)`` linear), so it raises.
  """
  ndim = len(shape)
  if ndim <= 1:
    return tuple(range(ndim))
  if ndim == 2:
    return (0,)
  if ndim == 4:
    return (0, 1, 2)
  raise ValueError(
    f'AGC does not know the output units of parameter {name!r} with shape {tuple(shape)}: '
    'accepted ranks are 0, 1 (whole tensor), 2 ((in, out) linear) and 4 (HWIO conv). '
    'Pass unit_axes={name: axes_to_reduce} (or a function (name, shape) -> axes).'
  )


def resolve_unit_axes(
  name: str, shape: Sequence[int], unit_axes: UnitAxes | None
) -> Axes:
  """The reduction axes for parameter ``name``: the caller's override, else the default."""
  axes = None
  if unit_axes is not None:
    if callable(unit_axes):
      axes = unit_axes(name, tuple(shape))
    elif name in unit_axes:
      axes = unit_axes[name]
  if axes is None:
    return default_unit_axes(shape, name)
  ndim = len(shape)
  axes = tuple(int(a) for a in axes)
  if any(not -ndim <= a < ndim for a in axes):
    raise ValueError(
      f'unit_axes {axes} for parameter {name!r} are out of range for '
      f'shape {tuple(shape)}.'
    )
  return tuple(sorted({a % ndim for a in axes}))


def unitwise_norm(x: jax.Array, axes: Axes) -> jax.Array:
  """float32 L2 norm of each unit, with ``keepdims`` so it broadcasts against ``x``."""
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def _check_clipping(clipping: float, eps: float) -> None:
  if not clipping > 0:
    raise ValueError(
      f'AGC clipping must be > 0, got {clipping!r} (to disable AGC, do not '
      'add the transformation; in the optimizer config set clipping=None).'
    )
  if not eps >= 0:
    raise ValueError(f'AGC eps must be >= 0, got {eps!r}.')


def _clip_one(
  grad: jax.Array, param: jax.Array, clipping: float, eps: float, axes: Axes
) -> tuple[jax.Array, jax.Array]:
  """Returns the clipped gradient and the per-unit boolean 'was clipped'."""
  max_norm = clipping * jnp.maximum(unitwise_norm(param, axes), eps)
  grad_norm = unitwise_norm(grad, axes)
  trigger = grad_norm > max_norm
  scale = max_norm / jnp.maximum(grad_norm, _DIV_EPS)
  clipped = (grad.astype(jnp.float32) * scale).astype(grad.dtype)
  # jnp.where (not a multiply by 1) keeps unclipped units bit-for-bit unchanged.
  return jnp.where(trigger, clipped, grad), trigger


def _check_shapes(name: str, grad: jax.Array, param: jax.Array) -> None:
  if tuple(grad.shape) != tuple(param.shape):
    raise ValueError(
      f'AGC: gradient and parameter {name!r} have different shapes '
      f'{tuple(grad.shape)} and {tuple(param.shape)}.'
    )


def adaptive_grad_clip(
  clipping: float, eps: float = 1e-3, unit_axes: UnitAxes | None = None
) -> optax.GradientTransformation:
  """Unit-wise AGC as an optax transformation; put it first in any chain.

  Args:
    clipping: the maximum ratio ``||G_i|| / max(||W_i||, eps)`` (paper: 0.01 at batch 4096).
    eps: floor on a unit's weight norm, so zero-initialised parameters can still move.
    unit_axes: per-parameter override of the axes a unit's norm spans, keyed by parameter
      path ('module/name'); needed only for ranks other than 0, 1, 2 and 4.

  The update function needs ``params``. It is stateless, and shape dispatch happens at trace
  time, so it costs two fused reductions and one select per parameter under ``jit``.
  """
  _check_clipping(clipping, eps)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        'adaptive_grad_clip needs the current params: call '
        'update(grads, state, params).'
      )

    def clip(keypath, grad, param):
      name = param_path(keypath)
      _check_shapes(name, grad, param)
      axes = resolve_unit_axes(name, grad.shape, unit_axes)
      return _clip_one(grad, param, clipping, eps, axes)[0]

    return jax.tree_util.tree_map_with_path(clip, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


class ClipFractions(NamedTuple):
  """Per-parameter fraction of units clipped, and the fraction over all units."""

  per_param: dict[str, jax.Array]
  overall: jax.Array


def clip_fractions(
  grads,
  params,
  clipping: float,
  eps: float = 1e-3,
  unit_axes: UnitAxes | None = None,
  include: Callable[[str], bool] | None = None,
) -> ClipFractions:
  """Which fraction of units AGC clips, per parameter and overall (for training logs).

  ``include(path)`` selects the parameters AGC is applied to (default: all). The overall
  fraction weights every unit equally, so it reads as "share of output units clipped".
  """
  _check_clipping(clipping, eps)
  per_param: dict[str, jax.Array] = {}
  clipped_units = jnp.zeros((), jnp.float32)
  total_units = 0
  flat_grads = jax.tree_util.tree_flatten_with_path(grads)[0]
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  if len(flat_grads) != len(flat_params):
    raise ValueError(
      f'grads have {len(flat_grads)} leaves but params {len(flat_params)}.'
    )
  for (keypath, grad), (_, param) in zip(flat_grads, flat_params, strict=True):
    name = param_path(keypath)
    if include is not None and not include(name):
      continue
    _check_shapes(name, grad, param)
    axes = resolve_unit_axes(name, grad.shape, unit_axes)
    trigger = _clip_one(grad, param, clipping, eps, axes)[1]
    count = jnp.sum(trigger.astype(jnp.float32))
    per_param[name] = count / trigger.size
    clipped_units = clipped_units + count
    total_units += trigger.size
  overall = clipped_units / max(total_units, 1)
  return ClipFractions(per_param=per_param, overall=overall)
