"""AGC against independent oracles: a direct NumPy formula and optax.adaptive_grad_clip."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets import agc

CLIP = 0.05
EPS = 1e-3


def numpy_agc(grad, param, clipping, eps, axes):
  """The paper's formula, written independently in float64 NumPy."""
  g = np.asarray(grad, np.float64)
  w = np.asarray(param, np.float64)
  g_norm = np.sqrt(np.sum(g * g, axis=axes, keepdims=True))
  w_norm = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
  max_norm = clipping * np.maximum(w_norm, eps)
  clipped = g * max_norm / np.maximum(g_norm, 1e-6)
  trigger = g_norm > max_norm
  return np.where(trigger, clipped, g), np.broadcast_to(trigger, g.shape)


def random_tree(seed=0):
  """Params and grads with about half of the units above the threshold."""
  rng = np.random.default_rng(seed)
  shapes = {
    'net/~/conv': {'w': (3, 3, 4, 8), 'gain': (8,), 'bias': (8,)},
    'net/~/linear': {'w': (16, 10), 'b': (10,)},
    'net/~/block': {'skip_gain': ()},
  }
  params, grads = {}, {}
  for mod, leaves in shapes.items():
    params[mod], grads[mod] = {}, {}
    for name, shape in leaves.items():
      p = rng.normal(size=shape).astype(np.float32)
      # Per-unit gradient scale spread around the threshold CLIP * ||w_unit||.
      scale = rng.uniform(0.001, 0.1, size=shape[-1:] if shape else ())
      g = (
        rng.normal(size=shape)
        * scale
        / np.sqrt(max(np.prod(shape[:-1]), 1))
        * np.linalg.norm(p)
      ).astype(np.float32)
      params[mod][name], grads[mod][name] = p, g
  # Zero-initialised parameters: eps alone sets the bound (CLIP * EPS = 5e-5).
  params['net/~/conv']['bias'] = np.zeros((8,), np.float32)
  grads['net/~/conv']['bias'] = np.full(
    (8,), 1e-4, np.float32
  )  # norm 2.8e-4 > 5e-5: clip
  params['net/~/block']['skip_gain'] = np.zeros((), np.float32)
  grads['net/~/block']['skip_gain'] = np.array(
    4e-5, np.float32
  )  # below 5e-5: untouched
  return params, grads


AXES = {'w': None, 'gain': (0,), 'bias': (0,), 'b': (0,), 'skip_gain': ()}


def oracle_axes(name, shape):
  if len(shape) == 4:
    return (0, 1, 2)
  if len(shape) == 2:
    return (0,)
  return tuple(range(len(shape)))


def test_matches_numpy_formula_and_leaves_unclipped_units_bitwise():
  params, grads = random_tree()
  out, _ = agc.adaptive_grad_clip(CLIP, EPS).update(
    grads, optax.EmptyState(), params
  )
  n_clipped = n_kept = 0
  for mod in params:
    for name in params[mod]:
      g, p = grads[mod][name], params[mod][name]
      want, trigger = numpy_agc(g, p, CLIP, EPS, oracle_axes(name, np.shape(p)))
      got = np.asarray(out[mod][name])
      np.testing.assert_allclose(
        got, want, rtol=2e-6, atol=0, err_msg=f'{mod}/{name}'
      )
      assert np.array_equal(got[~trigger], np.asarray(g)[~trigger]), (
        f'{mod}/{name}'
      )
      n_clipped += int(trigger.sum())
      n_kept += int((~trigger).sum())
  # The tree really exercises both branches.
  assert n_clipped > 50 and n_kept > 50
  # Zero-init bias: clipped to norm CLIP * EPS; zero-init skip gain: below it, unchanged.
  np.testing.assert_allclose(
    np.linalg.norm(out['net/~/conv']['bias']), CLIP * EPS, rtol=1e-6
  )
  assert np.asarray(out['net/~/block']['skip_gain']) == np.float32(4e-5)


