"""What a run is made of, shared by training and evaluation: the setup a config implies
(model, optimizer, schedule lengths, resolutions) and a compiled, reusable evaluator."""

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import pipeline
from experiments import checkpointing, train_lib
from nfnets import layers, optim


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
  per_device = train_lib.per_device_batch(config.train_batch_size)
  train_lib.per_device_batch(config.eval_batch_size, 'eval_batch_size')
  num_classes = pipeline.num_classes(config.dataset, config.data_dir)
  model = train_lib.create_model(config, num_classes)
  train_imsize, eval_imsize = train_lib.image_sizes(config, model)
  num_train = pipeline.num_examples(
    config.dataset, config.train_split, config.data_dir
  )
  steps_per_epoch = num_train / config.train_batch_size
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


class Evaluator:
  """A pmapped eval step compiled once and reused for every evaluation of a run."""

  def __init__(self, model, config: ml_collections.ConfigDict):
    self.config = config
    self.model = model
    self._step = jax.pmap(
      train_lib.make_eval_step(model, config), axis_name=train_lib.AXIS
    )
    # Weight standardization once per evaluation, not in every batch's forward pass.
    self._standardize = jax.pmap(layers.standardize_params)

  def batches(self, split: str, image_size: int):
    per_device = train_lib.per_device_batch(
      self.config.eval_batch_size, 'eval_batch_size'
    )
    dtype = jnp.bfloat16 if self.config.bfloat16 else np.float32
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


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  split: str | None = None,
  use_ema: bool | None = None,
) -> dict:
  """Restores the newest good checkpoint under ``workdir`` and evaluates it."""
  setup = build_setup(config)
  template = train_lib.init_state(
    setup.model, setup.optimizer, config, setup.train_imsize
  )
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'),
    max_to_keep=config.max_to_keep,
    identity=setup.identity,
  )
  try:
    state = ckpt.restore(template)
  finally:
    ckpt.close()
  if state is None:
    raise ValueError(
      f'No checkpoint under {os.path.join(workdir, "checkpoints")}.'
    )
  use_ema = config.optimizer.use_ema if use_ema is None else use_ema
  params = state.ema_params if use_ema else state.params
  evaluator = Evaluator(setup.model, config)
  result = evaluator.run(
    train_lib.replicate(params),
    train_lib.replicate(state.model_state),
    split=split or config.eval_split,
    image_size=setup.eval_imsize,
  )
  result.update(
    step=int(state.step),
    image_size=setup.eval_imsize,
    split=split or config.eval_split,
    params='EMA' if use_ema else 'raw',
  )
  return result


def evaluate_weights(
  config: ml_collections.ConfigDict, path: str, *, split: str | None = None
) -> dict:
  """Evaluates published/exported params: an official ``F*_haiku.npz`` (a dill pickle, read
  without running code) or our ``weights.save_npz`` format, checked against the model first."""
  from nfnets import weights

  setup = build_setup(config)
  try:
    params = weights.load_npz(path)
  except (
    ValueError
  ):  # not a plain npz: try the official pickle (safe unpickler)
    params = weights.load_official(path)
  weights.check_params(
    params, setup.model.param_shapes(setup.eval_imsize), source=path
  )
  _, model_state = setup.model.init(
    jax.random.PRNGKey(0),
    jnp.zeros((1, setup.eval_imsize, setup.eval_imsize, 3), jnp.float32),
  )
  evaluator = Evaluator(setup.model, config)
  split = split or config.eval_split
  result = evaluator.run(
    train_lib.replicate(params),
    train_lib.replicate(model_state),
    split=split,
    image_size=setup.eval_imsize,
  )
  result.update(step=-1, image_size=setup.eval_imsize, split=split, params=path)
  return result
