"""The pieces of the training loop that run on devices: TrainState, train_step, eval_step.

Everything here is pure JAX: the host loop (experiments/train.py) feeds numpy batches shaped
[local_devices, per_device_batch, ...] and calls the pmapped steps. Randomness is a function of
(base rng, global step, global device index) only, so a run split into pieces (stop, resume)
draws exactly the numbers an unbroken run draws.
"""

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

import nfnets
from nfnets import layers, optim, sam, weights

AXIS = 'batch'


class TrainState(NamedTuple):
  """Everything a resumed run needs besides the data position (which is ``step``)."""

  params: Any
  model_state: (
    Any  # Haiku state (empty for NFNets; BatchNorm statistics for baselines)
  )
  opt_state: Any
  ema_params: Any
  step: jax.Array  # int32 scalar: number of updates applied so far
  rng: (
    jax.Array
  )  # base PRNG key; per-step keys are derived, never split in place


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.bfloat16 else jnp.float32


def create_model(
  config: ml_collections.ConfigDict, num_classes: int
) -> nfnets.Model:
  return nfnets.create_model(
    config.model, num_classes=num_classes, **dict(config.model_kwargs)
  )


def image_sizes(
  config: ml_collections.ConfigDict, model: nfnets.Model
) -> tuple[int, int]:
  """(train, eval) resolutions: the config's, else the model variant's."""
  train = config.train_imsize or model.train_imsize
  test = config.eval_imsize or model.test_imsize
  if not train or not test:
    raise ValueError(
      f'Model {config.model!r} has no default resolution; set '
      'config.train_imsize and config.eval_imsize.'
    )
  return int(train), int(test)


def per_device_batch(global_batch: int, what: str = 'train_batch_size') -> int:
  """Global batch / device count, or a ValueError saying what would divide."""
  devices = jax.device_count()
  if global_batch < 1 or global_batch % devices:
    raise ValueError(
      f'config.{what}={global_batch} is not divisible by the '
      f'{devices} devices of this run (jax.device_count()); use a multiple of '
      f'{devices}.'
    )
  return global_batch // devices


def smoothed_cross_entropy(
  logits: jax.Array, labels: jax.Array, smoothing: float
) -> jax.Array:
  """Per-example CE against one-hot labels smoothed as (1 - s) * onehot + s / num_classes."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if smoothing:
    targets = targets * (1.0 - smoothing) + smoothing / num_classes
  return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def train_loss(logits: jax.Array, batch: dict, smoothing: float) -> jax.Array:
  """Mean CE; with MixUp/CutMix ``ratio * CE(labels) + (1 - ratio) * CE(mix_labels)``."""
  loss = smoothed_cross_entropy(logits, batch['labels'], smoothing)
  if 'mix_labels' in batch:
    ratio = batch['ratio'].astype(jnp.float32)
    loss = ratio * loss + (1.0 - ratio) * smoothed_cross_entropy(
      logits, batch['mix_labels'], smoothing
    )
  return jnp.mean(loss)


def init_state(
  model: nfnets.Model,
  optimizer: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  image_size: int,
) -> TrainState:
  """Unreplicated initial state; the same on every host (seeded by config.seed only)."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, base_rng = jax.random.split(rng)
  images = jnp.zeros((1, image_size, image_size, 3), compute_dtype(config))

  @jax.jit
  def _init(init_rng):
    params, model_state = model.init(init_rng, images, is_training=True)
    return params, model_state

  params, model_state = _init(init_rng)
  if config.get('require_pretrained') and not config.get('pretrained'):
    raise ValueError(
      f'Config {config.name!r} fine-tunes published weights: pass '
      '--config.pretrained=PATH (e.g. F0_haiku.npz).'
    )
  if config.get('pretrained'):
    # Fine-tuning: every tensor from the file; a new N(0, 0.01) classifier when the class
    # count differs. The file is checked name by name against the model first.
    loaded = weights.load_pretrained_for_finetune(
      config.pretrained, model, rng=init_rng, resolution=image_size
    )
    params = jax.tree_util.tree_map(jnp.asarray, loaded)
    logging.info(
      'Initialised %d tensors from %s.',
      len(jax.tree_util.tree_leaves(params)),
      config.pretrained,
    )
  opt_state = optimizer.init(params)
  ema_params = jax.tree_util.tree_map(jnp.copy, params)
  return TrainState(
    params=params,
    model_state=model_state,
    opt_state=opt_state,
    ema_params=ema_params,
    step=jnp.zeros((), jnp.int32),
    rng=base_rng,
  )


def step_rng(base_rng: jax.Array, step: jax.Array) -> jax.Array:
  """Key for one device at one step: fold in the global step, then the global device index."""
  return jax.random.fold_in(
    jax.random.fold_in(base_rng, step), jax.lax.axis_index(AXIS)
  )


