"""The NFNet paper's optimizer as one optax chain, built from an ml_collections config.

The SGD chain reproduces the official ``SGD_AGC`` update order exactly:

    g <- AGC(g)              unit-wise clip, every parameter but the classifier weight
    g <- g + wd * w          weight decay after clipping; not on gains, biases, skip gains
    m <- momentum * m + g    (momentum buffer starts at zero)
    u <- g + momentum * m    Nesterov (plain momentum: u <- m)
    w <- w - lr(step) * u    lr: 0.1 per 256 images x batch / 256, linear warmup, cosine to 0

Parameter groups come from Haiku names, as in the official ``experiment_nfnets.py``:
- weight decay skips parameters named 'gain', 'bias', 'b', 'skip_gain' (also 'scale', 'offset',
  names containing 'gain' or 'bias', and any 0-D/1-D parameter);
- AGC skips what ``agc_exclude`` matches: by default only ``<top module>/~/linear/w`` (or
  ``<top module>/linear/w`` when the linear is built inside ``__call__``), the final classifier
  weight of any model whose classifier is the top-level Haiku ``linear``, and
  ``<top module>/~/classifier/w``, EfficientNet's (named as in timm). The
  classifier *bias* is clipped, as in the official code (its partition puts 'b' with the gains
  and biases, which keep the default clipping). Squeeze-excite linears are nested deeper, so
  they are clipped. Models with a differently named head set ``agc_exclude`` to their own
  regexes; :func:`describe_param_groups` shows the outcome before a run.
"""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from nfnets import agc

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'lamb')
SCHEDULES = ('cosine', 'constant')


def default_config() -> ml_collections.ConfigDict:
  """The paper's NFNet-F* optimizer (paper section 5 and the official experiment_nfnets.py)."""
  return ml_collections.ConfigDict(
    dict(
      name='sgd',  # 'sgd' | 'adam' | 'adamw' | 'lamb'
      lr_per_256=0.1,  # peak lr = lr_per_256 * global_batch_size / 256
      momentum=0.9,
      nesterov=True,
      weight_decay=2e-5,  # sgd/adam: added to the gradient; adamw/lamb: decoupled
      clipping=0.01,  # AGC threshold; None or 0 disables AGC
      agc_eps=1e-3,
      # Regexes (re.search) over 'module/param' paths that AGC leaves alone.
      agc_exclude=(
        r'^[^/]+/(~/)?linear/w$',
        r'^[^/]+/(~/)?classifier/w$',  # EfficientNet's head, named as timm's
      ),
      # Parameter names (last path part) without weight decay; 0-D/1-D params never decay.
      no_decay_names=('gain', 'bias', 'b', 'skip_gain', 'scale', 'offset'),
      warmup_epochs=5.0,  # the trainer turns this into build_optimizer's warmup_steps
      schedule='cosine',  # 'cosine' | 'constant' (both after a linear warmup from 0)
      b1=0.9,
      b2=0.999,
      adam_eps=1e-8,
      ema_decay=0.99999,
      use_ema=True,
    )
  )


def _paths(params) -> list[tuple[str, tuple[int, ...]]]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [(agc.param_path(kp), tuple(np.shape(leaf))) for kp, leaf in leaves]


def _tree_of(params, fn: Callable[[str, tuple[int, ...]], bool]):
  return jax.tree_util.tree_map_with_path(
    lambda kp, leaf: fn(agc.param_path(kp), tuple(np.shape(leaf))), params
  )


def agc_enabled(opt_config) -> bool:
  return bool(opt_config.clipping)


def applies_agc(path: str, opt_config) -> bool:
  """True when AGC clips the parameter at ``path`` ('NFNet/~/conv/w')."""
  if not agc_enabled(opt_config):
    return False
  return not any(re.search(pattern, path) for pattern in opt_config.agc_exclude)


def applies_weight_decay(path: str, shape: tuple[int, ...], opt_config) -> bool:
  """True when weight decay acts on the parameter at ``path`` (weights of rank >= 2)."""
  if not opt_config.weight_decay:
    return False
  name = path.rsplit('/', 1)[-1]
  if name in opt_config.no_decay_names or 'gain' in name or 'bias' in name:
    return False
  return len(shape) >= 2


def agc_mask(params, opt_config):
  """Boolean tree: True where AGC applies."""
  return _tree_of(params, lambda path, shape: applies_agc(path, opt_config))


def weight_decay_mask(params, opt_config):
  """Boolean tree: True where weight decay applies."""
  return _tree_of(
    params, lambda path, shape: applies_weight_decay(path, shape, opt_config)
  )


def _check_config(
  opt_config, total_steps: int, warmup_steps: int, global_batch_size: int
) -> None:
  if opt_config.name not in OPTIMIZERS:
    raise ValueError(
      f'Unknown optimizer {opt_config.name!r}; accepted: {OPTIMIZERS}.'
    )
  if opt_config.schedule not in SCHEDULES:
    raise ValueError(
      f'Unknown schedule {opt_config.schedule!r}; accepted: {SCHEDULES}.'
    )
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}.')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f'warmup_steps must be in [0, total_steps={total_steps}], '
      f'got {warmup_steps}.'
    )
  if global_batch_size < 1:
    raise ValueError(
      f'global_batch_size must be >= 1, got {global_batch_size}.'
    )
  if opt_config.clipping is not None and opt_config.clipping < 0:
    raise ValueError(
      f'clipping must be None, 0 (off) or > 0, got {opt_config.clipping}.'
    )


