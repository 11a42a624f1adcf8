r"""Train a model from a config: `python -m experiments.train --config=nfnet_f0 --workdir=DIR`.

The config is a name (`nfnet_f1`, `nfnet_f3_plus`, `demo`; see experiments/config_lib.py) or a
path to a config file, and any field can be overridden:

    python -m experiments.train --config=nfnet_f0 --workdir=/ckpt/f0 \
        --config.data_dir=/data/tfds --config.train_batch_size=1024

Re-running with the same --workdir resumes from the newest checkpoint exactly (same losses as an
unbroken run). Multi-host (TPU pod, GPU cluster): run the same command on every host with
--multihost (or with JAX_COORDINATOR_ADDRESS set); each host reads its own shard of the data and
process 0 writes logs and TensorBoard events.

The module reads top to bottom: set-up (what a config implies: model, optimizer, schedule
lengths, the initial TrainState), the training step (THE step: the benchmarks and the AGC
ablation call it too, so what they time and study is what training runs), evaluation, the
host loop (`train_and_evaluate`) and a thin `main`.

Randomness is a function of (base rng, global step, global device index) only, so a run split
into pieces (stop, resume) draws exactly the numbers an unbroken run draws.
"""

import collections
import dataclasses
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

import nfnets
from data import pipeline
from experiments import checkpointing, config_lib, init_from, run_info
from nfnets import layers, optim, runtime, sam

# Flags of the entry points (eval.py and demo.py read the same ones).
CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Config name (e.g. nfnet_f1, demo) or path/to/config.py[:arg].',
  lock_config=False,
)
WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Checkpoints and TensorBoard events go here.'
)
KEEP_HOST_STEP_BUFFERS = flags.DEFINE_bool(
  'keep_host_step_buffers',
  True,
  'On CPU, run steps inline and keep freed heap memory mapped, so XLA does not page-fault '
  'its step buffer in again every step (nfnets.runtime.configure_cpu).',
)
_MULTIHOST = flags.DEFINE_bool(
  'multihost',
  False,
  'Call jax.distributed.initialize() (TPU pods and clusters detect their '
  'peers; elsewhere pass --coordinator_address, --num_processes, --process_id).',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0.'
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Number of processes.'
)
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
_MAX_STEPS = flags.DEFINE_integer(
  'stop_at_step',
  None,
  'Checkpoint and stop at this step (the schedule still spans the '
  'whole run); for splitting a run into pieces.',
)

AXIS = 'batch'
# Batches copied to the devices ahead of the step that uses them.
PREFETCH_BATCHES = 2


# ----------------------------------------------------------------------------
# Set-up: what a config implies before any step runs.
# ----------------------------------------------------------------------------


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


EVAL_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def eval_dtype(config: ml_collections.ConfigDict):
  """`config.eval_dtype` ('float32' as the official code evaluates, or
  'bfloat16'); unset or None follows `config.bfloat16`."""
  name = config.get('eval_dtype')
  if name is None:
    return compute_dtype(config)
  if name not in EVAL_DTYPES:
    raise ValueError(
      f'Unknown eval_dtype {name!r}; accepted: {sorted(EVAL_DTYPES)} or None.'
    )
  return EVAL_DTYPES[name]


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


@dataclasses.dataclass
class Setup:
  """Everything derived from a config before any step runs."""

  model: Any
  optimizer: Any
  schedule: Any
  train_imsize: int
  eval_imsize: int
  per_device_batch: int
  total_steps: int
  warmup_steps: int
  steps_per_epoch: float
  num_classes: int
  identity: dict


