"""The restricted unpickler refuses hostile pickles before any of their code runs.

Every payload here would leave a marker on disk if a permissive unpickler executed it (the
plain ``pickle.load`` control shows it does), so each refusal test checks both the error and
that the marker is absent.
"""

import io
import os
import pickle
import shlex
import subprocess
import sys
import time

import dill
import numpy as np
import pytest

from nfnets import weights

try:
  from numpy._core import multiarray  # NumPy >= 2
except ImportError:  # pragma: no cover - NumPy 1.x
  from numpy.core import multiarray


class _Reduce:
  """Pickles as ``fn(*args)``: the classic code-execution gadget."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _touch_code(marker):
  return f'open({str(marker)!r}, "w").close()'


def _p0(text: str) -> bytes:
  """A hand-written protocol-0 pickle (opcodes as text)."""
  return text.encode('latin1')


def _payloads(tmp_path, marker):
  """name -> pickle bytes that create ``marker`` when loaded by ``pickle.loads``."""
  evil_npy = tmp_path / 'evil.npy'
  # numpy.load(allow_pickle=True) of a pickle file is an unrestricted pickle.load.
  evil_npy.write_bytes(pickle.dumps(_Reduce(exec, _touch_code(marker))))
  module_dir = tmp_path / 'modules'
  module_dir.mkdir(exist_ok=True)
  (module_dir / 'nfnets_evil_module.py').write_text(_touch_code(marker) + '\n')
  return {
    'builtins.exec': pickle.dumps(_Reduce(exec, _touch_code(marker))),
    'builtins.eval': pickle.dumps(_Reduce(eval, _touch_code(marker))),
    # getattr(__import__('os'), 'mkdir')(marker), in opcodes.
    'builtins.getattr': _p0(
      'cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVmkdir\ntR'
      f'(V{marker}\ntR.'
    ),
    'subprocess.Popen': pickle.dumps(
      _Reduce(subprocess.Popen, [sys.executable, '-c', _touch_code(marker)])
    ),
    'importlib.import_module': _p0(
      'cimportlib\nimport_module\n(Vnfnets_evil_module\ntR.'
    ),
    'numpy.load': pickle.dumps(_Reduce(np.load, str(evil_npy), None, True)),
    'posix.system': pickle.dumps(
      _Reduce(os.system, f'touch {shlex.quote(str(marker))}')
    ),
  }


_NAMES = [
  'builtins.exec',
  'builtins.eval',
  'builtins.getattr',
  'subprocess.Popen',
  'importlib.import_module',
  'numpy.load',
  'posix.system',
]


@pytest.fixture
def evil_path(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(tmp_path / 'modules'))
  monkeypatch.delitem(sys.modules, 'nfnets_evil_module', raising=False)
  return tmp_path


def _wait_for(marker, seconds=3.0):
  """Popen/posix.system run the payload in a child: give it time to appear."""
  deadline = time.time() + seconds
  while time.time() < deadline and not os.path.exists(marker):
    time.sleep(0.05)
  return os.path.exists(marker)


@pytest.mark.parametrize('name', _NAMES)
def test_payload_runs_under_plain_pickle(evil_path, name):
  # Control: the payload is live, so its absence below means it was refused.
  marker = evil_path / 'ran'
  data = _payloads(evil_path, marker)[name]
  pickle.loads(data)
  assert _wait_for(marker)


@pytest.mark.parametrize('name', _NAMES)
def test_hostile_global_is_refused_and_nothing_runs(evil_path, name):
  marker = evil_path / 'ran'
  path = evil_path / 'params.npz'
  path.write_bytes(_payloads(evil_path, marker)[name])
  module = name.rsplit('.', 1)[0]
  with pytest.raises(
    weights.UnsafePickleError, match=f'Refusing to load {module}'
  ):
    weights.load_official(path)
  assert not _wait_for(marker, seconds=0.5)
  assert 'nfnets_evil_module' not in sys.modules


@pytest.mark.parametrize(
  'name',
  ['exec', 'eval', 'getattr', '__import__', 'open', 'compile', 'setattr'],
)
def test_every_builtin_is_refused(name):
  with pytest.raises(weights.UnsafePickleError, match=f'builtins.{name}'):
    weights.unpickle_safely(_p0(f'cbuiltins\n{name}\n.'))


def _array_record(f, state_array, npdict=None):
  """The record dill writes for an ndarray, with a chosen constructor/payload."""
  record = [
    f,
    (np.ndarray, (0,), b'b'),
    state_array.__reduce__()[2],
  ]
  if npdict is not None:
    record.append(npdict)
  return pickle.dumps(_Reduce(dill._dill._create_array, *record), protocol=2)


def test_genuine_array_record_loads():
  # Control for the crafted records below: the real constructor round-trips.
  value = np.arange(6, dtype=np.float32).reshape(2, 3)
  loaded = weights.unpickle_safely(
    _array_record(multiarray._reconstruct, value)
  )
  np.testing.assert_array_equal(loaded, value)
  assert type(loaded) is np.ndarray


def test_array_record_with_another_constructor_is_refused():
  value = np.arange(3, dtype=np.float32)
  data = _array_record(multiarray.scalar, value)  # allowed global, wrong role
  with pytest.raises(
    weights.UnsafePickleError, match='only numpy _reconstruct'
  ):
    weights.unpickle_safely(data)


def test_array_record_with_instance_dict_is_refused():
  value = np.arange(3, dtype=np.float32)
  data = _array_record(multiarray._reconstruct, value, npdict={'x': 1})
  with pytest.raises(weights.UnsafePickleError, match='__dict__'):
    weights.unpickle_safely(data)


def test_latin1_codec_loads_and_other_codecs_are_refused():
  import _codecs  # noqa: PLC0415 - the module protocol-2 pickles name

  for spelling in ('latin1', 'latin-1', 'Latin_1', 'LATIN1'):
    ok = pickle.dumps(_Reduce(_codecs.encode, 'ab\xff', spelling), protocol=2)
    assert weights.unpickle_safely(ok) == b'ab\xff'
  for args, pattern in [
    (('ab', 'rot13'), "encoding 'rot13'"),
    (('ab', 'hex'), "encoding 'hex'"),
    (('ab', 'latin1', 'ignore'), "encoding 'latin1'"),
    # _codecs.encode's default encoding is UTF-8, not latin-1.
    (('ab',), "encoding 'utf-8'"),
    ((b'ab', 'latin1'), 'of a bytes'),
  ]:
    data = pickle.dumps(_Reduce(_codecs.encode, *args), protocol=2)
    with pytest.raises(weights.UnsafePickleError, match=pattern):
      weights.unpickle_safely(data)


def test_persistent_id_is_refused():
  class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return 'payload' if isinstance(obj, str) and obj == 'x' else None

  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump({'a': 'x'})
  with pytest.raises(
    weights.UnsafePickleError, match="persistent id 'payload'"
  ):
    weights.unpickle_safely(buffer.getvalue())


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_save_official_round_trips_and_writes_a_plain_pickle(
  tmp_path, protocol
):
  import jax.numpy as jnp  # noqa: PLC0415 - only this test writes jax arrays

  params = {
    'stem/conv': {
      'w': np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
      'b': np.array([1.5, -2.0], np.float16),
    },
    'head': {'gain': jnp.ones((3,), jnp.float32), 'n': np.array([3], np.int32)},
  }
  path = tmp_path / f'p{protocol}.npz'
  weights.save_official(path, params, protocol=protocol)
  raw = path.read_bytes()
  # The pickle's own header names the protocol (PROTO opcode, then the number).
  assert raw[:2] == bytes([0x80, protocol])
  # Oracle: the standard unpickler reads the same nested dict of ndarrays.
  plain = pickle.loads(raw)
  for loaded in (plain, weights.load_official(path)):
    assert sorted(loaded) == sorted(params)
    for module, leaves in params.items():
      assert sorted(loaded[module]) == sorted(leaves)
      for name, value in leaves.items():
        got = loaded[module][name]
        assert type(got) is np.ndarray
        assert got.dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(got, np.asarray(value))


def test_save_official_default_protocol_is_4(tmp_path):
  path = tmp_path / 'p.npz'
  weights.save_official(path, {'m': {'w': np.zeros(2, np.float32)}})
  assert path.read_bytes()[:2] == bytes([0x80, 4])


def test_pickled_jax_array_loads_as_numpy():
  import jax.numpy as jnp  # noqa: PLC0415

  value = jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 3
  data = pickle.dumps({'m': {'w': value}}, protocol=4)
  assert b'_reconstruct_array' in data  # jax's own reduce, not an ndarray's
  loaded = weights.unpickle_safely(data)
  assert type(loaded['m']['w']) is np.ndarray
  np.testing.assert_array_equal(loaded['m']['w'], np.asarray(value))


def test_jax_array_record_with_another_constructor_is_refused():
  import jax  # noqa: PLC0415

  value = np.arange(3, dtype=np.float32)
  fun, args, state = value.__reduce__()
  record = (
    jax._src.array._reconstruct_array,
    (multiarray.scalar, args, state, {}),
  )
  data = pickle.dumps(_Reduce(record[0], *record[1]), protocol=4)
  with pytest.raises(
    weights.UnsafePickleError, match='only numpy _reconstruct'
  ):
    weights.unpickle_safely(data)


def test_each_unpickler_has_its_own_allow_list():
  first = weights.RestrictedUnpickler(io.BytesIO(b''))
  first._allowed[('builtins', 'exec')] = exec
  data = pickle.dumps(_Reduce(exec, '1'), protocol=4)
  with pytest.raises(weights.UnsafePickleError, match='builtins.exec'):
    weights.unpickle_safely(data)


def _renamed(data: bytes, old: str, new: str) -> bytes:
  """A protocol-0 pickle with a module path renamed (names are text there)."""
  assert old.encode() in data
  return data.replace(old.encode(), new.encode())


def test_older_numpy_dill_and_ordereddict_records_load():
  # Files written under NumPy 1 (numpy.core), by older dill (dill.dill), with
  # OrderedDicts and NumPy scalars: the names the official files may hold.
  import collections  # noqa: PLC0415

  value = np.arange(6, dtype=np.float32).reshape(2, 3)
  tree = collections.OrderedDict(
    m=collections.OrderedDict(w=value, s=np.float32(2.5))
  )
  data = pickle.dumps(tree, protocol=0)
  assert b'collections\nOrderedDict' in data
  for blob in (data, _renamed(data, 'numpy._core', 'numpy.core')):
    loaded = weights.unpickle_safely(blob)
    assert type(loaded) is dict and type(loaded['m']) is dict
    np.testing.assert_array_equal(loaded['m']['w'], value)
    assert loaded['m']['s'] == np.float32(2.5)
    assert loaded['m']['s'].dtype == np.float32
  record = _array_record(multiarray._reconstruct, value)
  for blob in (record, _renamed(record, 'dill._dill', 'dill.dill')):
    np.testing.assert_array_equal(weights.unpickle_safely(blob), value)


def test_malformed_official_file_names_itself(tmp_path):
  path = tmp_path / 'not_a_tree.npz'
  path.write_bytes(pickle.dumps([1, 2], protocol=4))
  with pytest.raises(ValueError, match='not_a_tree.npz: expected a dict'):
    weights.load_official(path)
