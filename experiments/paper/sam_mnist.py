r"""SAM in miniature: the same small NFNet on the embedded digits with and without SAM.

Trains the `demo` config's network (an F0-deep NFNet at 1/8 width, 32 px) with the trainer's
own step (``experiments.train.make_train_step``) for the same number of steps, with SAM off
and on (the paper's 20% ascent), over a few seeds, and reports per run:
- held-out top-1 on the 1,000 test digits (raw params, inference mode);
- sharpness at the end of training, on a fixed 1,000-digit subset of the training set, as the
  loss increase under a perturbation of global L2 radius ``--radius``: worst case to first
  order (``radius * g / ||g||`` with g the full-subset gradient, SAM's own estimate), and
  random (Gaussian direction scaled to the radius, mean over ``--random_draws``).

  python -m experiments.paper.sam_mnist                    # 3 seeds x {plain, SAM}
  python -m experiments.paper.sam_mnist --seeds=0,1 --steps=200

Same budget means the same steps and batches: a SAM step costs more compute (see
docs/sam.md). Batches are drawn in numpy from the embedded digits (padded to 32 px,
normalized), identically for both runs of a seed.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from data import embedded_mnist
from experiments import config_lib, train
from nfnets import optim, sam

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (init and data).')
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps of every run.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Batch size.')
_RHO = flags.DEFINE_float('rho', 0.05, 'SAM radius of the SAM runs.')
_FRACTION = flags.DEFINE_float('ascent_fraction', 0.2, 'SAM ascent fraction.')
_RADIUS = flags.DEFINE_float('radius', 0.05, 'Radius of the sharpness probe.')
_DRAWS = flags.DEFINE_integer('random_draws', 5, 'Random perturbations.')
_TRAIN_LIMIT = flags.DEFINE_integer(
  'train_examples', 4000, 'Training digits used (the first N of the split).'
)

MEAN, STD = 0.1307 * 255, 0.3081 * 255  # MNIST pixel statistics


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, 32, 32, 3] float32 (zero-padded 28 px, normalized) and labels int32."""
  images, labels = embedded_mnist.load_digits()
  idx = embedded_mnist.stratified_indices()[split]
  x = (images[idx].astype(np.float32) - MEAN) / STD
  x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-MEAN / STD)
  return np.repeat(x, 3, axis=-1), labels[idx].astype(np.int32)


def make_config(seed: int, steps: int, batch_size: int, rho: float):
  config = config_lib.get_config('demo')
  config.seed = seed
  config.train_batch_size = batch_size
  config.num_train_steps = steps
  config.optimizer.use_ema = False  # everything is measured on the raw params
  config.optimizer.sam_rho = rho
  config.optimizer.sam_ascent_fraction = _FRACTION.value
  return config


def train_run(config, train_x, train_y, batch_order):
  """Trains with the trainer's pmapped step on one device; returns the final params."""
  model = train.create_model(config, num_classes=10)
  steps = config.num_train_steps
  optimizer, schedule = optim.build_optimizer(
    config.optimizer,
    params=model.param_shapes(32),
    total_steps=steps,
    warmup_steps=int(steps * 0.05),
    global_batch_size=config.train_batch_size,
  )
  devices = jax.devices()[:1]
  step = jax.pmap(
    train.make_train_step(model, optimizer, schedule, config),
    axis_name=train.AXIS,
    devices=devices,
    donate_argnums=0,
  )
  state = train.replicate(
    jax.device_get(train.init_state(model, optimizer, config, 32)), devices
  )
  for idx in batch_order:
    batch = {'images': train_x[idx][None], 'labels': train_y[idx][None]}
    state, metrics = step(state, batch)
  loss = float(metrics['loss'][0])
  return model, train.unreplicate(state), loss