def build_setup(config: ml_collections.ConfigDict) -> Setup:
  """Model, optimizer and schedule lengths; raises ValueError on inconsistent settings."""
  per_device = per_device_batch(config.train_batch_size)
  per_device_batch(config.eval_batch_size, 'eval_batch_size')
  num_classes = pipeline.num_classes(config.dataset, config.data_dir)
  model = create_model(config, num_classes)
  train_imsize, eval_imsize = image_sizes(config, model)
  num_train = pipeline.num_examples(
    config.dataset, config.train_split, config.data_dir
  )
  steps_per_epoch = num_train / config.train_batch_size
  if num_train < config.train_batch_size:
    logging.warning(
      '%s/%s has %d examples, fewer than one batch of %d: every batch repeats '
      'examples. Lower config.train_batch_size for a dataset this small.',
      config.dataset,
      config.train_split,
      num_train,
      config.train_batch_size,
    )
  total_steps = config.num_train_steps or int(
    math.ceil(config.num_epochs * steps_per_epoch)
  )
  if total_steps < 1:
    raise ValueError(
      f'The run has {total_steps} steps; raise config.num_epochs or set '
      'config.num_train_steps.'
    )
  # A short run (tests, --config.num_train_steps) keeps at least one step after warmup:
  # optax's cosine decay needs decay_steps > warmup_steps.
  warmup_steps = min(
    total_steps - 1, int(config.optimizer.warmup_epochs * steps_per_epoch)
  )
  params = model.param_shapes(train_imsize)
  optimizer, schedule = optim.build_optimizer(
    config.optimizer,
    params=params,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    global_batch_size=config.train_batch_size,
  )
  identity = dict(
    model=config.model,
    model_kwargs=json.loads(config.model_kwargs.to_json()),
    num_classes=num_classes,
  )
  return Setup(
    model=model,
    optimizer=optimizer,
    schedule=schedule,
    train_imsize=train_imsize,
    eval_imsize=eval_imsize,
    per_device_batch=per_device,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    steps_per_epoch=steps_per_epoch,
    num_classes=num_classes,
    identity=identity,
  )


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


# ----------------------------------------------------------------------------
# The training step.
# ----------------------------------------------------------------------------


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


def step_rng(
  base_rng: jax.Array, step: jax.Array, axis_name: str | None = AXIS
) -> jax.Array:
  """Key for one device at one step: fold in the global step, then the global device index.

  Without a device axis (one device under ``jax.jit``) the index is 0, so the key is the
  one a one-device ``pmap`` draws.
  """
  index = 0 if axis_name is None else jax.lax.axis_index(axis_name)
  return jax.random.fold_in(jax.random.fold_in(base_rng, step), index)


