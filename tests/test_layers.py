"""WSConv2D, grouped-conv strategies, squeeze-excite and stochastic depth."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets import cpu_conv, layers


def _conv_fn(impl, groups=4, out_ch=32, stride=1):
  def fn(x):
    return layers.WSConv2D(
      out_ch,
      kernel_shape=3,
      stride=stride,
      feature_group_count=groups,
      grouped_conv_impl=impl,
      name='conv',
    )(x)

  return hk.without_apply_rng(hk.transform(fn))


def test_standardized_weight_moments():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(0.3, 2.0, size=(3, 3, 16, 8)), jnp.float32)
  gain = jnp.asarray(rng.uniform(0.5, 2.0, size=(8,)), jnp.float32)
  w_hat = np.asarray(layers.standardize_weight(w, gain))
  fan_in = 3 * 3 * 16
  np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(
    w_hat.var(axis=(0, 1, 2)), np.asarray(gain) ** 2 / fan_in, rtol=1e-4
  )


def test_standardize_weight_eps_floor():
  # A constant unit has zero variance: the eps floor keeps it finite and zero after centring.
  w = jnp.ones((1, 1, 4, 2))
  w_hat = layers.standardize_weight(w, jnp.ones((2,)))
  assert np.all(np.isfinite(w_hat)) and np.allclose(w_hat, 0.0)


@pytest.mark.parametrize('shape', [(3, 3, 16, 8), (1, 1, 64, 32)])
def test_standardize_weight_grad_by_dot_matches_reductions(shape):
  # The CPU strategy (gradient sums as dots) must give the reference's weights and gradients.
  rng = np.random.default_rng(2)
  w = rng.normal(0.3, 2.0, size=shape)
  w[..., 0] = (
    0.7  # a constant unit: the eps floor holds its variance, so its dvar term is 0
  )
  w = jnp.asarray(w, jnp.float32)
  gain = jnp.asarray(rng.uniform(0.5, 2.0, size=shape[-1:]), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)

  def loss(w, gain, by_dot):
    return jnp.sum(
      layers.standardize_weight(w, gain, grad_by_dot=by_dot) * cotangent
    )

  np.testing.assert_allclose(
    layers.standardize_weight(w, gain, grad_by_dot=True),
    layers.standardize_weight(w, gain),
    rtol=1e-5,
    atol=1e-6,
  )
  ref = jax.grad(loss, argnums=(0, 1))(w, gain, False)
  by_dot = jax.grad(loss, argnums=(0, 1))(w, gain, True)
  for got, want in zip(by_dot, ref):  # the varying units, against autodiff
    np.testing.assert_allclose(
      got[..., 1:], want[..., 1:], rtol=1e-4, atol=1e-5
    )
  # The constant unit, against the closed form in float64: with the floor, w_hat = (w - mean)
  # * gain / sqrt(eps), so dw = (G - mean(G)) gain / sqrt(eps) and dgain = 0 (up to the
  # float32 rounding of w - mean, amplified by 1 / sqrt(eps)).
  g0 = np.asarray(cotangent[..., 0], np.float64)
  np.testing.assert_allclose(
    by_dot[0][..., 0],
    (g0 - g0.mean()) * float(gain[0]) / 1e-2,
    rtol=1e-4,
    atol=1e-4,
  )
  assert abs(float(by_dot[1][0])) < 1e-2 * float(
    jnp.median(jnp.abs(by_dot[1][1:]))
  )
  # The eps floor applies the same way: a constant unit stays finite and zero.
  flat = layers.standardize_weight(
    jnp.ones((1, 1, 4, 2)), jnp.ones((2,)), grad_by_dot=True
  )
  assert np.all(np.isfinite(flat)) and np.allclose(flat, 0.0)


def test_wsconv_matches_numpy_convolution():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
  f = hk.without_apply_rng(
    hk.transform(lambda x: layers.WSConv2D(4, kernel_shape=3, name='conv')(x))
  )
  params = f.init(jax.random.PRNGKey(0), x)
  params = {
    'conv': {
      **params['conv'],
      'bias': jnp.arange(4.0),
      'gain': jnp.asarray([1.0, 2.0, 0.5, 1.5]),
    }
  }
  out = np.asarray(f.apply(params, x))
  w = np.asarray(params['conv']['w'], np.float64)
  w_hat = (
    (w - w.mean((0, 1, 2)))
    / np.sqrt(w.var((0, 1, 2)) * 27)
    * [1.0, 2.0, 0.5, 1.5]
  )
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((2, 5, 5, 4))
  for i in range(5):
    for j in range(5):
      expected[:, i, j] = np.einsum(
        'nhwc,hwco->no', xp[:, i : i + 3, j : j + 3], w_hat
      )
  expected += np.arange(4.0)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  'stride,size,groups', [(1, 9, 4), (2, 9, 4), (2, 10, 4), (2, (10, 6), 1)]
)
def test_grouped_conv_strategies_agree(stride, size, groups):
  # Even sizes at stride 2 take the phase-split input gradient on the 'split' side.
  h, w = (size, size) if isinstance(size, int) else size
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, 16))
  native = _conv_fn('native', groups=groups, stride=stride)
  split = _conv_fn('split', groups=groups, stride=stride)
  params = native.init(jax.random.PRNGKey(1), x)
  assert params['conv']['w'].shape == (3, 3, 16 // groups, 32)
  np.testing.assert_allclose(
    native.apply(params, x), split.apply(params, x), rtol=1e-5, atol=1e-5
  )

  def loss(f):
    return lambda p, x: jnp.sum(jnp.sin(f.apply(p, x)))

  g_native = jax.grad(loss(native), argnums=(0, 1))(params, x)
  g_split = jax.grad(loss(split), argnums=(0, 1))(params, x)
  for a, b in zip(
    jax.tree_util.tree_leaves(g_native), jax.tree_util.tree_leaves(g_split)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size', [(2, 2), (8, 6), (12, 12)])
def test_conv_by_phases_equals_strided_convolution(size):
  # The four-phase decomposition against a NumPy stride-2 SAME correlation (pads 0 / 1).
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, *size, 5))
  k = rng.standard_normal((3, 3, 5, 7))
  xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  ho, wo = size[0] // 2, size[1] // 2
  expected = np.zeros((2, ho, wo, 7))
  for i in range(ho):
    for j in range(wo):
      expected[:, i, j] = np.einsum(
        'nhwc,hwco->no', xp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3], k
      )
  got = cpu_conv.conv_by_phases(
    jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  'kernel,stride,size,ch',
  [
    (3, 1, 9, 6),
    (3, 2, 10, 6),
    (5, 2, 9, 6),
    (5, 1, (6, 11), 6),
    # Large enough for the weight gradient to be summed over chunks of rows.
    (3, 1, 64, 64),
    (5, 2, 96, 64),
  ],
)
def test_depthwise_by_taps_equals_a_numpy_correlation(kernel, stride, size, ch):
  # TF 'SAME' (at stride 2 and an even size, the extra pad pixel goes after).
  h, w = (size, size) if isinstance(size, int) else size
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, h, w, ch))
  k = rng.standard_normal((kernel, kernel, 1, ch))
  ho, wo = -(-h // stride), -(-w // stride)
  pad_h = max((ho - 1) * stride + kernel - h, 0)
  pad_w = max((wo - 1) * stride + kernel - w, 0)
  xp = np.pad(
    x,
    (
      (0, 0),
      (pad_h // 2, pad_h - pad_h // 2),
      (pad_w // 2, pad_w - pad_w // 2),
      (0, 0),
    ),
  )
  expected = np.zeros((2, ho, wo, ch))
  for i in range(ho):
    for j in range(wo):
      window = xp[:, i * stride : i * stride + kernel, j * stride :][
        :, :, :kernel
      ]
      expected[:, i, j] = np.einsum('nhwc,hwc->nc', window, k[:, :, 0])
  xj, kj = jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
  got = cpu_conv.grouped_conv(xj, kj, (stride, stride), 'SAME', ch, 'split')
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  # Gradients as XLA's own depthwise convolution gives them.
  def loss(impl):
    return lambda x, k: jnp.sum(
      jnp.sin(cpu_conv.grouped_conv(x, k, (stride, stride), 'SAME', ch, impl))
    )

  for a, b in zip(
    jax.grad(loss('native'), (0, 1))(xj, kj),
    jax.grad(loss('split'), (0, 1))(xj, kj),
  ):
    # Float32 sums over thousands of positions, in different orders.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())
  # No convolution is left for XLA:CPU's depthwise kernels.
  names = {
    eqn.primitive.name
    for eqn in _all_eqns(
      jax.make_jaxpr(jax.grad(loss('split'), (0, 1)))(xj, kj).jaxpr
    )
  }
  assert 'conv_general_dilated' not in names


def test_grouped_conv_default_and_override():
  assert jax.default_backend() == 'cpu'
  assert cpu_conv.default_grouped_conv_impl() == 'split'
  cpu_conv.set_grouped_conv_impl('native')
  try:
    assert cpu_conv.default_grouped_conv_impl() == 'native'
  finally:
    cpu_conv.set_grouped_conv_impl(None)
  assert cpu_conv.default_grouped_conv_impl() == 'split'
  with pytest.raises(ValueError, match='accepted'):
    cpu_conv.set_grouped_conv_impl('winograd')
  with pytest.raises(ValueError, match='accepted'):
    hk.transform(lambda: layers.WSConv2D(8, grouped_conv_impl='fast')).init(
      None
    )


def test_split_strategy_lowers_to_dense_convs():
  x = jnp.zeros((1, 8, 8, 16))
  for impl, expected_groups in (('native', {4}), ('split', {1})):
    f = _conv_fn(impl)
    params = f.init(jax.random.PRNGKey(0), x)
    jaxpr = jax.make_jaxpr(f.apply)(params, x)
    groups = {
      eqn.params['feature_group_count']
      for eqn in _all_eqns(jaxpr.jaxpr)
      if eqn.primitive.name == 'conv_general_dilated'
    }
    assert groups == expected_groups, impl


def test_split_groups_gradients_join_by_concatenation():
  # The groups are cut with lax.split, whose transpose concatenates the groups' gradients.
  # Slicing would transpose to one zero-padded full-size copy per group and a sum of them
  # (XLA:CPU ran those pads and adds for 116 ms of thread time per F0 step).
  x = jnp.ones((1, 8, 8, 16))
  w = jnp.ones((3, 3, 4, 32))
  conv = lambda x, w: jnp.sum(
    cpu_conv.grouped_conv(x, w, (1, 1), 'SAME', 4, 'split')
  )
  names = [
    eqn.primitive.name
    for eqn in _all_eqns(jax.make_jaxpr(jax.grad(conv, (0, 1)))(x, w).jaxpr)
  ]
  assert names.count('split') == 3  # input, weight, and the output's transpose
  assert (
    names.count('concatenate') >= 3
  )  # the output, and the input and weight gradients
  assert 'pad' not in names


def _all_eqns(jaxpr):
  """Every equation of ``jaxpr``, including those inside custom_vjp and other sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      inner = getattr(value, 'jaxpr', None)
      if inner is not None and hasattr(inner, 'eqns'):
        yield from _all_eqns(inner)


