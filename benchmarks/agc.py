r"""AGC's overhead on one NFNet training step (forward, backward, optimizer), on this host.

Times the trainer's step (``experiments.train.make_jitted_train_step``, through
benchmarks/train_step.py) with the paper's optimizer twice, once with AGC
(clipping=0.01) and once without (clipping=None), interleaving the two so that load from other
processes hits both alike, and reports the median step times and their ratio. It also times the
optimizer update alone with and without AGC: AGC's cost scales with the parameter count, not
with the batch, so that absolute figure predicts the ratio at any batch size.

  python -m benchmarks.agc --batch=8 --resolution=192   # the paper's F0 train size
  python -m benchmarks.agc                              # small default, a few minutes
"""

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

import nfnets
from benchmarks import train_step
from nfnets import counting

_MODEL = flags.DEFINE_string('model', 'nfnet_f0', 'Registered model name.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Images per step.')
_RES = flags.DEFINE_integer('resolution', 128, 'Square input resolution.')
_REPEATS = flags.DEFINE_integer(
  'repeats', 5, 'Timed steps per variant (interleaved).'
)
_WIDTH = flags.DEFINE_float('width', 1.0, 'Model width multiplier.')


def _time(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main(argv):
  del argv
  model = nfnets.create_model(_MODEL.value, width=_WIDTH.value)
  n_params = counting.count_params(model.param_shapes(_RES.value))
  logging.info(
    '%s: %s parameters, batch %d at %dpx',
    model.name,
    f'{n_params:,}',
    _BATCH.value,
    _RES.value,
  )

  variants = {}
  for name, clipping in (('with AGC', 0.01), ('without AGC', None)):
    config = train_step.step_config(jnp.float32)
    config.optimizer.clipping = clipping
    step, state, (batch,), compile_s = train_step.compiled_train_step(
      model,
      batch_size=_BATCH.value,
      image_size=_RES.value,
      dtype=jnp.float32,
      seed=0,
      config=config,
    )
    _, optimizer = train_step.build_train_step(
      model, config, params=state.params, batch_size=_BATCH.value
    )
    update = jax.jit(lambda g, s, p, tx=optimizer: tx.update(g, s, p)[0])
    # A state of its own: the step donates its input.
    params = jax.tree_util.tree_map(jnp.copy, state.params)
    opt_state = jax.tree_util.tree_map(jnp.copy, state.opt_state)
    _time(update, params, opt_state, params)
    state, _ = step(state, batch)  # warm-up, untimed
    logging.info('%s: compiled the step in %.1f s', name, compile_s)
    variants[name] = [step, update, state, batch, params, opt_state]

  step_times = {k: [] for k in variants}
  update_times = {k: [] for k in variants}
  for _ in range(_REPEATS.value):
    for name, variant in variants.items():
      step, update, state, batch, params, opt_state = variant
      start = time.perf_counter()
      variant[2], metrics = step(state, batch)
      jax.block_until_ready(metrics)
      step_times[name].append(time.perf_counter() - start)
      for _ in range(3):
        update_times[name].append(_time(update, params, opt_state, params))

  med = {k: statistics.median(v) for k, v in step_times.items()}
  upd = {k: statistics.median(v) for k, v in update_times.items()}
  agc_cost = upd['with AGC'] - upd['without AGC']
  print(
    f'{model.name} (width {_WIDTH.value}), {n_params:,} params, batch {_BATCH.value} at '
    f'{_RES.value}px, {jax.device_count()} {jax.default_backend()} device(s), '
    f'{_REPEATS.value} interleaved steps each'
  )
  print(
    f'{"":<12} {"train step (median)":>20} {"optimizer update (median)":>26}'
  )
  for name in variants:
    print(f'{name:<12} {med[name] * 1e3:>17.1f} ms {upd[name] * 1e3:>23.1f} ms')
  print(
    f'step ratio with/without AGC: {med["with AGC"] / med["without AGC"]:.4f} '
    f'(min-based: {min(step_times["with AGC"]) / min(step_times["without AGC"]):.4f})'
  )
  print(
    f'AGC alone: {agc_cost * 1e3:.1f} ms per step '
    f'({agc_cost / med["without AGC"] * 100:.2f}% of this step; '
    f'{agc_cost / n_params * 1e9:.2f} ns per parameter)'
  )


if __name__ == '__main__':
  app.run(main)