def make_train_step(
  model: nfnets.Model,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
  axis_name: str | None = AXIS,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The training step: loss, gradients, AGC and the optimizer, EMA, metrics.

  The per-device step; ``pmap`` it over ``axis_name`` (gradients, batch statistics and
  metrics are averaged over it). ``axis_name=None`` gives the same step for one device
  under ``jax.jit`` (no cross-device means), as :func:`make_jitted_train_step` does.
  ``batch`` holds ``images``, ``labels`` and, with MixUp/CutMix, ``mix_labels`` and
  ``ratio``.
  """
  opt_config = config.optimizer

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

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
    rng = step_rng(state.rng, state.step, axis_name)
    if opt_config.get('sam_rho'):
      # SAM (nfnets/sam.py): the ascent sees this device's own sub-batch and is
      # not averaged across devices; only the descent gradient is (below).
      # Model state (BatchNorm statistics) comes from the unperturbed pass.
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
      grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
      (loss, (logits, model_state)), grads = grad_fn(
        state.params, state.model_state, batch, rng
      )
    grads = pmean(grads)
    # Batch statistics (if any) are averaged too, so every replica holds the same state.
    model_state = jax.tree_util.tree_map(
      lambda x: pmean(x) if jnp.issubdtype(x.dtype, jnp.floating) else x,
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
    metrics = pmean(metrics)
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


def make_jitted_train_step(
  model: nfnets.Model,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """:func:`make_train_step` for one device, jitted, the state donated (timing, studies)."""
  step = make_train_step(model, optimizer, schedule, config, axis_name=None)
  return jax.jit(step, donate_argnums=0)


# ----------------------------------------------------------------------------
# Evaluation (the loop evaluates; experiments/evaluate.py adds checkpoints and
# published weights on top of the same Evaluator).
# ----------------------------------------------------------------------------


def ws_numerics(model: nfnets.Model) -> dict[str, layers.WSNumerics]:
  """Each WSConv2D's numerics (official or timm's eps), by module name.

  From an abstract trace of the model's init, so that ``layers.standardize_params`` folds
  every convolution as its own forward pass standardizes it (``dm_nfnet_f*`` differ).
  """
  res = model.test_imsize or 224
  images = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  with layers.recording_ws_numerics() as numerics:
    # A fresh function each time: a cached trace would record nothing.
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  return numerics


def make_eval_step(
  model: nfnets.Model,
  config: ml_collections.ConfigDict,
  numerics: layers.Numerics | None = None,
) -> Callable[[Any, Any, dict], dict]:
  """Per-device eval on a masked batch; returns psum-ed counts and sums (exact totals).

  ``params`` come from ``layers.standardize_params(params, numerics)``: weights are
  standardized once per evaluation, not in every batch's forward pass. ``numerics`` default
  to the model's own (:func:`ws_numerics`).
  """
  dtype = eval_dtype(config)
  numerics = ws_numerics(model) if numerics is None else numerics

  def eval_step(params, model_state, batch):
    images = batch['images'].astype(dtype)
    with layers.standardized_weights(numerics):
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


class Evaluator:
  """A pmapped eval step compiled once and reused for every evaluation of a run."""

  def __init__(self, model, config: ml_collections.ConfigDict):
    self.config = config
    self.model = model
    numerics = ws_numerics(model)
    self._step = jax.pmap(
      make_eval_step(model, config, numerics), axis_name=AXIS
    )
    # Weight standardization once per evaluation, not in every batch's forward pass, each
    # convolution with its own numerics.
    self._standardize = jax.pmap(
      functools.partial(layers.standardize_params, numerics=numerics)
    )

  def batches(self, split: str, image_size: int):
    per_device = per_device_batch(
      self.config.eval_batch_size, 'eval_batch_size'
    )
    dtype = eval_dtype(self.config)
    return pipeline.build_input(
      self.config.dataset,
      split,
      is_training=False,
      batch_dims=[jax.local_device_count(), per_device],
      image_size=image_size,
      data_dir=self.config.data_dir,
      eval_preproc=self.config.eval_preproc,
      dtype=dtype,
    )

  def run(
    self, params, model_state, *, split: str, image_size: int, batches=None
  ) -> dict:
    """``params``/``model_state`` replicated over local devices. Returns global metrics."""
    batches = self.batches(split, image_size) if batches is None else batches
    params = self._standardize(params)
    totals = None
    start, first_count = time.time(), 0.0
    for batch in batches:
      sums = self._step(params, model_state, batch)
      if (
        totals is None
      ):  # time from after the first batch: excludes compilation
        first_count = float(jax.device_get(sums['count'])[0])
        start = time.time()
      totals = (
        sums
        if totals is None
        else jax.tree_util.tree_map(jnp.add, totals, sums)
      )
    if totals is None:
      raise ValueError(
        f'Split {split!r} of {self.config.dataset} yielded no batches.'
      )
    totals = {k: float(v[0]) for k, v in jax.device_get(totals).items()}
    elapsed = time.time() - start
    count = totals['count']
    timed = count - first_count
    return {
      'top1': totals['top1'] / count,
      'top5': totals['top5'] / count,
      'loss': totals['loss'] / count,
      'count': int(round(count)),
      'images_per_sec': timed / elapsed
      if timed and elapsed > 0
      else float('nan'),
    }


# ----------------------------------------------------------------------------
# Moving trees between the host and the local devices.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# The host loop.
# ----------------------------------------------------------------------------


def data_dtype(config):
  return compute_dtype(config) if config.bfloat16 else np.float32


class _StopFlag:
  """Set by SIGTERM (preemption): the loop checkpoints and exits at the next step."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del frame
    logging.warning('Received signal %d: checkpointing and stopping.', signum)
    self.requested = True


class _Writer:
  """TensorBoard scalars and a metrics.jsonl from process 0 only (a no-op elsewhere)."""

  def __init__(self, workdir: str):
    self._writer = None
    self._jsonl = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(os.path.join(workdir, 'tb'))
      self._jsonl = os.path.join(workdir, 'metrics.jsonl')

  def scalars(self, step: int, values: dict, prefix: str) -> None:
    if self._writer is None:
      return
    for key, value in values.items():
      self._writer.add_scalar(f'{prefix}/{key}', float(value), step)
    self._writer.flush()
    with open(self._jsonl, 'a') as f:
      f.write(
        json.dumps(
          {
            'split': prefix,
            'step': step,
            **{k: float(v) for k, v in values.items()},
          }
        )
        + '\n'
      )

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def _check_finite(
  host_state, step: int, ckpt: checkpointing.Checkpointer
) -> None:
  """Refuses to checkpoint NaN/Inf parameters (the previous checkpoint stays the newest)."""
  for name in ('params', 'ema_params'):
    leaves = jax.tree_util.tree_leaves(getattr(host_state, name))
    if not all(
      np.all(np.isfinite(x))
      for x in leaves
      if np.issubdtype(np.asarray(x).dtype, np.floating)
    ):
      latest = ckpt.latest_step()
      raise FloatingPointError(
        f'{name} hold NaN/Inf after step {step}; stopping without saving. The newest '
        f'checkpoint ({"none" if latest is None else f"step {latest}"}) in '
        f'{ckpt.directory} holds the last good state and was left as is. Lower '
        'config.optimizer.lr_per_256 or enable AGC (config.optimizer.clipping).'
      )


