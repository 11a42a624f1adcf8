r"""Step time of the trainer's own step with and without SAM, in one run.

Builds ``experiments.train.make_train_step`` three times from the same config, switching
only ``config.optimizer.sam_rho`` / ``sam_ascent_fraction`` (plain, SAM with the ascent on 20%
of the batch, full SAM), compiles each, then times them in alternating rounds (the order
rotates every round) so that load from other processes on a shared machine hits all three
alike. Prints the median seconds per step of each, the spread over rounds, and the SAM/plain
ratios computed within each round (median and range). The NFNet paper: +20-40% step time with
a 20% ascent (Table 3, TPUv3: F5 1398.5 ms, F5+SAM 1958.0 ms), about 2x for full SAM.

  python -m benchmarks.sam_overhead                      # F0, batch 8, 192 px, float32 CPU
  python -m benchmarks.sam_overhead --rounds=7 --steps=3 --output=benchmarks/results/x.csv
"""

import csv
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from experiments import config_lib, train
from nfnets import optim

# Not --config: importing experiments.train defines that flag (a config file).
_CONFIG = flags.DEFINE_string(
  'config_name', 'nfnet_f0', 'Config name or path (config_lib).'
)
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Batch size (one device).')
_IMAGE = flags.DEFINE_integer(
  'image_size', None, 'Train resolution (None: the config/model default).'
)
_DTYPE = flags.DEFINE_enum(
  'dtype', 'float32', ['float32', 'bfloat16'], 'Activation dtype.'
)
_RHO = flags.DEFINE_float('rho', 0.05, 'SAM radius of the SAM variants.')
_FRACTIONS = flags.DEFINE_list(
  'fractions', ['0.2', '1.0'], 'SAM ascent fractions to time.'
)
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating rounds.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Timed steps per variant per round.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional CSV of every timing.')


def build_optimizer(config, model, image_size: int, batch_size: int):
  """The paper's optimizer chain for ``config`` (a long schedule; the lr is irrelevant)."""
  return optim.build_optimizer(
    config.optimizer,
    params=model.param_shapes(image_size),
    total_steps=10_000,
    warmup_steps=100,
    global_batch_size=batch_size,
  )


def variant_configs(base, rho: float, fractions: list[float]) -> dict:
  """'plain' (SAM off) and one 'sam_<fraction>' config per ascent fraction."""
  out = {'plain': base}
  for fraction in fractions:
    config = base.copy_and_resolve_references()
    config.optimizer.sam_rho = rho
    config.optimizer.sam_ascent_fraction = fraction
    out[f'sam_{fraction:g}'] = config
  return out


def main(argv):
  del argv
  base = config_lib.get_config(_CONFIG.value)
  base.bfloat16 = _DTYPE.value == 'bfloat16'
  base.optimizer.sam_rho = 0.0
  model = train.create_model(base, num_classes=1000)
  image_size = _IMAGE.value or train.image_sizes(base, model)[0]
  batch_size = _BATCH.value
  base.train_batch_size = batch_size
  fractions = [float(f) for f in _FRACTIONS.value]
  configs = variant_configs(base, _RHO.value, fractions)
  optimizer, schedule = build_optimizer(base, model, image_size, batch_size)
  devices = jax.devices()[:1]
  # One state for every variant; outputs are dropped, so each timed call is the same step.
  state = train.replicate(
    jax.device_get(train.init_state(model, optimizer, base, image_size)),
    devices,
  )
  rng = np.random.RandomState(0)
  batch = {
    'images': rng.randn(1, batch_size, image_size, image_size, 3).astype(
      np.float32
    ),
    'labels': rng.randint(0, 1000, (1, batch_size)).astype(np.int32),
    'mix_labels': rng.randint(0, 1000, (1, batch_size)).astype(np.int32),
    'ratio': rng.uniform(0, 1, (1, batch_size)).astype(np.float32),
  }
  batch = jax.device_put(batch, devices[0])

  steps, compile_secs = {}, {}
  for name, config in configs.items():
    start = time.perf_counter()
    fn = jax.pmap(
      train.make_train_step(model, optimizer, schedule, config),
      axis_name=train.AXIS,
      devices=devices,
    )
    jax.block_until_ready(fn(state, batch))  # compile + one warm-up step
    compile_secs[name] = time.perf_counter() - start
    steps[name] = fn
    print(
      f'{name}: compiled + first step in {compile_secs[name]:.1f} s', flush=True
    )

  names = list(steps)
  times = {name: [] for name in names}
  rows = []
  for r in range(_ROUNDS.value):
    order = names[r % len(names) :] + names[: r % len(names)]
    for name in order:
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        out = steps[name](state, batch)
      jax.block_until_ready(out)
      seconds = (time.perf_counter() - start) / _STEPS.value
      times[name].append(seconds)
      rows.append(dict(round=r, variant=name, seconds_per_step=seconds))
    print(
      f'round {r}: '
      + ', '.join(f'{n} {times[n][-1] * 1e3:.0f} ms' for n in names),
      flush=True,
    )

  print(
    f'\n{_CONFIG.value} batch {batch_size} at {image_size} px, {_DTYPE.value}, '
    f'{jax.devices()[0].platform}, {_ROUNDS.value} rounds x {_STEPS.value} '
    'steps (medians; range over rounds):'
  )
  for name in names:
    t = np.array(times[name]) * 1e3
    print(
      f'  {name:>8}: {np.median(t):8.0f} ms/step  [{t.min():.0f}-{t.max():.0f}]'
    )
  for name in names[1:]:
    ratios = [a / b for a, b in zip(times[name], times['plain'])]
    print(
      f'  {name} / plain: median {statistics.median(ratios):.2f}x '
      f'[{min(ratios):.2f}-{max(ratios):.2f}] (within-round ratios); '
      f'ratio of medians {np.median(times[name]) / np.median(times["plain"]):.2f}x'
    )
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w', newline='') as f:
      writer = csv.DictWriter(f, ['round', 'variant', 'seconds_per_step'])
      writer.writeheader()
      writer.writerows(rows)


if __name__ == '__main__':
  app.run(main)
