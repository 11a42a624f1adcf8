r"""AGC's overhead on one NFNet training step (forward, backward, optimizer), on this host.

Times the same jitted train step with the paper's optimizer twice, once with AGC
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
import optax
from absl import app, flags, logging

import nfnets
from nfnets import optim

_MODEL = flags.DEFINE_string('model', 'nfnet_f0', 'Registered model name.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Images per step.')
_RES = flags.DEFINE_integer('resolution', 128, 'Square input resolution.')
_REPEATS = flags.DEFINE_integer(
  'repeats', 5, 'Timed steps per variant (interleaved).'
)
_WIDTH = flags.DEFINE_float('width', 1.0, 'Model width multiplier.')


def _make_step(model, tx):
  def loss_fn(params, state, rng, images, labels):
    out, state = model.apply(params, state, rng, images, is_training=True)
    logp = jax.nn.log_softmax(out['logits'])
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), state

  @jax.jit
  def step(params, state, opt_state, rng, images, labels):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, state, rng, images, labels
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  return step


def _time(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main(argv):
  del argv
  model = nfnets.create_model(_MODEL.value, width=_WIDTH.value)
  rng = jax.random.PRNGKey(0)
  images = jax.random.normal(
    rng, (_BATCH.value, _RES.value, _RES.value, 3), jnp.float32
  )
  labels = jnp.arange(_BATCH.value, dtype=jnp.int32) % model.num_classes
  params, state = jax.jit(lambda r, x: model.init(r, x))(rng, images)
  n_params = nfnets.count_params(params)
  logging.info(
    '%s: %s parameters, batch %d at %dpx',
    model.name,
    f'{n_params:,}',
    _BATCH.value,
    _RES.value,
  )

  variants = {}
  for name, clipping in (('with AGC', 0.01), ('without AGC', None)):
    cfg = optim.default_config()
    cfg.clipping = clipping
    tx, _ = optim.build_optimizer(
      cfg,
      params=params,
      total_steps=1000,
      warmup_steps=10,
      global_batch_size=_BATCH.value,
    )
    opt_state = tx.init(params)
    step = _make_step(model, tx)
    update = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p)[0])
    compile_s = _time(step, params, state, opt_state, rng, images, labels)
    _time(update, params, opt_state, params)
    logging.info('%s: first call (compile + run) %.1f s', name, compile_s)
    variants[name] = (step, update, opt_state)

  step_times = {k: [] for k in variants}
  update_times = {k: [] for k in variants}
  for _ in range(_REPEATS.value):
    for name, (step, update, opt_state) in variants.items():
      step_times[name].append(
        _time(step, params, state, opt_state, rng, images, labels)
      )
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