def test_unit_exactly_at_threshold_is_untouched_and_just_above_is_clipped():
  # Unit 0: ||w|| = 5, ||g|| = 2.5 = 0.5 * 5 exactly (all exact in float32): not clipped.
  # Unit 1: ||w|| = 5, ||g|| = 2.5 * (1 + 2^-20) > 2.5: clipped to exactly norm 2.5.
  w = np.array([[3.0, 3.0], [4.0, 4.0]], np.float32)
  up = np.float32(1 + 2.0**-20)
  g = np.array([[1.5, 1.5 * up], [2.0, 2.0 * up]], np.float32)
  out, _ = agc.adaptive_grad_clip(0.5, EPS).update(
    {'l': {'w': g}}, optax.EmptyState(), {'l': {'w': w}}
  )
  out = np.asarray(out['l']['w'])
  assert np.array_equal(out[:, 0], g[:, 0])
  assert not np.array_equal(out[:, 1], g[:, 1])
  np.testing.assert_allclose(np.linalg.norm(out[:, 1]), 2.5, rtol=1e-6)


def test_matches_optax_where_unit_conventions_agree():
  """optax agrees on shapes whose squeeze keeps their rank (its vectors are squeezed)."""
  params, grads = random_tree(1)
  ours, _ = agc.adaptive_grad_clip(CLIP, EPS).update(
    grads, optax.EmptyState(), params
  )
  ref, _ = optax.adaptive_grad_clip(CLIP, EPS).update(
    grads, optax.EmptyState(), params
  )
  for a, b in zip(
    jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref), strict=True
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6)


def test_differs_from_optax_on_single_input_channel_conv_by_design():
  """A (1, 1, 1, C) kernel has C units; optax squeezes it to a vector and clips it whole."""
  rng = np.random.default_rng(2)
  w = rng.normal(size=(1, 1, 1, 6)).astype(np.float32)
  g = (w * np.array([0.001, 1, 0.001, 1, 0.001, 1])).astype(np.float32)
  tree_w, tree_g = {'c': {'w': w}}, {'c': {'w': g}}
  ours = agc.adaptive_grad_clip(0.01).update(tree_g, None, tree_w)[0]['c']['w']
  theirs = optax.adaptive_grad_clip(0.01).update(tree_g, None, tree_w)[0]['c'][
    'w'
  ]
  per_unit = optax.adaptive_grad_clip(0.01, axis=(0, 1, 2)).update(
    tree_g, None, tree_w
  )[0]
  want, trigger = numpy_agc(g, w, 0.01, EPS, (0, 1, 2))
  np.testing.assert_allclose(ours, want, rtol=2e-6)
  np.testing.assert_allclose(ours, per_unit['c']['w'], rtol=2e-6)
  assert trigger[..., 0].all() == False and trigger[..., 1].all()  # noqa: E712
  assert not np.allclose(
    ours, theirs
  )  # whole-tensor clipping also shrinks the small units


def test_bfloat16_grads_use_float32_norms():
  params, grads = random_tree(3)
  grads16 = jax.tree_util.tree_map(
    lambda g: jnp.asarray(g, jnp.bfloat16), grads
  )
  out, _ = agc.adaptive_grad_clip(CLIP, EPS).update(grads16, None, params)
  for mod in params:
    for name in params[mod]:
      g16 = grads16[mod][name]
      got = out[mod][name]
      assert got.dtype == jnp.bfloat16
      want, trigger = numpy_agc(
        np.asarray(g16, np.float32),
        params[mod][name],
        CLIP,
        EPS,
        oracle_axes(name, np.shape(g16)),
      )
      want16 = np.asarray(jnp.asarray(want, jnp.float32).astype(jnp.bfloat16))
      np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want16, np.float32), rtol=1e-2
      )
      assert np.array_equal(
        np.asarray(got)[~trigger], np.asarray(g16)[~trigger]
      )
  assert (
    agc.unitwise_norm(jnp.ones((4, 3), jnp.bfloat16), (0,)).dtype == jnp.float32
  )
  # 4096 ones: a bfloat16 accumulator stalls at 256; float32 gives exactly 64 = sqrt(4096).
  big = jnp.ones((4096, 1), jnp.bfloat16)
  assert float(agc.unitwise_norm(big, (0,))[0, 0]) == 64.0


