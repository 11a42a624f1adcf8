"""Published weights in and out: official pickles, our npz, timm layouts, fine-tuning helpers."""

import json
import os
import pickle

import jax
import numpy as np
import pytest

import nfnets
from nfnets import weights

FIXTURE = os.path.join(
  os.path.dirname(__file__), 'fixtures', 'timm_nfnet_tiny.npz'
)
TINY = dict(
  num_classes=10, width=0.0625, group_size=8
)  # as tests/fixtures/make_timm_fixture.py


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE, allow_pickle=False) as data:
    sd = {k[3:]: data[k] for k in data.files if k.startswith('sd/')}
    return sd, data['images'], data['logits']


@pytest.fixture(scope='module')
def tiny(fixture):
  """The tiny model and random params for it (the fixture's, so no init is traced here)."""
  model = nfnets.create_model('nfnet_f0', **TINY)
  params = weights.from_timm(fixture[0])
  weights.check_params(params, model.param_shapes(32))
  return model, params


def _logits(model, params, images):
  apply = jax.jit(model.apply, static_argnums=(4,))
  return np.asarray(
    apply(params, {}, jax.random.PRNGKey(0), images, False)[0]['logits']
  )


def _assert_trees_equal(a, b):
  fa, fb = weights.flatten(a), weights.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(
      np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k
    )


# --- official format -------------------------------------------------------------------------


@pytest.mark.parametrize('writer', ['dill', 'pickle2', 'pickle5'])
def test_official_format_loads_and_matches_model(tiny, tmp_path, writer):
  model, params = tiny
  path = tmp_path / 'F0_haiku.npz'
  tree = {
    m: {n: np.asarray(v) for n, v in leaves.items()}
    for m, leaves in params.items()
  }
  if writer == 'dill':
    dill = pytest.importorskip('dill')
    with open(path, 'wb') as f:
      dill.dump(tree, f)  # what the official release used
    assert (
      b'dill._dill' in path.read_bytes()
    )  # arrays go through dill's _create_array
  else:
    with open(path, 'wb') as f:
      pickle.dump(tree, f, protocol=int(writer[-1]))
  assert weights.detect_format(path) == 'official'
  loaded = weights.load_for_model(path, model, resolution=32)
  _assert_trees_equal(loaded, params)


def test_official_file_with_mismatches_is_rejected_with_a_report(
  tiny, tmp_path
):
  model, params = tiny
  bad = {m: dict(leaves) for m, leaves in params.items()}
  bad['NFNet/~/nf_block_2/~/conv1b']['w'] = np.zeros(
    (3, 3, 4, 16), np.float32
  )  # wrong I
  bad['NFNet/~/stem_conv7'] = bad.pop('NFNet/~/stem_conv3')  # renamed
  del bad['NFNet/~/nf_block_5']  # skip_gain missing
  path = tmp_path / 'bad.npz'
  weights.save_official(path, bad)
  report = weights.compare_params(
    weights.load_official(path), model.param_shapes(32)
  )
  assert set(report.missing) == {
    'NFNet/~/stem_conv3/w',
    'NFNet/~/stem_conv3/gain',
    'NFNet/~/stem_conv3/bias',
    'NFNet/~/nf_block_5/skip_gain',
  }
  assert set(report.unexpected) == {
    'NFNet/~/stem_conv7/w',
    'NFNet/~/stem_conv7/gain',
    'NFNet/~/stem_conv7/bias',
  }
  assert report.mismatched == (
    ('NFNet/~/nf_block_2/~/conv1b/w', (3, 3, 4, 16), (3, 3, 8, 16)),
  )
  with pytest.raises(
    ValueError,
    match=r'nf_block_2/~/conv1b/w has \(3, 3, 4, 16\), model '
    r'expects \(3, 3, 8, 16\)',
  ):
    weights.load_for_model(path, model, resolution=32)


def test_a_file_for_another_variant_is_rejected(tiny, tmp_path):
  _, params = tiny
  path = tmp_path / 'tiny.npz'
  weights.save_official(path, params)
  f1 = nfnets.create_model(
    'nfnet_f1', **TINY
  )  # deeper: blocks 12.. are missing
  with pytest.raises(ValueError, match=r'missing: .*nf_block_12'):
    weights.load_for_model(path, f1, resolution=32)


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_pickle_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'F0_haiku.npz'
  with open(path, 'wb') as f:
    pickle.dump({'NFNet/~/linear': {'w': _RunsCode(marker)}}, f)
  with pytest.raises(
    weights.UnsafePickleError, match=r'Refusing to load (posix|nt)\.system'
  ):
    weights.load_official(path)
  assert not marker.exists()


