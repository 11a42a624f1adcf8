"""Build any model by name: ``create_model('nfnet_f1', num_classes=1000)``.

Every family registers a constructor that returns a Haiku module whose ``__call__(images,
is_training, return_metrics=False)`` returns a dict with 'logits', and which has
``count_macs(h, w)``. :class:`Model` wraps it as a ``hk.TransformedWithState`` so that models
with state (the BatchNorm baselines) and without it share one training loop.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import numpy as np

ModuleFn = Callable[..., hk.Module]

_REGISTRY: dict[str, tuple[ModuleFn, dict[str, Any]]] = {}


def register(name: str, module_fn: ModuleFn, **defaults: Any) -> None:
  """Registers ``module_fn(num_classes=..., **kwargs)`` under ``name`` with default kwargs."""
  if name in _REGISTRY:
    raise ValueError(f'Model {name!r} is already registered.')
  _REGISTRY[name] = (module_fn, defaults)


def list_models() -> list[str]:
  """Names accepted by :func:`create_model`."""
  _import_families()
  return sorted(_REGISTRY)


def _canonical(name: str) -> str:
  return name.strip().lower().replace('-', '_').replace('+', '_plus')


@dataclasses.dataclass(frozen=True)
class Model:
  """A named model: its Haiku transform plus the facts a trainer or evaluator needs."""

  name: str
  num_classes: int
  kwargs: dict[str, Any]
  module_fn: ModuleFn = dataclasses.field(repr=False)
  train_imsize: int | None = None
  test_imsize: int | None = None
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)

  def _module(self) -> hk.Module:
    return self.module_fn(num_classes=self.num_classes, **self.kwargs)

  @property
  def transformed(self) -> hk.TransformedWithState:
    def forward(images, is_training, return_metrics=False):
      return self._module()(
        images, is_training=is_training, return_metrics=return_metrics
      )

    return hk.transform_with_state(forward)

  def init(self, rng: jax.Array, images: jax.Array, is_training: bool = True):
    """Returns ``(params, state)`` for inputs shaped like ``images``."""
    return self.transformed.init(rng, images, is_training)

  def apply(
    self,
    params,
    state,
    rng,
    images,
    is_training: bool,
    return_metrics: bool = False,
  ):
    """Returns ``(outputs, new_state)``; ``outputs['logits']`` is float32."""
    return self.transformed.apply(
      params, state, rng, images, is_training, return_metrics
    )

  def param_shapes(self, resolution: int | None = None):
    """Parameter shapes and dtypes without allocating them (``jax.eval_shape``)."""
    res = resolution or self.test_imsize or 224
    images = jax.ShapeDtypeStruct((1, res, res, 3), np.float32)
    params, _ = jax.eval_shape(self.init, jax.random.PRNGKey(0), images)
    return params

  def count_params(self) -> int:
    """Number of trainable parameters, computed abstractly (fast even for F7)."""
    return count_params(self.param_shapes())

  def count_macs(self, resolution: int | None = None) -> float:
    """Multiply-adds for one image at ``resolution`` (default: the test resolution)."""
    res = resolution or self.test_imsize
    if res is None:
      raise ValueError(f'{self.name} has no default resolution; pass one.')
    counter = hk.transform(lambda: self._module().count_macs(res, res))
    return counter.apply({}, None)


def count_params(params) -> int:
  """Total number of elements in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> Model:
  """Returns the registered model ``name`` (e.g. 'nfnet_f1', 'nfnet_f0_plus').

  ``kwargs`` override the family's constructor arguments (drop_rate, stochdepth_rate,
  activation, width, ...).
  """
  _import_families()
  key = _canonical(name)
  if key not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; accepted: {sorted(_REGISTRY)}.')
  module_fn, defaults = _REGISTRY[key]
  merged = {**defaults, **kwargs}
  extras = dict(getattr(module_fn, 'variant_info', lambda kw: {})(merged))
  return Model(
    name=key,
    num_classes=num_classes,
    kwargs=merged,
    module_fn=module_fn,
    train_imsize=extras.pop('train_imsize', None),
    test_imsize=extras.pop('test_imsize', None),
    extras=extras,
  )


def _import_families() -> None:
  # Each family module registers its models on import.
  from nfnets import (  # noqa: F401
    efficientnet,
    nf_regnet,
    nf_resnet,
    nfnet,
    resnet,
  )
