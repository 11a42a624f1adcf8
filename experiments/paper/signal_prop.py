r"""NF-ResNet paper Figure 1: signal propagation at initialization, drawn from the code.

For a BatchNorm pre-activation ResNet, the same network without normalization, and an
NF-ResNet (skip gains 1), feeds N(0, 1) images through the freshly initialized network and plots,
per residual block, the average squared channel mean, the average channel variance and the
residual-branch variance (log scale), and prints the numbers.

  python -m experiments.paper.signal_prop --out=/tmp/signal_prop.png

The paper uses ResNet-600 at 224 px; the defaults (ResNet-50 layout at 1/4 width, 96 px) run
in about a minute on two CPU cores and show the same three behaviours.
"""

import json
import time

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from nfnets import nf_resnet, signal_prop  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a script, so tests can import this module next to others."""
  flags.DEFINE_enum(
    'variant',
    'ResNet50',
    sorted(nf_resnet.VARIANTS),
    'Depth pattern shared by the three networks.',
  )
  flags.DEFINE_float(
    'width', 1.0, 'Width multiplier (4 is the full ResNet width).'
  )
  flags.DEFINE_integer(
    'resolution', 96, 'Input size in pixels (multiple of 32).'
  )
  flags.DEFINE_integer('batch_size', 16, 'Number of N(0, 1) images.')
  flags.DEFINE_integer('seed', 0, 'Seed for the inputs and the initialization.')
  flags.DEFINE_string('out', 'signal_prop.png', 'Where to write the PNG.')
  flags.DEFINE_string(
    'json', None, 'Optionally also write the numbers as JSON here.'
  )


_PANELS = (
  ('avg_sq_mean', 'Average squared channel mean'),
  ('avg_var', 'Average channel variance'),
  ('res_avg_var', 'Residual branch variance'),
)


def plot(
  results: dict[str, dict[str, np.ndarray]], title: str, path: str
) -> None:
  """Three log-scale panels, one line per network, x = residual block index."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, (key, label) in zip(axes, _PANELS):
    for name, stats in results.items():
      values = stats[key]
      # avg_sq_mean/avg_var start with the stem output (index 0); the branch starts at 1.
      x = np.arange(len(values)) + (1 if key == 'res_avg_var' else 0)
      ax.plot(x, np.maximum(values, 1e-6), marker='.', label=name)
    ax.set_yscale('log')
    ax.set_xlabel('residual block')
    ax.set_title(label)
    ax.grid(True, which='both', alpha=0.3)
  axes[0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def format_table(results: dict[str, dict[str, np.ndarray]]) -> str:
  """One row per block: each network's avg_sq_mean / avg_var / res_avg_var."""
  names = list(results)
  header = 'block | ' + ' | '.join(f'{n}: sq_mean var res_var' for n in names)
  rows = [header]
  num = len(next(iter(results.values()))['avg_var'])
  for i in range(num):
    cells = []
    for n in names:
      s = results[n]
      res = s['res_avg_var'][i - 1] if i > 0 else float('nan')
      cells.append(
        f'{s["avg_sq_mean"][i]:10.4g} {s["avg_var"][i]:10.4g} {res:10.4g}'
      )
    rows.append(f'{i:5d} | ' + ' | '.join(cells))
  return '\n'.join(rows)


def main(argv):
  del argv
  start = time.time()
  results = signal_prop.measure_figure1(
    FLAGS.variant, FLAGS.width, FLAGS.resolution, FLAGS.batch_size, FLAGS.seed
  )
  logging.info('Measured in %.1f s.', time.time() - start)
  depths = nf_resnet.VARIANTS[FLAGS.variant]['depth']
  print(format_table(results))
  print(
    'NF-ResNet expected variance per block (1 + k alpha^2):',
    np.round(signal_prop.nf_expected_variance(depths), 3).tolist(),
  )
  title = (
    f'Signal propagation at init: {FLAGS.variant} layout, width x{FLAGS.width:g}, '
    f'{FLAGS.resolution} px, batch {FLAGS.batch_size}'
  )
  plot(results, title, FLAGS.out)
  print(f'Wrote {FLAGS.out} ({time.time() - start:.1f} s).')
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(
        {n: {k: v.tolist() for k, v in s.items()} for n, s in results.items()},
        f,
        indent=1,
      )


if __name__ == '__main__':
  define_flags()
  app.run(main)
