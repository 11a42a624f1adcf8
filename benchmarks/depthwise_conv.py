"""EfficientNet-B7's depthwise convolutions on CPU: XLA's kernel vs shifted products.

  python -m benchmarks.depthwise_conv

For a few B7 depthwise layers at 600 px, batch 2, times one jitted forward and
backward pass (value and both gradients of a sum of squares) with
``feature_group_count`` (XLA's own depthwise convolution, the ``'native'``
strategy) and with ``nfnets.cpu_conv.depthwise_by_taps`` (the ``'split'`` one),
best of 3 after compiling, and prints the ratio and the largest relative
difference between the two.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nfnets import cpu_conv

_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls; the best is kept.')

# (batch, height = width, channels, kernel, stride) of B7 depthwise layers at 600 px.
LAYERS = (
  (2, 300, 192, 3, 1),
  (2, 150, 288, 3, 2),
  (2, 38, 1344, 5, 1),
  (2, 19, 3840, 3, 1),
)


def _step(impl: str, channels: int, stride: int):
  def loss(x, w):
    y = cpu_conv.grouped_conv(x, w, (stride, stride), 'SAME', channels, impl)
    return jnp.sum(y * y)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _best_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def _rel_diff(a, b) -> float:
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


def main(argv):
  del argv
  print('batch  px    ch  k  s   native ms  shifted ms  ratio  max rel diff')
  for n, size, ch, k, s in LAYERS:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, size, size, ch)), jnp.float32)
    w = jnp.asarray(0.1 * rng.standard_normal((k, k, 1, ch)), jnp.float32)
    native, split = _step('native', ch, s), _step('split', ch, s)
    (_, ga), (_, gb) = native(x, w), split(x, w)
    diff = max(_rel_diff(a, b) for a, b in zip(ga, gb))
    tn, ts = _best_seconds(native, x, w), _best_seconds(split, x, w)
    print(
      f'{n:5d}  {size:3d}  {ch:4d}  {k}  {s}  {tn * 1e3:10.1f}  {ts * 1e3:10.1f}'
      f'  {tn / ts:5.1f}  {diff:.1e}',
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
