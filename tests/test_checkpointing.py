"""The Checkpointer on small NumPy trees: exact round trips and every refusal.

These run in seconds (no model, no training), so that mutation testing can
afford them; `test_train.py` and `test_guards_resume.py` check the same guards
through the whole trainer.
"""

import hashlib
import os

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing

IDENTITY = {'model': 'tiny', 'model_kwargs': {'width': 8}, 'num_classes': 10}


def _tree(width=8, dtype=np.float32):
  rng = np.random.default_rng(0)
  return {
    'params': {
      'conv': {'w': rng.normal(size=(3, 3, 2, width)).astype(dtype)},
      'linear': {'b': rng.normal(size=(10,)).astype(dtype)},
    },
    'rng': np.array([7, 11], np.uint32),
    'step': np.int32(4),
  }


def _zeros_like(tree):
  return {
    'params': {
      'conv': {'w': np.zeros_like(tree['params']['conv']['w'])},
      'linear': {'b': np.zeros_like(tree['params']['linear']['b'])},
    },
    'rng': np.zeros(2, np.uint32),
    'step': np.int32(0),
  }


def _snapshot(directory):
  """Relative path -> sha256 of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(
          f.read()
        ).hexdigest()
  return out


def _checkpointer(directory, identity=IDENTITY, max_to_keep=5):
  return checkpointing.Checkpointer(
    str(directory), max_to_keep=max_to_keep, identity=identity
  )


def _truncate(directory, step):
  for root, _, files in os.walk(directory / str(step) / 'state'):
    for name in files:
      open(os.path.join(root, name), 'wb').close()


def test_describe_lists_path_shape_and_dtype_in_tree_order():
  tree = {'b': jnp.zeros((2, 3), jnp.bfloat16), 'a': [np.int32(1), 2.5]}
  assert checkpointing.describe(tree) == [
    ["['a'][0]", [], 'int32'],
    ["['a'][1]", [], 'float64'],
    ["['b']", [2, 3], 'bfloat16'],
  ]


def test_save_then_restore_is_exact_and_keeps_dtypes(tmp_path):
  tree = _tree()
  directory = tmp_path / 'new' / 'ckpt'  # created on first use
  ckpt = _checkpointer(directory)
  assert ckpt.latest_step() is None
  assert ckpt.restore(_zeros_like(tree)) is None
  ckpt.save(tree, 4)
  ckpt.save({**tree, 'step': np.int32(7)}, 7)
  ckpt.save({**tree, 'step': np.int32(9)}, 9)
  assert ckpt.all_steps() == [4, 7, 9]
  assert ckpt.latest_step() == 9
  ckpt.close()

  ckpt = _checkpointer(directory)
  restored = ckpt.restore(_zeros_like(tree))
  assert int(restored['step']) == 9
  for path in (('params', 'conv', 'w'), ('params', 'linear', 'b')):
    got, want = restored, tree
    for key in path:
      got, want = got[key], want[key]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
  np.testing.assert_array_equal(restored['rng'], [7, 11])
  assert restored['rng'].dtype == np.uint32
  ckpt.close()


def test_only_the_newest_max_to_keep_are_kept(tmp_path):
  ckpt = _checkpointer(tmp_path, max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(_tree(), step)
  assert ckpt.all_steps() == [2, 3]
  ckpt.close()


@pytest.mark.parametrize(
  'identity, diff',
  [
    ({**IDENTITY, 'model': 'other'}, "'model': ('tiny', 'other')"),
    ({**IDENTITY, 'num_classes': 5}, "'num_classes': (10, 5)"),
    ({**IDENTITY, 'seed': 1}, "'seed': (None, 1)"),
  ],
)
def test_another_identity_is_refused_and_nothing_changes(
  tmp_path, identity, diff
):
  ckpt = _checkpointer(tmp_path)
  ckpt.save(_tree(), 3)
  ckpt.close()
  before = _snapshot(tmp_path)
  ckpt = _checkpointer(tmp_path, identity=identity)
  with pytest.raises(ValueError, match='another model') as err:
    ckpt.restore(_zeros_like(_tree()))
  assert diff in str(err.value)
  assert 'nothing was changed' in str(err.value)
  ckpt.close()
  assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
  'template',
  [
    _zeros_like(_tree(width=16)),  # another shape
    _zeros_like(_tree(dtype=np.float16)),  # another dtype
    {**_zeros_like(_tree()), 'extra': np.zeros(1)},  # another tree
  ],
  ids=['shape', 'dtype', 'tree'],
)
def test_same_identity_other_state_tree_is_refused_and_nothing_changes(
  tmp_path, template
):
  ckpt = _checkpointer(tmp_path)
  ckpt.save(_tree(), 3)
  ckpt.close()
  before = _snapshot(tmp_path)
  ckpt = _checkpointer(tmp_path)
  with pytest.raises(ValueError, match='tree shapes'):
    ckpt.restore(template)
  ckpt.close()
  assert _snapshot(tmp_path) == before


def test_identity_is_judged_on_the_newest_readable_checkpoint(tmp_path):
  ckpt = _checkpointer(tmp_path)
  ckpt.save(_tree(), 3)
  ckpt.save(_tree(), 6)
  ckpt.close()
  # An unreadable newest metadata file: the check reads checkpoint 3 instead.
  for root, _, files in os.walk(tmp_path / '6' / 'meta'):
    for name in files:
      open(os.path.join(root, name), 'wb').close()
  ckpt = _checkpointer(tmp_path, identity={**IDENTITY, 'model': 'other'})
  with pytest.raises(ValueError, match='step 3'):
    ckpt.check_identity(_zeros_like(_tree()))
  ckpt.close()


def test_corrupt_newest_is_moved_aside_and_the_older_one_restored(tmp_path):
  tree = _tree()
  ckpt = _checkpointer(tmp_path)
  ckpt.save(tree, 3)
  ckpt.save({**tree, 'step': np.int32(6)}, 6)
  ckpt.close()
  _truncate(tmp_path, 6)
  ckpt = _checkpointer(tmp_path)
  restored = ckpt.restore(_zeros_like(tree))
  assert int(restored['step']) == 4  # the tree saved as checkpoint 3
  np.testing.assert_array_equal(
    restored['params']['conv']['w'], tree['params']['conv']['w']
  )
  assert ckpt.all_steps() == [3]
  assert not (tmp_path / '6').exists()
  moved = os.listdir(tmp_path / 'corrupt')
  assert len(moved) == 1 and moved[0].startswith('6.')
  ckpt.close()


def test_all_corrupt_restores_nothing_and_moves_everything_aside(tmp_path):
  ckpt = _checkpointer(tmp_path)
  ckpt.save(_tree(), 3)
  ckpt.close()
  _truncate(tmp_path, 3)
  ckpt = _checkpointer(tmp_path)
  assert ckpt.restore(_zeros_like(_tree())) is None
  assert ckpt.all_steps() == []
  assert len(os.listdir(tmp_path / 'corrupt')) == 1
  # A later corrupt checkpoint joins the first in corrupt/.
  ckpt.save(_tree(), 5)
  ckpt.close()
  _truncate(tmp_path, 5)
  ckpt = _checkpointer(tmp_path)
  assert ckpt.restore(_zeros_like(_tree())) is None
  assert sorted(n.split('.')[0] for n in os.listdir(tmp_path / 'corrupt')) == [
    '3',
    '5',
  ]
  ckpt.close()


def test_restore_leaves_reads_paths_without_a_template_and_moves_nothing(
  tmp_path,
):
  tree = _tree()
  ckpt = _checkpointer(tmp_path)
  ckpt.save(tree, 3)
  ckpt.save({**tree, 'rng': np.array([1, 2], np.uint32)}, 6)
  ckpt.close()
  ckpt = _checkpointer(tmp_path)
  meta, leaves = ckpt.restore_leaves()
  assert meta['step'] == 6 and meta['model'] == 'tiny'
  assert meta['format_version'] == checkpointing.FORMAT_VERSION
  assert leaves["['rng']"].dtype == np.uint32
  assert leaves["['step']"].dtype == np.int32
  assert leaves["['params']['conv']['w']"].dtype == np.float32
  assert sorted(leaves) == [
    "['params']['conv']['w']",
    "['params']['linear']['b']",
    "['rng']",
    "['step']",
  ]
  np.testing.assert_array_equal(leaves["['rng']"], [1, 2])
  np.testing.assert_array_equal(
    leaves["['params']['conv']['w']"], tree['params']['conv']['w']
  )
  ckpt.close()

  _truncate(tmp_path, 6)
  ckpt = _checkpointer(tmp_path)
  meta, leaves = ckpt.restore_leaves()
  assert meta['step'] == 3
  np.testing.assert_array_equal(leaves["['rng']"], [7, 11])
  assert ckpt.all_steps() == [3, 6]  # read-only: nothing moved
  assert not (tmp_path / 'corrupt').exists()
  ckpt.close()

  _truncate(tmp_path, 3)
  assert _checkpointer(tmp_path).restore_leaves() is None