def test_dill_pickled_function_is_refused(tmp_path):
  dill = pytest.importorskip('dill')
  path = tmp_path / 'F0_haiku.npz'
  with open(path, 'wb') as f:
    dill.dump({'NFNet/~/linear': {'w': lambda: 0}}, f)
  with pytest.raises(
    weights.UnsafePickleError, match=r'Refusing to load dill\._dill\.'
  ):
    weights.load_official(path)


def test_non_numeric_leaves_are_rejected():
  blob = pickle.dumps({'NFNet/~/linear': {'w': 'not an array'}})
  with pytest.raises(ValueError, match='not a numeric array'):
    weights.as_param_tree(weights.unpickle_safely(blob), 'x')


# --- full-size F0, abstractly ----------------------------------------------------------------


def test_full_f0_names_and_shapes_match_the_release_and_timm(fixture):
  shapes = nfnets.create_model('nfnet_f0').param_shapes()
  assert (
    nfnets.count_params(shapes) == 71_489_284
  )  # paper Table 3 / official F0
  # The tiny fixture has F0's depths, so its timm keys map onto exactly F0's module names.
  sd, _, _ = fixture
  assert sorted(weights.flatten(weights.from_timm(sd))) == sorted(
    weights.flatten(shapes)
  )
  expected_modules = (
    {f'NFNet/~/stem_conv{i}' for i in range(4)}
    | {'NFNet/~/nf_block'}
    | {f'NFNet/~/nf_block_{i}' for i in range(1, 12)}
    | {'NFNet/~/final_conv', 'NFNet/~/linear'}
  )
  assert expected_modules <= set(shapes)
  assert shapes['NFNet/~/nf_block_3/~/conv1b']['w'].shape == (3, 3, 128, 768)
  assert shapes['NFNet/~/linear']['w'].shape == (3072, 1000)


# --- our format ------------------------------------------------------------------------------


def test_npz_round_trip_is_exact_and_pickle_free(tiny, tmp_path):
  _, params = tiny
  path = tmp_path / 'ours.npz'
  weights.save_npz(path, params)
  assert weights.detect_format(path) == 'npz'
  _assert_trees_equal(weights.load_npz(path), params)
  with np.load(path, allow_pickle=False) as data:
    assert 'NFNet/~/nf_block_3/~/squeeze_excite/~/linear_1/w' in data.files


# --- timm ------------------------------------------------------------------------------------


def test_timm_layout_round_trips_exactly(tiny, fixture):
  _, params = tiny
  sd = weights.to_timm(params)
  assert sd['stem.conv1.weight'].shape == (16, 3, 3, 3)  # OIHW
  assert sd['stem.conv1.gain'].shape == (16, 1, 1, 1)
  assert sd['stages.1.0.downsample.conv.weight'].shape == (32, 16, 1, 1)
  assert sd['stages.2.5.attn_last.fc1.weight'].shape == (48, 96, 1, 1)
  assert sd['head.fc.weight'].shape == (10, 192)
  assert sd['stages.3.2.skipinit_gain'].shape == ()
  np.testing.assert_array_equal(
    sd['stages.2.0.conv2b.weight'],
    params['NFNet/~/nf_block_3/~/conv1b']['w'].transpose(3, 2, 0, 1),
  )
  _assert_trees_equal(weights.from_timm(sd), params)
  timm_sd, _, _ = fixture
  assert sorted(sd) == sorted(timm_sd)  # every timm key, no more
  back = weights.to_timm(weights.from_timm(timm_sd))
  for k, v in timm_sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_to_timm_depths(tiny):
  _, params = tiny
  explicit = weights.to_timm(params, depths=(1, 2, 6, 3))
  assert sorted(explicit) == sorted(weights.to_timm(params))
  with pytest.raises(
    ValueError,
    match=r'depths \(1, 2, 6, 2\) sum to 11, but the params have '
    r'12 blocks',
  ):
    weights.to_timm(params, depths=(1, 2, 6, 2))


def test_from_timm_rejects_unknown_keys(fixture):
  sd = dict(fixture[0])
  sd['stages.0.0.attn.fc1.weight'] = np.zeros((1,), np.float32)
  with pytest.raises(
    ValueError, match=r'no NFNet counterpart: \[.stages\.0\.0\.attn\.fc1'
  ):
    weights.from_timm(sd)


