r"""Prints the papers' model tables computed from the code: parameters and GMACs.

  python -m experiments.paper.tables                 # NFNets, NF-RegNets, NF-ResNets, baselines
  python -m experiments.paper.tables --tables=nfnet  # only the NFNet table

Parameters are counted abstractly (``jax.eval_shape``, nothing allocated); FLOPs are
multiply-adds counted with the official per-layer rules at the training and test resolutions
(NFNet paper Table 3 / official ``count_flops``). The NFNet paper's ImageNet top-1 is printed
beside each variant; it is the paper's number, not one measured here.
"""

import time

from absl import app, flags

import nfnets
from nfnets import nf_regnet, nfnet, registry

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a script, so tests can import this module next to others."""
  flags.DEFINE_list(
    'tables',
    ['nfnet', 'nf_regnet', 'nf_resnet', 'baselines'],
    'Which tables: nfnet, nf_regnet, nf_resnet, baselines.',
  )


# NFNet paper Table 3 (ImageNet top-1, %); F6 was trained with SAM; F7 and F+ have none.
NFNET_PAPER_TOP1 = {
  'F0': '83.6',
  'F1': '84.7',
  'F2': '85.1',
  'F3': '85.7',
  'F4': '85.9',
  'F5': '86.0',
  'F6': '86.5 (SAM)',
}
_TABLE_NAMES = ('nfnet', 'nf_regnet', 'nf_resnet', 'baselines')


def _row(model_name: str) -> tuple[nfnets.Model, int, float, float]:
  model = nfnets.create_model(model_name, num_classes=1000)
  return (
    model,
    model.count_params(),
    model.count_macs(model.train_imsize) / 1e9,
    model.count_macs(model.test_imsize) / 1e9,
  )


def _markdown(header: list[str], rows: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


def nfnet_table() -> str:
  rows = []
  for variant in nfnet.VARIANTS:
    name = registry.canonical_name('nfnet_' + variant)
    model, params, train_g, test_g = _row(name)
    rows.append(
      [
        variant,
        f'{params:,}',
        f'{train_g:.2f}',
        f'{test_g:.2f}',
        f'{model.train_imsize}/{model.test_imsize}',
        f'{model.extras["drop_rate"]}',
        model.extras['RA_level'],
        NFNET_PAPER_TOP1.get(variant, '-'),
      ]
    )
  return _markdown(
    [
      'NFNet',
      'params',
      'GMACs@train',
      'GMACs@test',
      'train/test px',
      'dropout',
      'RandAugment',
      'paper top-1',
    ],
    rows,
  )


def nf_regnet_table() -> str:
  rows = []
  for variant in nf_regnet.VARIANTS:
    model, params, train_g, test_g = _row(f'nf_regnet_{variant.lower()}')
    rows.append(
      [
        variant,
        f'{params:,}',
        f'{train_g:.3f}',
        f'{test_g:.3f}',
        f'{model.train_imsize}/{model.test_imsize}',
        f'{model.extras["drop_rate"]}',
        f'{model.extras.get("weight_decay", "-")}',
      ]
    )
  return _markdown(
    [
      'NF-RegNet',
      'params',
      'GMACs@train',
      'GMACs@test',
      'train/test px',
      'dropout',
      'weight decay',
    ],
    rows,
  )


def nf_resnet_table() -> str:
  rows = []
  for variant in (
    'ResNet26',
    'ResNet50',
    'ResNet101',
    'ResNet152',
    'ResNet200',
  ):
    depth = variant.removeprefix('ResNet')
    for prefix in ('nf_resnet', 'nf_seresnet'):
      _, params, _, test_g = _row(f'{prefix}_{depth}')
      rows.append([f'{prefix}_{depth}', f'{params:,}', f'{test_g:.2f}'])
  return _markdown(['model', 'params', 'GMACs@224'], rows)


def baselines_table() -> str:
  rows = []
  for name in (
    'resnet_v2_50',
    'resnet_v1_50',
    'skipinit_resnet_50',
    'fixup_resnet_50',
    'nf_resnet_50',
    'nfnet_f0_bn',
    'nfnet_f0',
  ):
    model, params, train_g, test_g = _row(name)
    rows.append(
      [
        name,
        f'{params:,}',
        f'{train_g:.2f}',
        f'{test_g:.2f}',
        f'{model.train_imsize}/{model.test_imsize}',
      ]
    )
  return _markdown(
    ['model', 'params', 'GMACs@train', 'GMACs@test', 'train/test px'], rows
  )


_BUILDERS = {
  'nfnet': nfnet_table,
  'nf_regnet': nf_regnet_table,
  'nf_resnet': nf_resnet_table,
  'baselines': baselines_table,
}


def main(argv):
  del argv
  unknown = set(FLAGS.tables) - set(_TABLE_NAMES)
  if unknown:
    raise app.UsageError(
      f'Unknown tables {sorted(unknown)}; accepted: {_TABLE_NAMES}.'
    )
  for table in FLAGS.tables:
    start = time.time()
    print(f'\n## {table}\n')
    print(_BUILDERS[table]())
    print(f'\n({time.time() - start:.1f} s)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
