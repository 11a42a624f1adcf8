"""Build any model by name: ``create_model('nfnet_f1', num_classes=1000)``.

Every family module registers its models with :func:`register_family`, a decorator on the
family's network class (any callable ``(num_classes=..., **kwargs) -> hk.Module`` works),
and ``nfnets/__init__.py`` imports the family modules, so this module imports no model code
(only the variant tables' lookup).
The network's ``__call__(images, is_training, return_metrics=False)`` returns a dict with
'logits', and it has ``count_macs(h, w)``. :class:`Model` wraps it as an
``hk.TransformedWithState`` so that models with state (the BatchNorm baselines) and without it
share one training loop.

A new family registers in a few lines, next to its class; its default variant is the
constructor's own::

  MODELS = {f'efficientnet_{v.lower()}': dict(variant=v) for v in VARIANTS}

  @registry.register_family('EfficientNet', VARIANTS, MODELS)
  class EfficientNet(hk.Module):
    def __init__(self, num_classes: int, variant: str = 'B0', ...): ...
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import numpy as np

from nfnets import variants as variant_tables

ModuleFn = Callable[..., hk.Module]


def canonical_name(name: str) -> str:
  """The registered spelling of a model name: 'NFNet-F1+' -> 'nfnet_f1_plus'."""
  return name.strip().lower().replace('-', '_').replace('+', '_plus')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A variant's published training facts, as :class:`Model` carries them."""

  train_imsize: int | None = None
  test_imsize: int | None = None
  drop_rate: float | None = None
  RA_level: str | None = None  # RandAugment layers and magnitude, e.g. '405'
  weight_decay: float | None = None

  def extras(self) -> dict[str, Any]:
    """The facts besides the resolutions that the variant defines."""
    names = ('RA_level', 'drop_rate', 'weight_decay')
    return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its constructor and variant table (see nfnets/variants.py).

  ``variants`` maps a variant name (the constructor's ``variant`` argument) to its facts;
  ``train_imsize``, ``test_imsize``, ``drop_rate``, ``RA_level`` and ``weight_decay`` there
  become the model's :class:`Recipe`, with ``imsize`` for a table without resolutions.
  """

  label: str  # as error messages name it, e.g. 'NFNet'
  build: ModuleFn = dataclasses.field(repr=False)
  variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(
    default_factory=dict, repr=False
  )
  default_variant: str | None = None
  imsize: int | None = None

  def recipe(self, kwargs: Mapping[str, Any]) -> Recipe:
    """The recipe of the variant ``kwargs`` select; an explicit drop_rate wins."""
    if not self.variants:
      return Recipe()
    variant = kwargs.get('variant', self.default_variant)
    facts = variant_tables.lookup(self.variants, variant, self.label)
    drop_rate = kwargs.get('drop_rate')
    return Recipe(
      train_imsize=facts.get('train_imsize', self.imsize),
      test_imsize=facts.get('test_imsize', self.imsize),
      drop_rate=facts.get('drop_rate', 0.0) if drop_rate is None else drop_rate,
      RA_level=facts.get('RA_level'),
      weight_decay=facts.get('weight_decay'),
    )


_REGISTRY: dict[str, tuple[Family, dict[str, Any]]] = {}


def register(name: str, module_fn: ModuleFn | Family, **defaults: Any) -> None:
  """Registers ``module_fn(num_classes=..., **kwargs)`` under ``name`` with default kwargs.

  ``module_fn`` is a :class:`Family` or any constructor (a family without variants).
  """
  key = canonical_name(name)
  if key in _REGISTRY:
    raise ValueError(f'Model {key!r} is already registered.')
  family = module_fn
  if not isinstance(family, Family):
    family = Family(label=key, build=module_fn)
  _REGISTRY[key] = (family, defaults)


def register_family(
  label: str,
  variants: Mapping[str, Mapping[str, Any]],
  models: Mapping[str, Mapping[str, Any]],
  imsize: int | None = None,
) -> Callable[[ModuleFn], ModuleFn]:
  """Class decorator: registers the decorated constructor under every name in ``models``.

  The family's default variant is the constructor's own default ``variant``.

  Args:
    label: the family's name in error messages, e.g. 'NFNet'.
    variants: the family's table from nfnets/variants.py.
    models: registered name -> constructor defaults (usually ``variant=...``).
    imsize: train and test resolution of variants whose table entry has none.

  Returns:
    The decorator, which returns its argument unchanged.
  """

  def decorator(build: ModuleFn) -> ModuleFn:
    parameter = inspect.signature(build).parameters.get('variant')
    if parameter is None or parameter.default is inspect.Parameter.empty:
      raise TypeError(
        f'{label}: the constructor needs a variant argument with a default.'
      )
    family = Family(label, build, variants, parameter.default, imsize)
    for name, defaults in models.items():
      register(name, family, **defaults)
    return build

  return decorator


def list_models() -> list[str]:
  """Names accepted by :func:`create_model`."""
  return sorted(_REGISTRY)


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
  key = canonical_name(name)
  if key not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; accepted: {sorted(_REGISTRY)}.')
  family, defaults = _REGISTRY[key]
  merged = {**defaults, **kwargs}
  recipe = family.recipe(merged)
  return Model(
    name=key,
    num_classes=num_classes,
    kwargs=merged,
    module_fn=family.build,
    train_imsize=recipe.train_imsize,
    test_imsize=recipe.test_imsize,
    extras=recipe.extras(),
  )