def make_train_step(
  model: nfnets.Model,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The per-device step; pmap it over axis ``AXIS``. Metrics come back pmean-ed."""
  opt_config = config.optimizer
  dtype = compute_dtype(config)

  def loss_fn(params, model_state, batch, rng):
    images = batch['images'].astype(dtype)
    outputs, new_model_state = model.apply(
      params, model_state, rng, images, is_training=True
    )
    logits = outputs['logits'].astype(jnp.float32)
    return train_loss(logits, batch, config.label_smoothing), (
      logits,
      new_model_state,
    )

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = step_rng(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if opt_config.get('sam_rho'):
      # SAM (nfnets/sam.py): the ascent sees this device's own sub-batch and is not averaged
      # across devices; only the descent gradient is (below). Model state (BatchNorm
      # statistics) comes from the unperturbed ascent pass.
      result = sam.sam_value_and_grad(
        lambda p, b: loss_fn(p, state.model_state, b, rng),
        state.params,
        batch,
        rho=opt_config.sam_rho,
        ascent_fraction=opt_config.sam_ascent_fraction,
        has_aux=True,
      )
      (loss, (logits, _)), grads = result.value, result.grads
      model_state = result.ascent_value[1][1]
    else:
      (loss, (logits, model_state)), grads = grad_fn(
        state.params, state.model_state, batch, rng
      )
    grads = jax.lax.pmean(grads, AXIS)
    # Batch statistics (if any) are averaged too, so every replica holds the same state.
    model_state = jax.tree_util.tree_map(
      lambda x: (
        jax.lax.pmean(x, AXIS) if jnp.issubdtype(x.dtype, jnp.floating) else x
      ),
      model_state,
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if opt_config.use_ema:
      ema_params = optim.ema_update(
        state.ema_params, params, state.step, opt_config.ema_decay
      )
    else:
      ema_params = state.ema_params
    top1 = jnp.mean(jnp.argmax(logits, -1) == batch['labels'])
    metrics = {'loss': loss, 'top1': top1.astype(jnp.float32)}
    metrics = jax.lax.pmean(metrics, AXIS)
    metrics['lr'] = jnp.asarray(schedule(state.step), jnp.float32)
    metrics['grad_norm'] = optax.global_norm(grads)
    metrics['agc_clip_fraction'] = optim.clip_stats(
      grads, state.params, opt_config
    )['agc_clip_fraction']
    new_state = TrainState(
      params=params,
      model_state=model_state,
      opt_state=opt_state,
      ema_params=ema_params,
      step=state.step + 1,
      rng=state.rng,
    )
    return new_state, metrics

  return train_step


def make_eval_step(
  model: nfnets.Model, config: ml_collections.ConfigDict
) -> Callable[[Any, Any, dict], dict]:
  """Per-device eval on a masked batch; returns psum-ed counts and sums (exact totals).

  ``params`` come from ``layers.standardize_params``: weights are standardized once per
  evaluation, not in every batch's forward pass.
  """
  dtype = compute_dtype(config)

  def eval_step(params, model_state, batch):
    images = batch['images'].astype(dtype)
    with layers.standardized_weights():
      outputs, _ = model.apply(
        params, model_state, None, images, is_training=False
      )
    logits = outputs['logits'].astype(jnp.float32)
    labels = batch['labels']
    mask = batch['mask'].astype(jnp.float32)
    loss = smoothed_cross_entropy(logits, labels, 0.0)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    correct5 = jnp.any(topk == labels[:, None], axis=-1)
    correct1 = jnp.argmax(logits, -1) == labels
    sums = {
      'count': jnp.sum(mask),
      'top1': jnp.sum(correct1 * mask),
      'top5': jnp.sum(correct5 * mask),
      'loss': jnp.sum(loss * mask),
    }
    return jax.lax.psum(sums, AXIS)

  return eval_step


def _device_axis_sharding(devices=None) -> jax.sharding.NamedSharding:
  """Leading axis split over the local devices, one slice each (what pmap consumes)."""
  devices = list(devices or jax.local_devices())
  return jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(devices), (AXIS,)),
    jax.sharding.PartitionSpec(AXIS),
  )


def replicate(tree, devices=None):
  """Puts one copy of a host tree on every local device (leading axis = local devices)."""
  sharding = _device_axis_sharding(devices)
  copies = len(sharding.mesh.devices)
  return jax.tree_util.tree_map(
    lambda x: jax.device_put(np.stack([np.asarray(x)] * copies), sharding), tree
  )


def prefetch_to_device(
  batches: Iterable[Any], size: int = 2, devices=None
) -> Iterator[Any]:
  """Yields host batches ``[local_devices, per_device_batch, ...]`` already on the devices.

  Keeps ``size`` batches copied ahead of the one in use: their host-to-device transfers (and
  the host pipeline's work for them) run while the current step computes, instead of at the
  step's dispatch. Order and contents are those of ``batches``.
  """
  if size < 1:
    raise ValueError(f'prefetch size must be at least 1, got {size}.')
  sharding = _device_axis_sharding(devices)
  queue = collections.deque()
  for batch in batches:
    queue.append(
      jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)
    )
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def unreplicate(tree):
  """First local copy of a replicated tree, as numpy (a host sync)."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)
