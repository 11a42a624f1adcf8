r"""Evaluate a checkpoint: `python -m experiments.eval --config=nfnet_f0 --workdir=DIR`,
or published weights: `... --config=nfnet_f0 --config.data_dir=DIR --weights=F0_haiku.npz`.

Reports top-1, top-5, mean loss and images/s on a split (default: the config's eval split) at
the variant's test resolution (or --config.eval_imsize). Uses the EMA params when the config
trains with EMA (as the paper reports), the raw params with --use_ema=false. Every example
counts exactly once: the last batch is padded and the padding masked out.
"""

import sys

from absl import app, flags, logging

from data import pipeline
from experiments import config_lib, evaluate, train

# --config and --workdir (the training run's) are train.py's flags.
_CONFIG = train.CONFIG
_WORKDIR = train.WORKDIR
_SPLIT = flags.DEFINE_enum(
  'split',
  None,
  list(pipeline.SPLITS),
  'Split to evaluate (default: config.eval_split).',
)
_WEIGHTS = flags.DEFINE_string(
  'weights',
  None,
  'Evaluate these params instead of a checkpoint: an official '
  'F*_haiku.npz or a weights.save_npz file.',
)
_USE_EMA = flags.DEFINE_bool(
  'use_ema', None, 'EMA params (default: config.optimizer.use_ema).'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if _CONFIG.value is None or not (_WORKDIR.value or _WEIGHTS.value):
    raise app.UsageError(
      'Pass --config=NAME and --workdir=DIR (or --weights=FILE).'
    )
  train.configure_runtime()
  if _WEIGHTS.value:
    r = evaluate.evaluate_weights(
      _CONFIG.value, _WEIGHTS.value, split=_SPLIT.value
    )
  else:
    r = evaluate.evaluate_checkpoint(
      _CONFIG.value, _WORKDIR.value, split=_SPLIT.value, use_ema=_USE_EMA.value
    )
  logging.info('%s', r)
  print(
    f'{_CONFIG.value.name or _CONFIG.value.model} (step {r["step"]}) on {r["split"]} '
    f'({r["params"]} params, {r["image_size"]} px): top-1 {r["top1"]:.4f}  top-5 '
    f'{r["top5"]:.4f}  loss {r["loss"]:.4f}  {r["count"]} images  '
    f'{r["images_per_sec"]:.1f} img/s'
  )


def run() -> None:
  sys.argv = config_lib.resolve_argv(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
