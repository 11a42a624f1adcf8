r"""Evaluate a training run: `python -m experiments.eval --workdir=DIR` (the run's recorded
config and dataset, any of them: ImageNet, `tfds:NAME`, `folder:ROOT`, the digits), the same
with another config `--config=nfnet_f0 --workdir=DIR`, or published weights:
`... --config=nfnet_f0 --config.data_dir=DIR --weights=F0_haiku.npz`.

`--split` takes the dataset's own split names with TFDS slicing (`validation`, `test[:50%]`,
`val` of a folder) as well as `train`, `valid`, `train_minus_valid` and `test`.

Reports top-1, top-5, mean loss and images/s on a split (default: the config's eval split) at
the variant's test resolution (or --config.eval_imsize). Uses the EMA params when the config
trains with EMA (as the paper reports), the raw params with --use_ema=false. Every example
counts exactly once: the last batch is padded and the padding masked out.
"""

import math

import ml_collections
from absl import app, flags, logging

from experiments import config_lib, evaluate, run_info, train

# --config and --workdir (the training run's) are train.py's flags.
_CONFIG = train.CONFIG
_WORKDIR = train.WORKDIR
_SPLIT = flags.DEFINE_string(
  'split',
  None,
  'Split to evaluate (default: config.eval_split): train, valid, '
  "train_minus_valid, test, or the dataset's own (TFDS slicing allowed, e.g. "
  "'validation[:1000]').",
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


def warn_if_data_differs(
  config: ml_collections.ConfigDict, workdir: str
) -> None:
  """Warns where ``--config`` reads other data than the run it evaluates.

  An explicit ``--config=NAME`` replaces the run's recorded config, overrides
  included, so a run trained with ``--config.data_dir=D`` is evaluated on the
  config's default data dir unless D is passed again.
  """
  recorded = (run_info.read(workdir) or {}).get('config')
  if not recorded:
    return
  for field in ('dataset', 'data_dir', 'model'):
    if field in recorded and recorded[field] != config.get(field):
      logging.warning(
        'The run in %s was trained with %s=%r; --config gives %r. Evaluate '
        'with --workdir alone to use the recorded config, or pass '
        '--config.%s.',
        workdir,
        field,
        recorded[field],
        config.get(field),
        field,
      )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if _WEIGHTS.value and _CONFIG.value is None:
    raise app.UsageError('--weights=FILE needs --config=NAME (the model).')
  if not (_WORKDIR.value or _WEIGHTS.value):
    raise app.UsageError(
      'Pass --workdir=DIR (a training run) or --config=NAME --weights=FILE.'
    )
  # Without --config, the config the run recorded (experiments/run_info.py).
  config = _CONFIG.value
  if config is None:
    config = run_info.read_config(_WORKDIR.value)
  elif _WORKDIR.value and not _WEIGHTS.value:
    warn_if_data_differs(config, _WORKDIR.value)
  train.configure_runtime()
  if _WEIGHTS.value:
    r = evaluate.evaluate_weights(config, _WEIGHTS.value, split=_SPLIT.value)
  else:
    r = evaluate.evaluate_checkpoint(
      config, _WORKDIR.value, split=_SPLIT.value, use_ema=_USE_EMA.value
    )
  logging.info('%s', r)
  # The first batch (which compiles) is not timed, so one batch gives no rate.
  rate = r['images_per_sec']
  speed = f'{rate:.1f} img/s' if math.isfinite(rate) else 'one batch: not timed'
  print(
    f'{config.name or config.model} (step {r["step"]}) on {r["split"]} '
    f'({r["params"]} params, {r["image_size"]} px): top-1 {r["top1"]:.4f}  top-5 '
    f'{r["top5"]:.4f}  loss {r["loss"]:.4f}  {r["count"]} images  '
    f'{speed}'
  )


if __name__ == '__main__':
  config_lib.run(main)
