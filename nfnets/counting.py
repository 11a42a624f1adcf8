"""Parameter and multiply-add counting.

The model families count MACs with the official rules (``Model.count_macs``). This module
counts them a second, independent way, from the traced computation: every convolution and
matrix product in the jaxpr of a forward pass. Tests use it to check the rule-based counts, and
the benchmark uses it to turn step times into achieved FLOP/s.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from nfnets import cpu_conv
from nfnets.registry import count_params

__all__ = ['count_params', 'count_jaxpr_macs', 'count_model_macs']


def _conv_macs(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  dn = eqn.params['dimension_numbers']
  kernel_spatial = np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]])
  in_per_group = rhs.shape[dn.rhs_spec[1]]
  del lhs
  return int(np.prod(out.shape) * kernel_spatial * in_per_group)


def _dot_macs(eqn) -> int:
  lhs, _ = (v.aval for v in eqn.invars[:2])
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  contracted = np.prod([lhs.shape[d] for d in lhs_contract])
  return int(np.prod(eqn.outvars[0].aval.shape) * contracted)


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def _count(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += _conv_macs(eqn)
    elif name == 'dot_general':
      total += _dot_macs(eqn)
    for sub in _sub_jaxprs(eqn):
      total += _count(sub)
  return total


def count_jaxpr_macs(fn: Callable[..., Any], *args: Any) -> int:
  """Multiply-adds of all convolutions and matrix products traced in ``fn(*args)``.

  ``args`` may be ``jax.ShapeDtypeStruct``s, so nothing is allocated. Elementwise work and
  reductions are not counted, as in the papers.
  """
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def count_model_macs(model, resolution: int, batch_size: int = 1) -> int:
  """Traced forward-pass MACs of a registry ``Model`` at ``resolution`` (eval mode)."""
  images = jax.ShapeDtypeStruct(
    (batch_size, resolution, resolution, 3), np.float32
  )
  params = model.param_shapes(resolution)
  _, state = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  # Traced with one XLA convolution per layer: the CPU strategy computes the same
  # products, some of them (depthwise taps) as elementwise work this count skips.
  previous = cpu_conv.grouped_conv_override()
  cpu_conv.set_grouped_conv_impl('native')
  try:
    return count_jaxpr_macs(
      lambda p, s, x: model.apply(p, s, None, x, False)[0]['logits'],
      params,
      state,
      images,
    )
  finally:
    cpu_conv.set_grouped_conv_impl(previous)
