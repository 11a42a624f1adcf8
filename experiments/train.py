r"""Train a model from a config: `python -m experiments.train --config=nfnet_f0 --workdir=DIR`.

The config is a name (`nfnet_f1`, `nfnet_f3_plus`, `demo`; see experiments/config_lib.py) or a
path to a config file, and any field can be overridden:

    python -m experiments.train --config=nfnet_f0 --workdir=/ckpt/f0 \
        --config.data_dir=/data/tfds --config.train_batch_size=1024

Re-running with the same --workdir resumes from the newest checkpoint exactly (same losses as an
unbroken run). Multi-host (TPU pod, GPU cluster): run the same command on every host with
--multihost (or with JAX_COORDINATOR_ADDRESS set); each host reads its own shard of the data and
process 0 writes logs and TensorBoard events.
"""

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from data import pipeline
from experiments import (
  checkpointing,
  config_lib,
  experiment,
  host_memory,
  run_info,
  train_lib,
)
from nfnets import optim

# Batches copied to the devices ahead of the step that uses them.
PREFETCH_BATCHES = 2

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Config name (e.g. nfnet_f1, demo) or path/to/config.py[:arg].',
  lock_config=False,
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Checkpoints and TensorBoard events go here.'
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


def data_dtype(config):
  return train_lib.compute_dtype(config) if config.bfloat16 else np.float32


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
  setup = experiment.build_setup(config)
  logging.info('Config:\n%s', config)
  logging.info(
    '%s: %d steps (%.1f epochs of %.0f steps), warmup %d, %d devices on %d '
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
  template = train_lib.init_state(
    setup.model, setup.optimizer, config, setup.train_imsize
  )
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'),
    max_to_keep=config.max_to_keep,
    identity=setup.identity,
  )
  restored = ckpt.restore(template)
  state = restored if restored is not None else jax.device_get(template)
  start = int(state.step)
  if start == 0:
    logging.info(
      'Parameter groups:\n%s',
      optim.describe_param_groups(state.params, config.optimizer),
    )
  else:
    logging.info('Resuming at step %d.', start)
  if batches_fn is None and jax.process_index() == 0:
    run_info.write(workdir, config.dataset, config.data_dir)
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


def _loop(
  config,
  setup: experiment.Setup,
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
    train_lib.make_train_step(
      setup.model, setup.optimizer, setup.schedule, config
    ),
    axis_name=train_lib.AXIS,
    donate_argnums=(0,),
  )
  evaluator = experiment.Evaluator(setup.model, config)
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
      dtype=data_dtype(config),
      seed=config.seed,
      start_step=start,
    )
  batches = train_lib.prefetch_to_device(batches, size=PREFETCH_BATCHES)
  rstate = train_lib.replicate(state)
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
      host_state = train_lib.unreplicate(rstate)
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
    'state': train_lib.unreplicate(rstate),
    'stopped_early': stopped_early or step < total,
  }


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
  evaluator, rstate, config, setup: experiment.Setup, step: int, writer: _Writer
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if _CONFIG.value is None:
    raise app.UsageError(
      f'Pass --config=NAME (one of {config_lib.list_names()}) or a path.'
    )
  if not _WORKDIR.value:
    raise app.UsageError(
      'Pass --workdir=DIR (checkpoints and TensorBoard events).'
    )
  maybe_initialize_distributed()
  host_memory.apply_from_flags()
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  result = train_and_evaluate(
    _CONFIG.value, _WORKDIR.value, stop_at_step=_MAX_STEPS.value
  )
  if result['eval'] is not None and jax.process_index() == 0:
    ev = result['eval']
    print(
      f'Final {_CONFIG.value.eval_split} top-1 {ev["top1"]:.4f}, top-5 '
      f'{ev["top5"]:.4f}, loss {ev["loss"]:.4f} ({ev["count"]} images).'
    )


def run() -> None:
  """Entry point: resolves `--config=NAME` before absl parses flags."""
  sys.argv = config_lib.resolve_argv(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
