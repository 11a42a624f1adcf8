"""``python -m experiments.eval`` end to end on a tiny run: checkpoint vs weights file, EMA vs
raw params, split override.

One short training run (tiny model, embedded digits) writes a checkpoint whose raw and EMA
params differ. The same params reached by two routes (the checkpoint, a weights file in either
format) must give identical metrics; EMA and raw must not; the split flag must change what is
counted.
"""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

# experiments.train defines the same absl flags as experiments.eval, so the run trains in a
# subprocess and the state is read back through the checkpointing module.
from experiments import checkpointing, train
from experiments import eval as eval_entry
from nfnets import weights
from tests import test_train_fixtures as fx

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINE = re.compile(
  r'\(step (?P<step>-?\d+)\) on (?P<split>\w+) \((?P<params>\S+) params, '
  r'(?P<size>\d+) px\): top-1 (?P<top1>[\d.]+)  top-5 (?P<top5>[\d.]+)  '
  r'loss (?P<loss>[\d.]+)  (?P<count>\d+) images'
)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 3-step run: (config file, workdir, final host state)."""
  root = tmp_path_factory.mktemp('eval_entry')
  overrides = {'num_train_steps': 3, 'optimizer.lr_per_256': 2.0}
  config_path = fx.write_config_file(str(root), **overrides)
  workdir = str(root / 'workdir')
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.train',
      f'--config={config_path}',
      f'--workdir={workdir}',
    ],
    env=fx.subprocess_env(),
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  config = fx.tiny_config(**overrides)
  setup = train.build_setup(config)
  template = train.init_state(setup.model, setup.optimizer, config, 32)
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'), max_to_keep=5, identity=setup.identity
  )
  try:
    state = ckpt.restore(template)
  finally:
    ckpt.close()
  assert int(state.step) == 3
  return config_path, workdir, state


def _eval(capsys, *args) -> dict:
  argv = ['eval', *args]
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(argv)
    capsys.readouterr()
    eval_entry.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  out = capsys.readouterr().out
  match = _LINE.search(out)
  assert match, out
  return match.groupdict()


def _metrics(r):
  return (r['top1'], r['top5'], r['loss'])


def test_checkpoint_ema_raw_and_weights_files_agree(run, capsys, tmp_path):
  config_path, workdir, state = run
  params_ema, params_raw = state.ema_params, state.params
  # The run moved the params away from their average, so EMA vs raw is visible.
  assert any(
    np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    for a, b in zip(
      jax.tree_util.tree_leaves(params_ema),
      jax.tree_util.tree_leaves(params_raw),
    )
  )
  config = f'--config={config_path}'
  ema = _eval(capsys, config, f'--workdir={workdir}')
  raw = _eval(capsys, config, f'--workdir={workdir}', '--use_ema=false')
  assert (ema['params'], raw['params']) == ('EMA', 'raw')
  assert ema['step'] == raw['step'] == '3'
  # Every test digit counted once, at the config's eval resolution.
  assert ema['count'] == raw['count'] == '1000'
  assert ema['split'] == 'test' and ema['size'] == '32'
  assert _metrics(ema) != _metrics(raw)

  raw_npz = tmp_path / 'raw.npz'
  weights.save_npz(raw_npz, params_raw)
  from_npz = _eval(capsys, config, f'--weights={raw_npz}')
  assert from_npz['step'] == '-1' and from_npz['params'] == str(raw_npz)
  assert _metrics(from_npz) == _metrics(raw)

  ema_official = tmp_path / 'F_haiku.npz'
  weights.save_official(ema_official, params_ema)
  from_official = _eval(capsys, config, f'--weights={ema_official}')
  assert _metrics(from_official) == _metrics(ema)


def test_split_override(run, capsys):
  config_path, workdir, _ = run
  r = _eval(
    capsys, f'--config={config_path}', f'--workdir={workdir}', '--split=train'
  )
  assert r['split'] == 'train' and r['count'] == '4000'


def test_missing_checkpoint_and_missing_flags_are_clear_errors(
  run, capsys, tmp_path
):
  config_path, _, _ = run
  with pytest.raises(ValueError, match='No checkpoint under'):
    _eval(capsys, f'--config={config_path}', f'--workdir={tmp_path}')
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['eval', f'--config={config_path}'])
  try:
    with pytest.raises(Exception, match='--workdir=DIR'):
      eval_entry.main(['eval'])
  finally:
    flags.FLAGS.unparse_flags()


def test_command_line_module(run, tmp_path):
  """The real ``python -m experiments.eval`` process, on an official-format weights file."""
  config_path, _, state = run
  path = tmp_path / 'F_haiku.npz'
  weights.save_official(path, state.ema_params)
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.eval',
      f'--config={config_path}',
      f'--weights={path}',
      '--split=valid',
    ],
    env=fx.subprocess_env(),
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  match = _LINE.search(out.stdout)
  assert match, out.stdout
  assert match['split'] == 'valid' and match['count'] == '1000'


def test_explicit_config_that_reads_other_data_is_warned_about(run, caplog):
  # README: a run trained with --config.data_dir=D, evaluated with --config=NAME
  # alone, would read NAME's default data dir; the recorded config has D.
  config_path, workdir, _ = run
  del config_path
  recorded = eval_entry.run_info.read_config(workdir)
  with caplog.at_level('WARNING'):
    eval_entry.warn_if_data_differs(recorded, workdir)
  assert not caplog.records
  other = recorded.copy_and_resolve_references()
  other.data_dir = '/elsewhere/tfds'
  with caplog.at_level('WARNING'):
    eval_entry.warn_if_data_differs(other, workdir)
  (record,) = caplog.records
  assert (
    "data_dir=None; --config gives '/elsewhere/tfds'" in record.getMessage()
  )
  assert 'Evaluate with --workdir alone' in record.getMessage()