def test_wsconv_bfloat16_keeps_float32_params():
  f = _conv_fn(None)
  x = jnp.ones((1, 8, 8, 16), jnp.bfloat16)
  params = f.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  assert f.apply(params, x).dtype == jnp.bfloat16


def test_squeeze_excite_gate():
  f = hk.without_apply_rng(
    hk.transform(lambda x: layers.SqueezeExcite(8, 8, 0.5)(x))
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 8))
  params = f.init(jax.random.PRNGKey(1), x)
  assert params['squeeze_excite/~/linear']['w'].shape == (8, 4)
  assert params['squeeze_excite/~/linear_1']['w'].shape == (4, 8)
  gate = f.apply(params, x)
  assert gate.shape == (3, 1, 1, 8)
  p0, p1 = (
    params['squeeze_excite/~/linear'],
    params['squeeze_excite/~/linear_1'],
  )
  h = (
    np.maximum(np.asarray(x).mean((1, 2)) @ p0['w'] + p0['b'], 0) @ p1['w']
    + p1['b']
  )
  np.testing.assert_allclose(gate[:, 0, 0], 1 / (1 + np.exp(-h)), rtol=1e-5)


def test_stochastic_depth_only_when_training():
  f = hk.transform(lambda x, t: layers.StochDepth(0.3)(x, t))
  x = jnp.ones((4000, 2, 2, 3))
  assert np.array_equal(f.apply({}, None, x, False), x)
  out = np.asarray(f.apply({}, jax.random.PRNGKey(0), x, True))
  per_example = out.reshape(4000, -1)
  # Whole examples are dropped (all zeros) or kept unscaled (all ones).
  assert set(np.unique(per_example.min(1))) <= {0.0, 1.0}
  assert np.array_equal(per_example.min(1), per_example.max(1))
  # 4000 Bernoulli(0.3) drops: 3 sigma is 0.022.
  assert per_example[:, 0].mean() == pytest.approx(0.7, abs=0.022)