def _evaluate(
  evaluator, rstate, config, setup: Setup, step: int, writer: _Writer
) -> dict:
  params = rstate.ema_params if config.optimizer.use_ema else rstate.params
  result = evaluator.run(
    params,
    rstate.model_state,
    split=config.eval_split,
    image_size=setup.eval_imsize,
  )
  logging.info(
    'eval step %d on %s (%s params, %d px): top1 %.4f  top5 %.4f  loss %.4f  '
    '(%d images, %.1f img/s)',
    step,
    config.eval_split,
    'EMA' if config.optimizer.use_ema else 'raw',
    setup.eval_imsize,
    result['top1'],
    result['top5'],
    result['loss'],
    result['count'],
    result['images_per_sec'],
  )
  writer.scalars(step, result, 'eval')
  return result


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _loop(
  config,
  setup: Setup,
  state,
  start: int,
  ckpt: checkpointing.Checkpointer,
  writer: _Writer,
  stop: _StopFlag,
  stop_at_step: int | None,
  batches_fn,
) -> dict:
  total = setup.total_steps
  end = total if stop_at_step is None else min(total, stop_at_step)
  p_train = jax.pmap(
    make_train_step(setup.model, setup.optimizer, setup.schedule, config),
    axis_name=AXIS,
    donate_argnums=(0,),
  )
  evaluator = Evaluator(setup.model, config)
  if batches_fn is not None:
    batches = batches_fn(start)
  else:
    batches = pipeline.build_input(
      config.dataset,
      config.train_split,
      is_training=True,
      batch_dims=[jax.local_device_count(), setup.per_device_batch],
      image_size=setup.train_imsize,
      data_dir=config.data_dir,
      augment=config.augment,
      augment_mode=config.get('augment_mode', 'official'),
      augment_before_mix=config.get('augment_before_mix', True),
      dtype=data_dtype(config),
      seed=config.seed,
      start_step=start,
    )
  batches = prefetch_to_device(batches, size=PREFETCH_BATCHES)
  rstate = replicate(state)
  history = []
  step = start
  t_last, step_last, t_start = time.time(), start, time.time()
  stopped_early = False

  def host_metrics(metrics) -> dict:
    values = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values['loss']):
      latest = ckpt.latest_step()
      raise FloatingPointError(
        f'Training loss is {values["loss"]} at step {step}; stopping. The newest '
        f'checkpoint ({"none" if latest is None else f"step {latest}"}) in '
        f'{ckpt.directory} holds the last good state and was left as is. Lower '
        'config.optimizer.lr_per_256 or enable AGC (config.optimizer.clipping).'
      )
    return values

  while step < end:
    batch = next(batches)
    rstate, metrics = p_train(rstate, batch)
    step += 1
    is_last = step == end
    log_now = step % config.log_every_steps == 0 or is_last
    save_now = (step % config.checkpoint_every_steps == 0) or is_last
    preempted = (
      _any_process(stop.requested)
      if (log_now or jax.process_count() == 1)
      else False
    )
    if log_now or save_now or preempted:
      values = host_metrics(metrics)
      history.append((step, values))
    if log_now:
      now = time.time()
      rate = (
        (step - step_last) * config.train_batch_size / max(now - t_last, 1e-9)
      )
      eta = (total - step) * (now - t_start) / max(step - start, 1)
      logging.info(
        'step %d/%d  loss %.4f  top1 %.3f  lr %.4g  grad_norm %.3g  '
        'agc_clip %.3f  %.1f img/s  ETA %s',
        step,
        total,
        values['loss'],
        values['top1'],
        values['lr'],
        values['grad_norm'],
        values['agc_clip_fraction'],
        rate,
        _hms(eta),
      )
      writer.scalars(step, dict(values, images_per_sec=rate), 'train')
      t_last, step_last = now, step
    if save_now or preempted:
      host_state = unreplicate(rstate)
      _check_finite(host_state, step, ckpt)
      ckpt.save(host_state, step)
    if preempted:
      logging.warning(
        'Stopped at step %d after a termination signal; rerun the same '
        'command to resume.',
        step,
      )
      stopped_early = True
      break
    if (
      config.eval_every_steps
      and step % config.eval_every_steps == 0
      and step < total
    ):
      _evaluate(evaluator, rstate, config, setup, step, writer)

  final_eval = None
  if step == total and not stopped_early:
    final_eval = _evaluate(evaluator, rstate, config, setup, step, writer)
  return {
    'history': history,
    'eval': final_eval,
    'state': unreplicate(rstate),
    'stopped_early': stopped_early or step < total,
  }


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stop_at_step: int | None = None,
  batches_fn: Callable[[int], Iterator[dict]] | None = None,
) -> dict:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates at the end.

  Returns {'history': [(step, metrics)] at log steps, 'eval': final eval metrics or None,
  'state': the final host TrainState, 'stopped_early': bool}. ``batches_fn(start_step)``
  replaces the configured input pipeline (tests, custom data).
  """
  setup = build_setup(config)
  logging.info('Config:\n%s', config)
  logging.info(
    '%s: %d steps (%.1f epochs of %.4g steps), warmup %d, %d devices on %d '
    'process(es), per-device batch %d, %d px train / %d px eval.',
    config.model,
    setup.total_steps,
    setup.total_steps / setup.steps_per_epoch,
    setup.steps_per_epoch,
    setup.warmup_steps,
    jax.device_count(),
    jax.process_count(),
    setup.per_device_batch,
    setup.train_imsize,
    setup.eval_imsize,
  )
  template = init_state(
    setup.model, setup.optimizer, config, setup.train_imsize
  )
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'),
    max_to_keep=config.max_to_keep,
    identity=setup.identity,
  )
  restored = ckpt.restore(template)
  # A new run may start from another run's or a file's params (config.init_from); a
  # resumed run continues from its own checkpoint only.
  state = restored
  if state is None:
    state = init_from.initial_state(
      jax.device_get(template), config, setup.model, setup.optimizer
    )
  start = int(state.step)
  if start == 0:
    logging.info(
      'Parameter groups:\n%s',
      optim.describe_param_groups(state.params, config.optimizer),
    )
  else:
    logging.info('Resuming at step %d.', start)
  if batches_fn is None and jax.process_index() == 0:
    run_info.write(workdir, config.dataset, config.data_dir, config)
  writer = _Writer(workdir)
  stop = _StopFlag()
  previous_handler = signal.signal(signal.SIGTERM, stop)
  try:
    return _loop(
      config, setup, state, start, ckpt, writer, stop, stop_at_step, batches_fn
    )
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    writer.close()
    ckpt.close()


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() for --multihost or when JAX_COORDINATOR_ADDRESS is set."""
  if not (
    _MULTIHOST.value
    or _COORDINATOR.value
    or os.environ.get('JAX_COORDINATOR_ADDRESS')
  ):
    return
  # CPU collectives across processes need an implementation (gloo ships with jaxlib); the
  # setting only affects the CPU backend. (No backend query here: initialize() must come
  # before anything that starts a backend.)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if _COORDINATOR.value:
    kwargs = dict(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  jax.distributed.initialize(**kwargs)
  logging.info(
    'Process %d of %d; %d local / %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def configure_runtime() -> None:
  """``nfnets.runtime.configure_cpu`` as --keep_host_step_buffers says, logged."""
  logging.info('%s', runtime.configure_cpu(KEEP_HOST_STEP_BUFFERS.value))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if CONFIG.value is None:
    raise app.UsageError(
      f'Pass --config=NAME (one of {config_lib.list_names()}) or a path.'
    )
  if not WORKDIR.value:
    raise app.UsageError(
      'Pass --workdir=DIR (checkpoints and TensorBoard events).'
    )
  maybe_initialize_distributed()
  configure_runtime()
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  result = train_and_evaluate(
    CONFIG.value, WORKDIR.value, stop_at_step=_MAX_STEPS.value
  )
  if result['eval'] is not None and jax.process_index() == 0:
    ev = result['eval']
    print(
      f'Final {CONFIG.value.eval_split} top-1 {ev["top1"]:.4f}, top-5 '
      f'{ev["top5"]:.4f}, loss {ev["loss"]:.4f} ({ev["count"]} images).'
    )


if __name__ == '__main__':
  config_lib.run(main)
