"""Evaluating a finished or running training: its newest checkpoint, or published weights.

Built on experiments/train.py's set-up and Evaluator (the one the training loop uses), so an
evaluation here computes what the loop logs.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections

from experiments import checkpointing, train
from nfnets import weights


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  split: str | None = None,
  use_ema: bool | None = None,
) -> dict:
  """Restores the newest good checkpoint under ``workdir`` and evaluates it."""
  setup = train.build_setup(config)
  template = train.init_state(
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
  evaluator = train.Evaluator(setup.model, config)
  result = evaluator.run(
    train.replicate(params),
    train.replicate(state.model_state),
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
  setup = train.build_setup(config)
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
  evaluator = train.Evaluator(setup.model, config)
  split = split or config.eval_split
  result = evaluator.run(
    train.replicate(params),
    train.replicate(model_state),
    split=split,
    image_size=setup.eval_imsize,
  )
  result.update(step=-1, image_size=setup.eval_imsize, split=split, params=path)
  return result