def test_safetensors_round_trip_is_exact(tiny, tmp_path):
  _, params = tiny
  path = tmp_path / 'model.safetensors'
  weights.save_timm(path, params)
  assert weights.detect_format(path) == 'safetensors'
  _assert_trees_equal(weights.load_timm(path), params)
  raw = weights.load_safetensors(path)
  assert raw['stem.conv1.gain'].shape == (16, 1, 1, 1)
  assert set(raw) == set(weights.to_timm(params))


def test_safetensors_files_written_before_still_load(tmp_path):
  # The bytes the earlier hand-written NumPy writer produced (names sorted, no metadata,
  # header padded with spaces to 8 bytes), built here from the format's definition.
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.array(-1.5, np.float32)  # 0-d, as timm's skipinit_gain
  header = {
    'a': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]},
    'b': {'dtype': 'F32', 'shape': [], 'data_offsets': [24, 28]},
  }
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)
  path = tmp_path / 'old.safetensors'
  path.write_bytes(
    len(blob).to_bytes(8, 'little') + blob + a.tobytes() + b.tobytes()
  )
  got = weights.load_safetensors(path)
  assert sorted(got) == ['a', 'b'] and got['b'].shape == ()
  np.testing.assert_array_equal(got['a'], a)
  np.testing.assert_array_equal(got['b'], b)
  path.write_bytes(b'\x80\x04not a safetensors file')
  with pytest.raises(ValueError, match='not a readable safetensors file'):
    weights.load_safetensors(path)


def test_pth_without_torch_gives_a_clear_error(tiny, tmp_path, monkeypatch):
  import builtins

  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch':
      raise ImportError('no torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(ImportError, match='needs PyTorch'):
    weights.save_timm(tmp_path / 'model.pth', tiny[1])


def test_timm_fixture_logits_match(fixture):
  """timm NormFreeNet (DeepMind config, random weights) vs ours after conversion."""
  sd, images, timm_logits = fixture
  model = nfnets.create_model('nfnet_f0', **TINY)
  params = weights.from_timm(sd)
  weights.check_params(params, model.param_shapes(images.shape[1]))
  logits = _logits(model, params, images)
  rel = np.abs(logits - timm_logits).max() / np.abs(timm_logits).max()
  assert rel < 5e-6, rel  # float32 rounding: 6e-7 with torch 2.x / timm 1.x
  # Half the WS convs have var * fan_in = 5e-5 < WS_EPS in every unit, so the eps floor sets
  # their scale (make_timm_fixture.py): a wrong eps or a formula without the max fails.
  floor_bound = [
    k
    for k, v in sd.items()
    if v.ndim == 4
    and k + '_gain' not in sd
    and k.replace('weight', 'gain') in sd
    and np.all(v.reshape(v.shape[0], -1).var(1) * v[0].size < 1e-4)
  ]
  assert len(floor_bound) >= 10, floor_bound
  # The comparison has teeth: a single zeroed skip gain moves the logits far beyond it.
  params['NFNet/~/nf_block_7']['skip_gain'] = np.float32(0.0).reshape(())
  moved = np.abs(_logits(model, params, images) - timm_logits).max()
  assert moved / np.abs(timm_logits).max() > 1e-3


# --- fine-tuning -----------------------------------------------------------------------------


def test_replace_classifier(tiny):
  _, params = tiny
  new = weights.replace_classifier(params, 3, jax.random.PRNGKey(1))
  assert new['NFNet/~/linear']['w'].shape == (192, 3)
  assert abs(float(np.std(new['NFNet/~/linear']['w'])) - 0.01) < 0.004
  np.testing.assert_array_equal(new['NFNet/~/linear']['b'], np.zeros(3))
  np.testing.assert_array_equal(
    new['NFNet/~/final_conv']['w'], params['NFNet/~/final_conv']['w']
  )
  with pytest.raises(ValueError, match='num_classes must be a positive int'):
    weights.replace_classifier(params, 0, jax.random.PRNGKey(1))


def test_load_pretrained_for_finetune(tiny, tmp_path):
  _, params = tiny
  path = tmp_path / 'pretrained.npz'
  weights.save_official(path, params)
  target = nfnets.create_model(
    'nfnet_f0', num_classes=4, width=0.0625, group_size=8
  )
  new = weights.load_pretrained_for_finetune(path, target, resolution=32)
  weights.check_params(new, target.param_shapes(32))
  np.testing.assert_array_equal(
    new['NFNet/~/nf_block_4/~/conv1']['w'],
    params['NFNet/~/nf_block_4/~/conv1']['w'],
  )
  other = nfnets.create_model(
    'nfnet_f0', num_classes=4, width=0.125, group_size=8
  )
  with pytest.raises(ValueError, match='apart from the classifier'):
    weights.load_pretrained_for_finetune(path, other, resolution=32)