def evaluate(model, params, model_state, x, y, radius, draws, rng):
  """(test-style top-1 and loss on x, worst-case and random loss increases)."""

  def loss_fn(p, images, labels):
    out, _ = model.apply(p, model_state, None, images, is_training=False)
    logits = out['logits']
    ce = train.smoothed_cross_entropy(logits, labels, 0.0)
    return jnp.mean(ce), jnp.mean(jnp.argmax(logits, -1) == labels)

  fn = jax.jit(loss_fn)
  grad = jax.jit(jax.grad(lambda p, a, b: loss_fn(p, a, b)[0]))
  base, top1 = fn(params, x, y)
  eps, _ = sam.perturbation(grad(params, x, y), radius)
  worst = fn(jax.tree.map(jnp.add, params, eps), x, y)[0] - base
  increases = []
  for _ in range(draws):
    noise = jax.tree.map(
      lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32), params
    )
    eps, _ = sam.perturbation(noise, radius)
    increases.append(
      float(fn(jax.tree.map(jnp.add, params, eps), x, y)[0] - base)
    )
  return float(top1), float(base), float(worst), float(np.mean(increases))


def main(argv):
  del argv
  train_x, train_y = load_split('train')
  test_x, test_y = load_split('test')
  train_x = train_x[: _TRAIN_LIMIT.value]
  train_y = train_y[: _TRAIN_LIMIT.value]
  probe = np.random.RandomState(1234).permutation(len(train_x))[:1000]
  rows = []
  for seed in [int(s) for s in _SEEDS.value]:
    data_rng = np.random.RandomState(seed)
    order = []
    while len(order) < _STEPS.value:
      perm = data_rng.permutation(len(train_x))
      for i in range(0, len(perm) - _BATCH.value + 1, _BATCH.value):
        order.append(perm[i : i + _BATCH.value])
    order = order[: _STEPS.value]
    for rho in (0.0, _RHO.value):
      config = make_config(seed, _STEPS.value, _BATCH.value, rho)
      start = time.perf_counter()
      model, state, train_loss = train_run(config, train_x, train_y, order)
      seconds = time.perf_counter() - start
      test_top1, test_loss, _, _ = evaluate(
        model,
        state.params,
        state.model_state,
        test_x,
        test_y,
        0.0,
        0,
        np.random.RandomState(0),
      )
      _, probe_loss, worst, rand = evaluate(
        model,
        state.params,
        state.model_state,
        train_x[probe],
        train_y[probe],
        _RADIUS.value,
        _DRAWS.value,
        np.random.RandomState(seed),
      )
      row = dict(
        seed=seed,
        sam=rho > 0,
        test_top1=test_top1,
        test_loss=test_loss,
        train_loss=probe_loss,
        worst=worst,
        random=rand,
        seconds=seconds,
      )
      rows.append(row)
      print(
        f'seed {seed} {"SAM  " if rho else "plain"}: test top-1 '
        f'{test_top1:.4f}, test loss {test_loss:.4f}, train loss '
        f'{probe_loss:.4f}, sharpness worst {worst:.4f} random {rand:.2e} '
        f'({seconds:.0f} s)',
        flush=True,
      )
  print(
    f'\n{_STEPS.value} steps x batch {_BATCH.value}, SAM rho {_RHO.value} '
    f'ascent {_FRACTION.value}, probe radius {_RADIUS.value}; '
    'mean [min-max] over seeds:'
  )
  print(
    '| run | test top-1 | test loss | train loss | worst-case increase '
    '| random increase | seconds |'
  )
  print('|---|---|---|---|---|---|---|')
  for use_sam in (False, True):
    sel = [r for r in rows if r['sam'] == use_sam]

    def cell(key, fmt, sel=sel):
      vals = [r[key] for r in sel]
      return (
        f'{fmt.format(statistics.mean(vals))} '
        f'[{fmt.format(min(vals))}-{fmt.format(max(vals))}]'
      )

    print(
      f'| {"SAM" if use_sam else "plain"} | {cell("test_top1", "{:.4f}")} | '
      f'{cell("test_loss", "{:.4f}")} | {cell("train_loss", "{:.4f}")} | '
      f'{cell("worst", "{:.4f}")} | {cell("random", "{:.2e}")} | '
      f'{cell("seconds", "{:.0f}")} |'
    )


if __name__ == '__main__':
  app.run(main)