def test_unknown_rank_raises_naming_the_parameter_unless_axes_are_given():
  w = np.ones((3, 4, 5), np.float32)
  g = np.full((3, 4, 5), 1.0, np.float32)
  with pytest.raises(ValueError, match=r"'attn/~/qkv/w'.*\(3, 4, 5\)"):
    agc.adaptive_grad_clip(0.01).update(
      {'attn/~/qkv': {'w': g}}, None, {'attn/~/qkv': {'w': w}}
    )
  tx = agc.adaptive_grad_clip(0.01, unit_axes={'attn/~/qkv/w': (0,)})
  out = tx.update({'attn/~/qkv': {'w': g}}, None, {'attn/~/qkv': {'w': w}})[0]
  np.testing.assert_allclose(
    out['attn/~/qkv']['w'], numpy_agc(g, w, 0.01, EPS, (0,))[0], rtol=2e-6
  )
  with pytest.raises(ValueError, match='out of range'):
    agc.adaptive_grad_clip(0.01, unit_axes=lambda n, s: (3,)).update(
      {'a': {'w': g}}, None, {'a': {'w': w}}
    )


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='clipping must be > 0'):
    agc.adaptive_grad_clip(0.0)
  with pytest.raises(ValueError, match='eps must be >= 0'):
    agc.adaptive_grad_clip(0.01, eps=-1.0)
  with pytest.raises(ValueError, match='needs the current params'):
    agc.adaptive_grad_clip(0.01).update({'a': np.ones(2)}, None)
  with pytest.raises(ValueError, match="'a/w'.*different shapes"):
    agc.adaptive_grad_clip(0.01).update(
      {'a': {'w': np.ones((2, 3))}}, None, {'a': {'w': np.ones((3, 2))}}
    )


def test_clip_fractions_count_units_like_the_oracle():
  params, grads = random_tree(4)
  fr = jax.jit(lambda g, p: agc.clip_fractions(g, p, CLIP, EPS))(grads, params)
  total_clipped = total_units = 0
  for mod in params:
    for name in params[mod]:
      p = params[mod][name]
      axes = oracle_axes(name, np.shape(p))
      _, trigger = numpy_agc(grads[mod][name], p, CLIP, EPS, axes)
      units = trigger.max(axis=axes) if axes else trigger
      units = np.atleast_1d(units)
      np.testing.assert_allclose(
        fr.per_param[f'{mod}/{name}'], units.mean(), rtol=1e-6
      )
      total_clipped += units.sum()
      total_units += units.size
  assert (
    total_units == 8 + 1 + 1 + 10 + 1 + 1
  )  # conv w, gain, bias, linear w, b, skip_gain
  np.testing.assert_allclose(fr.overall, total_clipped / total_units, rtol=1e-6)


def test_composes_with_optax_chain_and_mask_under_jit():
  params, grads = random_tree(5)
  mask = jax.tree_util.tree_map_with_path(
    lambda kp, _: agc.param_path(kp) != 'net/~/linear/w', params
  )
  tx = optax.chain(
    optax.masked(agc.adaptive_grad_clip(CLIP, EPS), mask), optax.sgd(1.0)
  )
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_array_equal(
    updates['net/~/linear']['w'], -grads['net/~/linear']['w']
  )
  want, _ = numpy_agc(
    grads['net/~/conv']['w'], params['net/~/conv']['w'], CLIP, EPS, (0, 1, 2)
  )
  np.testing.assert_allclose(updates['net/~/conv']['w'], -want, rtol=2e-6)