def build_schedule(
  opt_config, *, total_steps: int, warmup_steps: int, global_batch_size: int
) -> optax.Schedule:
  """Linear warmup from 0 to ``lr_per_256 * batch / 256``, then cosine to 0 (or constant)."""
  peak = opt_config.lr_per_256 * global_batch_size / 256
  if opt_config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=warmup_steps,
      decay_steps=total_steps,
      end_value=0.0,
    )
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
      optax.constant_schedule(peak),
    ],
    [warmup_steps],
  )


def build_optimizer(
  opt_config,
  *,
  params,
  total_steps: int,
  warmup_steps: int,
  global_batch_size: int,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(optimizer, lr_schedule)``; AGC (if enabled) runs first in every variant.

  ``params`` (arrays or ShapeDtypeStructs) is used to check, before any step, that AGC knows
  every clipped parameter's units and that the classifier pattern matched something.
  """
  _check_config(opt_config, total_steps, warmup_steps, global_batch_size)
  schedule = build_schedule(
    opt_config,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    global_batch_size=global_batch_size,
  )
  paths = _paths(params)
  for path, shape in paths:
    if applies_agc(path, opt_config):
      agc.resolve_unit_axes(path, shape, None)  # raises, naming the parameter
  if agc_enabled(opt_config) and not any(
    re.search(p, path) for p in opt_config.agc_exclude for path, _ in paths
  ):
    logging.warning(
      'agc_exclude %s matched no parameter: AGC will clip every parameter, '
      'including the classifier.',
      list(opt_config.agc_exclude),
    )

  wd_mask = lambda p: weight_decay_mask(p, opt_config)
  steps: list[optax.GradientTransformation] = []
  if agc_enabled(opt_config):
    steps.append(
      optax.masked(
        agc.adaptive_grad_clip(opt_config.clipping, opt_config.agc_eps),
        lambda p: agc_mask(p, opt_config),
      )
    )
  decay = optax.masked(
    optax.add_decayed_weights(opt_config.weight_decay or 0.0), wd_mask
  )
  adam = optax.scale_by_adam(
    b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.adam_eps
  )
  name = opt_config.name
  if name == 'sgd':
    steps.append(decay)
    if opt_config.momentum:
      steps.append(
        optax.trace(decay=opt_config.momentum, nesterov=opt_config.nesterov)
      )
  elif (
    name == 'adam'
  ):  # L2 in the gradient, as the official Adam without use_adamw
    steps += [decay, adam]
  elif (
    name == 'adamw'
  ):  # decoupled decay, scaled by the lr (Loshchilov & Hutter)
    steps += [adam, decay]
  elif (
    name == 'lamb'
  ):  # optax.lamb's order: Adam, decoupled decay, layer trust ratio
    steps += [adam, decay, optax.scale_by_trust_ratio()]
  steps.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*steps), schedule


def describe_param_groups(params, opt_config) -> str:
  """A table of every parameter with its AGC and weight-decay treatment, plus totals."""
  rows = []
  totals = {}
  for path, shape in _paths(params):
    clip = applies_agc(path, opt_config)
    wd = applies_weight_decay(path, shape, opt_config)
    size = int(np.prod(shape))
    units = '-'
    if clip:
      axes = agc.resolve_unit_axes(path, shape, None)
      units = str(
        int(np.prod([s for i, s in enumerate(shape) if i not in axes]))
      )
    rows.append(
      (
        path,
        str(shape),
        size,
        'yes' if clip else 'no',
        units,
        'yes' if wd else 'no',
      )
    )
    for key in (
      f'AGC {"yes" if clip else "no"}',
      f'weight decay {"yes" if wd else "no"}',
    ):
      count, elems = totals.get(key, (0, 0))
      totals[key] = (count + 1, elems + size)
  width = max([len(r[0]) for r in rows] + [9])
  lines = [
    f'{"parameter":<{width}}  {"shape":<18} {"size":>11}  AGC  units  WD'
  ]
  for path, shape, size, clip, units, wd in rows:
    lines.append(
      f'{path:<{width}}  {shape:<18} {size:>11,}  {clip:<3}  {units:>5}  {wd}'
    )
  lines.append('')
  for key in sorted(totals):
    count, elems = totals[key]
    lines.append(f'{key}: {count} tensors, {elems:,} parameters')
  return '\n'.join(lines)


def ema_update(ema_params, params, step, decay: float):
  """EMA with the official TF1-style warm-up: ``d = min(decay, (1 + step) / (10 + step))``.

  Early in training the average forgets its (random-init) start quickly; ``step`` is the
  global step at which ``params`` were produced.
  """
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
  return jax.tree_util.tree_map(
    lambda e, p: (e * d + p * (1.0 - d)).astype(e.dtype), ema_params, params
  )


def clip_stats(grads, params, opt_config) -> dict[str, jax.Array]:
  """Fraction of output units AGC clips: 'agc_clip_fraction' overall and, per clipped
  parameter, 'agc_clip_fraction/<module>/<param>'. Zero when AGC is off."""
  if not agc_enabled(opt_config):
    return {'agc_clip_fraction': jnp.zeros((), jnp.float32)}
  fractions = agc.clip_fractions(
    grads,
    params,
    opt_config.clipping,
    opt_config.agc_eps,
    include=lambda path: applies_agc(path, opt_config),
  )
  stats = {'agc_clip_fraction': fractions.overall}
  stats.update(
    {f'agc_clip_fraction/{k}': v for k, v in fractions.per_param.items()}
  )
  return stats