def test_stochastic_depth_rate_validated():
  with pytest.raises(ValueError, match='drop_rate'):
    hk.transform(lambda: layers.StochDepth(1.0)).init(None)


@pytest.mark.parametrize(
  'batch,size,stride,padding',
  [
    (2, (48, 48), 1, 'SAME'),  # one image per chunk
    (9, (24, 24), 1, 'SAME'),  # four images per chunk, the last chunk one image
    (1, (70, 70), 1, 'SAME'),  # row blocks of 32, the last one 6 rows
    (1, (71, 69), 1, 'VALID'),  # 69x67 outputs: row blocks of 34, 34 and 1
    (
      2,
      (98, 97),
      2,
      'SAME',
    ),  # stride 2, odd width: blocks of 5 output rows, then 4
  ],
)
def test_dense_conv_chunked_weight_gradients_match_autodiff(
  batch, size, stride, padding
):
  # Sizes at which the split strategy sums the weight gradient over chunks, against
  # autodiff of XLA's whole-batch convolution.
  strides = (stride, stride)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, *size, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 8)) * 0.1
  reference = lambda x, w: jax.lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  out, ref_vjp = jax.vjp(reference, x, w)
  assert cpu_conv.chunks_pay_off(x.shape, out.shape, strides)
  ours = lambda x, w: cpu_conv.dense_conv(x, w, strides, padding)
  g = jax.random.normal(jax.random.PRNGKey(2), out.shape)
  np.testing.assert_allclose(ours(x, w), out, rtol=1e-5, atol=1e-5)
  for got, expected in zip(jax.vjp(ours, x, w)[1](g), ref_vjp(g)):
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
  'size,stride,padding',
  [
    ((10, 10), (2, 2), 'SAME'),  # even: SAME pads 0 before, 1 after
    ((9, 11), (2, 2), 'SAME'),  # odd: pads 1 and 1
    ((9, 9), (2, 2), 'VALID'),
    ((8, 9), (2, 1), 'SAME'),  # strided along rows only
  ],
)
def test_batch_minor_weight_gradient_matches_numpy(
  size, stride, padding, monkeypatch
):
  # Strided convolutions too small to chunk take their weight gradient through the
  # identity-product layout; against a float64 NumPy sum over batch and output positions.
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, *size, 16)))
  w = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 8))) * 0.1
  out, vjp = jax.vjp(
    lambda w: cpu_conv.dense_conv(jnp.asarray(x), w, stride, padding),
    jnp.asarray(w),
  )
  g = np.asarray(jax.random.normal(jax.random.PRNGKey(2), out.shape))
  calls = []
  original = cpu_conv.weight_grad_batch_minor
  monkeypatch.setattr(
    cpu_conv,
    'weight_grad_batch_minor',
    lambda *a: calls.append(a[2]) or original(*a),
  )
  got = np.asarray(
    jax.vjp(
      lambda w: cpu_conv.dense_conv(jnp.asarray(x), w, stride, padding),
      jnp.asarray(w),
    )[1](jnp.asarray(g))[0]
  )
  assert calls == [stride]
  pads = jax.lax.padtype_to_pads(size, (3, 3), stride, padding)
  xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
  expected = np.zeros((3, 3, 16, 8))
  ho, wo = g.shape[1:3]
  for kh in range(3):
    for kw in range(3):
      window = xp[
        :,
        kh : kh + stride[0] * (ho - 1) + 1 : stride[0],
        kw : kw + stride[1] * (wo - 1) + 1 : stride[1],
      ]
      expected[kh, kw] = np.einsum(
        'nhwc,nhwo->co', window, g.astype(np.float64)
      )
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_weight_grad_chunks_cover_every_output_once():
  # With x all ones and g all ones, dL/dw[i, j] counts the outputs whose window puts tap
  # (i, j) on a real (not padded) input: a closed-form count that a dropped, repeated or
  # misaligned chunk would change.
  n, h, w, stride = 3, 50, 37, 1
  x = jnp.ones((n, h, w, 16))
  g = jnp.ones((n, h, w, 2))
  pads = jax.lax.padtype_to_pads((h, w), (3, 3), (stride, stride), 'SAME')
  got = cpu_conv.weight_grad_by_chunks(
    x, g, (3, 3, 16, 2), (stride, stride), pads
  )
  rows = np.array([h - 1, h, h - 1])  # tap row 0 and 2 miss one output row each
  cols = np.array([w - 1, w, w - 1])
  expected = n * rows[:, None] * cols[None, :]
  np.testing.assert_array_equal(np.asarray(got)[:, :, 0, 0], expected)
  assert np.all(np.asarray(got) == np.asarray(got)[:, :, :1, :1])