def test_clip_fractions_agree_with_the_transformation_at_its_edges():
  # A unit exactly at the threshold is not counted (nor changed); one above is.
  w = np.array([[3.0, 3.0], [4.0, 4.0]], np.float32)
  up = np.float32(1 + 2.0**-20)
  g = np.array([[1.5, 1.5 * up], [2.0, 2.0 * up]], np.float32)
  fr = agc.clip_fractions({'l': {'w': g}}, {'l': {'w': w}}, 0.5)
  assert float(fr.per_param['l/w']) == 0.5
  # The default eps is the transformation's (1e-3): a zero-initialised gain whose
  # gradient norm is 2e-5 > 0.01 * 1e-3 is clipped by both.
  p, dg = {'b': {'gain': np.zeros((), np.float32)}}, {'b': {'gain': 2e-5}}
  dg = jax.tree.map(np.float32, dg)
  clipped, _ = agc.adaptive_grad_clip(0.01).update(dg, None, p)
  assert float(clipped['b']['gain']) < 2e-5
  fr = agc.clip_fractions(dg, p, 0.01)
  assert float(fr.per_param['b/gain']) == 1.0
  # A single unit in all: the overall fraction is that unit's.
  assert float(fr.overall) == 1.0


def test_clip_fractions_include_and_unit_axes():
  params, grads = random_tree(6)
  # Leaves come in sorted order; leave out the first, keep the ones after it.
  include = lambda name: name != 'net/~/block/skip_gain'
  fr = agc.clip_fractions(grads, params, CLIP, EPS, include=include)
  assert sorted(fr.per_param) == [
    'net/~/conv/bias',
    'net/~/conv/gain',
    'net/~/conv/w',
    'net/~/linear/b',
    'net/~/linear/w',
  ]
  # unit_axes given to clip_fractions is what counts: the whole linear kernel as
  # one unit is one clip decision.
  whole = agc.clip_fractions(
    grads['net/~/linear'],
    params['net/~/linear'],
    CLIP,
    EPS,
    unit_axes={'w': (0, 1), 'b': (0,)},
  )
  _, trigger = numpy_agc(
    grads['net/~/linear']['w'], params['net/~/linear']['w'], CLIP, EPS, (0, 1)
  )
  assert float(whole.per_param['w']) == float(trigger.max())


def test_zero_eps_is_accepted_and_zero_params_then_clip_everything():
  p = {'l': {'b': np.zeros((3,), np.float32)}}
  g = {'l': {'b': np.full((3,), 1e-8, np.float32)}}
  out, _ = agc.adaptive_grad_clip(0.01, eps=0.0).update(g, None, p)
  np.testing.assert_array_equal(out['l']['b'], 0.0)
  fr = agc.clip_fractions(g, p, 0.01, eps=0.0)
  assert float(fr.overall) == 1.0


def test_errors_name_the_parameter():
  g, p = {'a': {'w': np.ones((2, 3))}}, {'a': {'w': np.ones((3, 2))}}
  with pytest.raises(ValueError, match="'a/w'.*different shapes"):
    agc.clip_fractions(g, p, 0.01)
  w = np.ones((3, 4, 5), np.float32)
  with pytest.raises(ValueError, match=r"'q/w'.*\(3, 4, 5\)"):
    agc.clip_fractions({'q': {'w': w}}, {'q': {'w': w}}, 0.01)
  with pytest.raises(ValueError, match='2 leaves but params 1'):
    agc.clip_fractions({'a': 1.0, 'b': 1.0}, {'a': 1.0}, 0.01)


def test_param_path_joins_dict_sequence_and_attribute_keys():
  pair = collections.namedtuple('Pair', ['first', 'second'])
  tree = {'mod/~/conv': [pair(1.0, 2.0)]}
  paths = [
    agc.param_path(keypath)
    for keypath, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]
  assert paths == ['mod/~/conv/0/first', 'mod/~/conv/0/second']
  assert agc.param_path(['a', 3]) == 'a/3'  # plain keys as they are


def test_unit_axes_function_sees_name_and_shape_and_negative_axes_count():
  seen = []

  def axes_fn(name, shape):
    seen.append((name, shape))
    return (-2,)

  assert agc.resolve_unit_axes('l/w', [3, 4], axes_fn) == (0,)
  assert seen == [('l/w', (3, 4))]
  assert agc.resolve_unit_axes('l/w', (3, 4), {'l/w': (-2, 1)}) == (0, 1)
  with pytest.raises(ValueError, match='out of range'):
    agc.resolve_unit_axes('l/w', (3, 4), {'l/w': (-3,)})
