"""Mutation testing of the guards the README promises: ``./run.sh mutate``.

mutmut (configured in pyproject.toml) plants one small change at a time in the
functions listed in CRITICAL, runs the tests that reach that function, and
records whether any of them failed. This script runs it on those functions only,
then prints the score over them and every mutant that no test caught, with its
diff. docs/testing.md records the last score and argues each survivor.

  ./run.sh mutate                  # mutate, test, report (resumes where it stopped)
  ./run.sh mutate --report_only    # report the last run
  ./run.sh mutate --only='nfnets.agc.*'

The run works in ``mutants/`` (a mutated copy of the source; delete it to start
over after changing the code).
"""

import collections
import fnmatch
import os
import re
import subprocess
import sys

from absl import app, flags

_MAX_CHILDREN = flags.DEFINE_integer(
  'max_children', 2, 'Mutants tested at once (one per core).'
)
_REPORT_ONLY = flags.DEFINE_bool(
  'report_only', False, 'Report the last run without running mutmut.'
)
_ONLY = flags.DEFINE_list(
  'only', None, 'Mutant name patterns to run instead of CRITICAL.'
)
_MIN_SCORE = flags.DEFINE_float(
  'min_score', 0.9, 'Exit with an error below this score.'
)


def _functions(module: str, names: str) -> list[str]:
  return [f'{module}.x_{name}__mutmut_*' for name in names.split()]


# Mutant name patterns (mutmut names a mutant module.x_function__mutmut_N, and a
# method module.xǁClassǁmethod__mutmut_N).
CRITICAL = (
  # Adaptive gradient clipping: the whole module.
  ['nfnets.agc.*']
  # Which parameters get AGC and weight decay.
  + _functions(
    'nfnets.optim',
    '_paths _tree_of agc_enabled applies_agc applies_weight_decay agc_mask '
    'weight_decay_mask',
  )
  # The restricted unpickler behind load_official.
  + ['nfnets.weights.official.*']
  # Checkpoint identity, restore and the corrupt-checkpoint fallback.
  + ['experiments.checkpointing.*']
  # Eval preprocessing (the train-time random crop is not a guard).
  + _functions(
    'data.preprocess',
    'get_shape crop _center_crop_window resize check_eval_preproc '
    'eval_image_tf normalize eval_image',
  )
  # RandAugment: every op, its magnitude mapping and the op choice.
  + _functions(
    'data.augment',
    'check_mode ops _fold blend _transform rotate shear_x shear_y translate_x '
    'translate_y solarize solarize_wrapped invert solarize_add color contrast '
    'contrast_official brightness posterize sharpness auto_contrast equalize '
    'cutout_centre cutout op_sign apply_op check_op apply_op_with randaugment',
  )
  # Each process's share of the examples.
  + _functions('data.pipeline', 'shard_range')
)

CAUGHT = ('killed', 'timeout', 'caught by type check', 'segfault')


def _mutmut(*args: str, capture: bool = False) -> str:
  # The console script, not `python -m mutmut` (which re-executes its module).
  command = [os.path.join(os.path.dirname(sys.executable), 'mutmut'), *args]
  if capture:
    return subprocess.run(
      command, check=True, capture_output=True, text=True
    ).stdout
  subprocess.run(command, check=True)
  return ''


def _results(patterns: list[str]) -> dict[str, str]:
  """Mutant name -> status, for the mutants matching ``patterns``."""
  statuses = {}
  for line in _mutmut('results', '--all', 'true', capture=True).splitlines():
    match = re.match(r'\s+(\S+): (.+)$', line)
    if match and any(fnmatch.fnmatch(match[1], p) for p in patterns):
      statuses[match[1]] = match[2]
  return statuses


def main(argv):
  del argv
  patterns = _ONLY.value or CRITICAL
  # Every mutant runs in a fresh process: share compiled programs between them.
  cache = os.path.abspath(os.path.join('mutants', 'jax_cache'))
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', cache)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  if not _REPORT_ONLY.value:
    _mutmut('run', '--max-children', str(_MAX_CHILDREN.value), *patterns)
  statuses = _results(patterns)
  if not statuses:
    sys.exit('No mutation results: run without --report_only first.')
  counts = collections.Counter(statuses.values())
  caught = sum(counts[s] for s in CAUGHT)
  score = caught / len(statuses)
  by_module = collections.defaultdict(collections.Counter)
  for name, status in statuses.items():
    module = name.split('.x')[0]
    by_module[module]['caught' if status in CAUGHT else 'not caught'] += 1
  print('\nmodule                        caught  not caught')
  for module, c in sorted(by_module.items()):
    print(f'{module:28s}  {c["caught"]:6d}  {c["not caught"]:10d}')
  print(f'\nstatuses: {dict(counts)}')
  print(
    f'mutation score: {caught} / {len(statuses)} = {score:.1%} '
    f'(threshold {_MIN_SCORE.value:.0%})\n'
  )
  for name, status in sorted(statuses.items()):
    if status not in CAUGHT:
      print(
        _mutmut('show', name, capture=True).strip() or f'# {name}: {status}'
      )
  if score < _MIN_SCORE.value:
    sys.exit(f'Mutation score {score:.1%} is below {_MIN_SCORE.value:.0%}.')


if __name__ == '__main__':
  app.run(main)