@pytest.mark.parametrize(
  'n,ho,wo,positions,expected',
  [
    (8, 48, 48, 2304, (1, 48)),  # one 48x48 image per chunk: 8 chunks
    (9, 24, 24, 2304, (4, 24)),  # four 24x24 images per chunk: 3 chunks
    (8, 96, 96, 2304, (1, 24)),  # row blocks of 24: 32 chunks, the most allowed
    (
      8,
      48,
      48,
      288,
      (1, 12),
    ),  # 6-row blocks would make 64 chunks: doubled once
    (256, 112, 112, 2304, (11, 112)),  # a large batch: 24 chunks of 11 images
  ],
)
def test_weight_grad_chunk_count_is_bounded(n, ho, wo, positions, expected):
  images, rows = cpu_conv.chunk_shape(n, ho, wo, positions)
  assert (images, rows) == expected
  assert -(-n // images) * -(-ho // rows) <= cpu_conv.MAX_WEIGHT_GRAD_CHUNKS


def test_chunked_weight_gradient_chosen_for_f0_layers():
  # Batch 8 at 192 px: chunked where it measured faster (96x96, 48x48 and 24x24 outputs),
  # XLA's whole-batch gradient elsewhere.
  pays = lambda size, cin, stride: cpu_conv.chunks_pay_off(
    (8, size, size, cin),
    (8, size // stride, size // stride, 64),
    (stride, stride),
  )
  assert (
    pays(96, 16, 1)
    and pays(96, 64, 2)
    and pays(48, 128, 1)
    and pays(48, 128, 2)
  )
  assert pays(24, 128, 1)
  assert not pays(192, 3, 2)  # the stem's first convolution: 3 input channels
  assert not pays(24, 128, 2) and not pays(12, 128, 1) and not pays(6, 128, 1)
