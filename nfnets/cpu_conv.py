"""How WSConv2D's convolution and weight standardization are computed, per backend.

Two strategies give the same numbers. ``'native'`` hands XLA one convolution per layer, with
``feature_group_count`` for grouped ones, and autodiff's gradients: what GPUs and TPUs run
fastest. ``'split'``, the default on CPU, rewrites the same computation into forms XLA:CPU
runs fastest, because its grouped convolutions and several of its gradient kernels are far
slower than equivalent dense work:

- a grouped convolution runs as one dense convolution per group (:func:`grouped_conv`), and
  a depthwise one as a sum of shifted products (:func:`depthwise_by_taps`);
- an ungrouped stride-1 1x1 convolution runs as a matrix product;
- other dense convolutions take their gradients through :func:`dense_conv`: the weight
  gradient summed over chunks of output positions (:func:`weight_grad_by_chunks`) or, when
  strided and small, with its input moved batch-minor first (:func:`weight_grad_batch_minor`),
  and the input gradient of a stride-2 3x3 SAME convolution by input phases
  (:func:`conv_by_phases`);
- weight standardization's gradient is taken in closed form with its per-unit sums as
  matrix products (:func:`standardize_weight_dot_grad`).

Where each rewrite pays off was measured per layer; the figures are in
docs/performance.md.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

GROUPED_CONV_IMPLS = ('native', 'split')
DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
# (low, high) padding of H and W, as jax.lax.padtype_to_pads gives it.
Pads = Sequence[tuple[int, int]]

# Per-process override of the grouped-conv strategy (None: choose per backend).
_grouped_conv_override: str | None = None


def check_impl(impl: str | None) -> None:
  """Raises a ValueError unless ``impl`` is None or one of GROUPED_CONV_IMPLS."""
  if impl is not None and impl not in GROUPED_CONV_IMPLS:
    raise ValueError(
      f'Unknown grouped conv impl {impl!r}; accepted: {GROUPED_CONV_IMPLS}.'
    )


def set_grouped_conv_impl(impl: str | None) -> None:
  """Forces the grouped-conv strategy for every WSConv2D built after this call.

  ``None`` restores the per-backend default (see :func:`default_grouped_conv_impl`).
  """
  global _grouped_conv_override
  check_impl(impl)
  _grouped_conv_override = impl


def grouped_conv_override() -> str | None:
  """The strategy forced by :func:`set_grouped_conv_impl`, or None."""
  return _grouped_conv_override


def default_grouped_conv_impl() -> str:
  """The grouped-conv strategy for the current default backend.

  XLA:CPU runs ``feature_group_count`` convolutions several times slower than the same work
  as one dense convolution per group, so CPU gets ``'split'``; GPU and TPU have fast native
  grouped kernels.
  """
  if _grouped_conv_override is not None:
    return _grouped_conv_override
  return 'split' if jax.default_backend() == 'cpu' else 'native'


def grouped_conv(
  x: jax.Array,
  w: jax.Array,
  stride: Sequence[int],
  padding: str,
  groups: int,
  impl: str,
) -> jax.Array:
  """NHWC x HWIO convolution with ``groups`` groups, by either strategy (same numbers).

  ``'split'`` (the CPU strategy) also lowers ungrouped stride-1 1x1 convolutions to a dot and
  takes the gradients of other dense convolutions in faster forms (:func:`dense_conv`).
  """
  if (
    impl == 'split'
    and groups == 1
    and w.shape[:2] == (1, 1)
    and tuple(stride) == (1, 1)
  ):
    # A 1x1 convolution is a matrix product over channels, whose backward pass XLA:CPU runs
    # faster as a dot. The product is taken on [N*H*W, C]: on the 4-D operand XLA would
    # transpose the activations to batch-minor layout for the weight gradient.
    rows = jnp.dot(x.reshape(-1, x.shape[-1]), w[0, 0])
    return rows.reshape(x.shape[:-1] + (w.shape[-1],))
  if impl == 'split' and groups == 1:
    return dense_conv(x, w, tuple(stride), padding)
  if impl == 'split' and groups == x.shape[-1] == w.shape[-1] and groups > 1:
    return depthwise_by_taps(x, w, tuple(stride), padding)
  if impl == 'native':
    return jax.lax.conv_general_dilated(
      x,
      w,
      window_strides=tuple(stride),
      padding=padding,
      dimension_numbers=DIMENSION_NUMBERS,
      feature_group_count=groups,
    )
  check_impl(impl)
  # lax.split, not slices: its gradient concatenates the groups' gradients, where a slice's
  # pads each to full size with zeros for a sum.
  x_groups = jax.lax.split(x, [w.shape[2]] * groups, axis=3)
  w_groups = jax.lax.split(w, [w.shape[3] // groups] * groups, axis=3)
  outs = [
    grouped_conv(xg, wg, stride, padding, 1, impl)
    for xg, wg in zip(x_groups, w_groups)
  ]
  return jnp.concatenate(outs, axis=3)


def _taps_geometry(x_shape, w_shape, stride, padding):
  """``(pads, ho, wo)`` of a depthwise convolution, pads as ``lax`` computes them."""
  kh, kw = w_shape[:2]
  sh, sw = stride
  pads = jax.lax.padtype_to_pads(x_shape[1:3], (kh, kw), (sh, sw), padding)
  ho = (x_shape[1] + sum(pads[0]) - kh) // sh + 1
  wo = (x_shape[2] + sum(pads[1]) - kw) // sw + 1
  return pads, ho, wo


def _tap(xp, i, j, ho, wo, stride):
  """The strided window of the padded input that kernel tap ``(i, j)`` multiplies."""
  sh, sw = stride
  n, _, _, c = xp.shape
  return jax.lax.slice(
    xp,
    (0, i, j, 0),
    (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
    (1, sh, sw, 1),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_by_taps(
  x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: str
) -> jax.Array:
  """A depthwise convolution (weight ``[kh, kw, 1, C]``) as ``kh * kw`` shifted products.

  Each kernel tap multiplies a strided window of the padded input by one weight per
  channel; the products are summed in float32. XLA:CPU fuses these elementwise products
  and their gradients, where its own depthwise kernels (above all the weight gradient)
  are slower by more than an order of magnitude. The gradients are written out so that
  only ``x`` and ``w`` are kept for the backward pass (autodiff would keep every window).
  """
  pads, ho, wo = _taps_geometry(x.shape, w.shape, stride, padding)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  out = None
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      tap = _tap(xp, i, j, ho, wo, stride).astype(jnp.float32)
      term = tap * w[i, j, 0].astype(jnp.float32)
      out = term if out is None else out + term
  return out.astype(x.dtype)


def _depthwise_by_taps_fwd(x, w, stride, padding):
  return depthwise_by_taps(x, w, stride, padding), (x, w)


def _depthwise_by_taps_bwd(stride, padding, residuals, g):
  x, w = residuals
  pads, ho, wo = _taps_geometry(x.shape, w.shape, stride, padding)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  g = g.astype(jnp.float32)
  sh, sw = stride
  hp, wp = xp.shape[1:3]
  x_grad = None
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      # The transpose of the strided window: g * w placed back at its pixels.
      term = jax.lax.pad(
        g * w[i, j, 0].astype(jnp.float32),
        jnp.float32(0),
        (
          (0, 0, 0),
          (i, hp - i - sh * (ho - 1) - 1, sh - 1),
          (j, wp - j - sw * (wo - 1) - 1, sw - 1),
          (0, 0, 0),
        ),
      )
      x_grad = term if x_grad is None else x_grad + term
  (pt, _), (pl, _) = pads
  x_grad = x_grad[:, pt : pt + x.shape[1], pl : pl + x.shape[2]]
  w_grad = _depthwise_weight_grad(xp, g, w.shape[:2], stride, ho, wo)
  return x_grad.astype(x.dtype), w_grad.reshape(w.shape).astype(w.dtype)


# Products per chunk of the depthwise weight gradient (kernel taps x output
# elements), float32: 16 MB live at a time.
_TAP_CHUNK = 1 << 22


def _depthwise_weight_grad(xp, g, kernel, stride, ho, wo):
  """``dL/dw`` as ``[kh * kw, C]``: per tap, sum of window * g over chunks of output rows.

  XLA:CPU computes the products of all taps in one fusion before reducing them; over
  whole images that holds ``kh * kw`` activation-sized buffers at once.
  """
  kh, kw = kernel
  sh, _ = stride
  n, _, _, c = g.shape
  rows = max(1, min(ho, _TAP_CHUNK // (kh * kw * n * wo * c)))
  chunks = -(-ho // rows)
  g = jnp.pad(g, ((0, 0), (0, chunks * rows - ho), (0, 0), (0, 0)))
  span = sh * (rows - 1) + kh
  need = sh * rows * (chunks - 1) + span
  xp = jnp.pad(xp, ((0, 0), (0, max(0, need - xp.shape[1])), (0, 0), (0, 0)))

  def chunk(k):
    gk = jax.lax.dynamic_slice_in_dim(g, k * rows, rows, axis=1)
    xk = jax.lax.dynamic_slice_in_dim(xp, k * rows * sh, span, axis=1)
    taps = [
      _tap(xk, i, j, rows, wo, stride).astype(jnp.float32)
      for i in range(kh)
      for j in range(kw)
    ]
    return jnp.stack([jnp.sum(t * gk, axis=(0, 1, 2)) for t in taps])

  if chunks == 1:
    return chunk(0)
  return jax.lax.fori_loop(
    0, chunks, lambda k, acc: acc + chunk(k), jnp.zeros((kh * kw, c))
  )


depthwise_by_taps.defvjp(_depthwise_by_taps_fwd, _depthwise_by_taps_bwd)


def phase_split_applies(x_shape, w_shape, stride, padding) -> bool:
  """Stride-2 3x3 SAME convolutions of even-sized inputs (SAME then pads 0 before, 1 after)."""
  return (
    tuple(stride) == (2, 2)
    and tuple(w_shape[:2]) == (3, 3)
    and padding == 'SAME'
    and x_shape[1] % 2 == 0
    and x_shape[2] % 2 == 0
  )


def conv_by_phases(x: jax.Array, w: jax.Array) -> jax.Array:
  """The stride-2 3x3 SAME convolution as four stride-1 convolutions over input phases.

  Output ``(i, j)`` reads input rows ``2i + {0, 1, 2}`` and columns ``2j + {0, 1, 2}``; even
  taps (0, 2) read the even phase at offsets 0 and 1, the odd tap (1) the odd phase. Same
  sums as the strided convolution, no multiplications by inserted zeros.
  """
  phases = input_phases(x)
  conv = lambda a, k: jax.lax.conv_general_dilated(
    a, k, (1, 1), 'VALID', dimension_numbers=DIMENSION_NUMBERS
  )
  return (
    conv(phases[0, 0], w[0::2, 0::2])
    + conv(phases[0, 1], w[0::2, 1:2])
    + conv(phases[1, 0], w[1:2, 0::2])
    + jnp.dot(phases[1, 1], w[1, 1])
  )


def input_phases(x: jax.Array) -> dict[tuple[int, int], jax.Array]:
  """The four phases ``(a, b)`` (row and column parity) of an even-sized NHWC input.

  Padded as stride-2 3x3 SAME pads (0 before, 1 after); an even phase keeps one extra row or
  column, which the even tap 2 reads at offset 1.
  """
  h, w = x.shape[1] // 2, x.shape[2] // 2
  xp = jnp.pad(x, ((0, 0), (0, 2), (0, 2), (0, 0)))
  return {
    (a, b): xp[:, a::2, b::2][:, : h + 1 - a, : w + 1 - b]
    for a in (0, 1)
    for b in (0, 1)
  }


def xla_conv(
  x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: str
) -> jax.Array:
  """XLA's own dense NHWC x HWIO convolution."""
  return jax.lax.conv_general_dilated(
    x, w, stride, padding, dimension_numbers=DIMENSION_NUMBERS
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense_conv(
  x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: str
) -> jax.Array:
  """A dense convolution with its gradients in the forms XLA:CPU runs fastest.

  The forward pass is XLA's convolution. Over many output positions the weight gradient is
  summed from XLA's weight-gradient convolutions of small chunks of the batch
  (:func:`weight_grad_by_chunks`); over few, a strided one's input is moved batch-minor by
  a matrix product first (:func:`weight_grad_batch_minor`). The input gradient of a stride-2
  3x3 SAME convolution is taken by phases (:func:`conv_by_phases`), since XLA's runs over
  the zero-dilated output gradient; other input gradients are XLA's.
  """
  return xla_conv(x, w, stride, padding)


def _dense_conv_fwd(x, w, stride, padding):
  return xla_conv(x, w, stride, padding), (x, w)


def _dense_conv_bwd(stride, padding, residuals, g):
  x, w = residuals
  if phase_split_applies(x.shape, w.shape, stride, padding):
    _, input_vjp = jax.vjp(lambda x: conv_by_phases(x, w), x)
  else:
    _, input_vjp = jax.vjp(lambda x: xla_conv(x, w, stride, padding), x)
  pads = jax.lax.padtype_to_pads(x.shape[1:3], w.shape[:2], stride, padding)
  if chunks_pay_off(x.shape, g.shape, stride):
    weight_grad = weight_grad_by_chunks(x, g, w.shape, stride, pads)
    weight_grad = weight_grad.astype(w.dtype)
  elif tuple(stride) != (1, 1) and x.shape[3] >= 16:
    weight_grad = weight_grad_batch_minor(x, g, stride, pads)
  else:
    weight_grad = jax.vjp(lambda w: xla_conv(x, w, stride, padding), w)[1](g)[0]
  return input_vjp(g)[0], weight_grad


dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)

# Output positions per chunk of :func:`weight_grad_by_chunks`, by stride: one 48x48 image
# (four 24x24 ones) at stride 1; at stride 2, whose chunks read four times the input, 12
# rows of a 24x24 output. Chosen as the fastest per-layer sizes on a 2-core AVX-512 CPU.
WEIGHT_GRAD_CHUNK = {(1, 1): 48 * 48, (2, 2): 12 * 24}


def chunks_pay_off(
  x_shape: Sequence[int], g_shape: Sequence[int], stride: Sequence[int]
) -> bool:
  """Whether chunking beats XLA's whole-batch weight gradient for this convolution.

  It does over many output positions (at least two stride-1 chunks' worth, at any stride)
  with at least 16 input channels; over few, or with the stem's 3 input channels, XLA's own
  weight gradient is already efficient and chunking only adds launches.
  """
  n, ho, wo = g_shape[:3]
  return (
    tuple(stride) in WEIGHT_GRAD_CHUNK
    and x_shape[3] >= 16
    and n * ho * wo >= 2 * WEIGHT_GRAD_CHUNK[1, 1]
  )


# Most convolutions one weight gradient is unrolled into: the program (and its compile time)
# grows with their number, and XLA:CPU runs them far slower inside a loop (lax.scan), so the
# chunks are unrolled rather than looped over.
MAX_WEIGHT_GRAD_CHUNKS = 32


def chunk_shape(n: int, ho: int, wo: int, positions: int) -> tuple[int, int]:
  """``(images, rows)`` per chunk: about ``positions`` outputs, and a bounded chunk count.

  Whole images when one image has fewer outputs than ``positions``, else blocks of rows of
  one image; over ``MAX_WEIGHT_GRAD_CHUNKS`` chunks (large batches or images), the chunks
  grow, trading speed for a bounded program.
  """
  while True:
    images = max(1, min(n, positions // (ho * wo)))
    rows = ho if images > 1 else max(1, min(ho, positions // wo))
    if -(-n // images) * -(-ho // rows) <= MAX_WEIGHT_GRAD_CHUNKS:
      return images, rows
    positions *= 2


def weight_grad_by_chunks(
  x: jax.Array,
  g: jax.Array,
  w_shape: Sequence[int],
  stride: tuple[int, int],
  pads: Pads,
) -> jax.Array:
  """``dL/dw`` of an NHWC x HWIO convolution, summed over chunks of output positions.

  XLA:CPU's weight-gradient convolution slows down more than linearly as the number of output
  positions it contracts over grows; so the sum is split into chunks of about
  ``WEIGHT_GRAD_CHUNK[stride]`` positions: whole images where they are small, blocks of
  output rows of one image where they are large. A block of ``r`` output rows reads
  ``(r - 1) * stride + kh`` padded input rows, its receptive field, so each chunk is a VALID
  convolution and the chunks' sums add up exactly to the whole.
  """
  kh = w_shape[0]
  n, ho, wo, _ = g.shape
  x_pad = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  images, rows = chunk_shape(n, ho, wo, WEIGHT_GRAD_CHUNK[tuple(stride)])
  w_type = jax.ShapeDtypeStruct(tuple(w_shape), x.dtype)
  total = jnp.zeros(w_shape, jnp.float32)
  for i in range(0, n, images):
    for r in range(0, ho, rows):
      r_end = min(r + rows, ho)
      x_chunk = x_pad[
        i : i + images, r * stride[0] : (r_end - 1) * stride[0] + kh
      ]
      transpose = jax.linear_transpose(
        lambda w, x_chunk=x_chunk: xla_conv(x_chunk, w, stride, 'VALID'),
        w_type,
      )
      total += transpose(g[i : i + images, r:r_end])[0].astype(jnp.float32)
  return total


def weight_grad_batch_minor(
  x: jax.Array, g: jax.Array, stride: tuple[int, int], pads: Pads
) -> jax.Array:
  """``dL/dw`` as XLA's weight-gradient convolution, with the input moved batch-minor first.

  That convolution contracts over the batch, so XLA:CPU lays its input out as ``[C, H, W, N]``
  and fuses the input's elementwise producer (the activation before a convolution) into the
  transposing copy, which it then runs as a slow strided loop. A product with the ``N x N``
  identity hands the same move to the matrix-product library and gives ``[H, W, C, N]``;
  XLA's remaining transpose moves whole ``N``-element rows. Exact for finite inputs (each
  output is ``x * 1`` plus zeros); an infinite input turns its position NaN for the whole
  batch.
  """
  identity = jnp.eye(x.shape[0], dtype=x.dtype)
  x_batch_minor = jax.lax.dot_general(x, identity, (((0,), (0,)), ((), ())))
  # Input: batch = C (axis 2), feature = N (axis 3); the output gradient is the kernel
  # (out = its channels, in = N); the result's batch is C and its feature the output
  # channels, laid out HWIO.
  dims = jax.lax.ConvDimensionNumbers(
    lhs_spec=(2, 3, 0, 1), rhs_spec=(3, 0, 1, 2), out_spec=(2, 3, 0, 1)
  )
  return jax.lax.conv_general_dilated(
    x_batch_minor, g, (1, 1), pads, rhs_dilation=stride, dimension_numbers=dims
  )


def floored_var(
  var_n: jax.Array, eps: float, fan_in: int, eps_inside: bool
) -> jax.Array:
  """The official ``max(var * fan_in, eps)``, or timm's ``var * fan_in + eps * fan_in``."""
  if eps_inside:
    return var_n + eps * fan_in
  return jnp.maximum(var_n, eps)


def standardize_with_moments(
  w: jax.Array, gain: jax.Array, eps: float, eps_inside: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Scaled weight standardization: ``(w_hat, mean, var * fan_in)``, moments per unit.

  ``w_hat = (w - mean) * rsqrt(max(var * fan_in, eps)) * gain``, fused as in the official
  code; the moments keep their dimensions. ``eps_inside`` gives timm's ``ScaledStdConv2d``
  form, ``(w - mean) / sqrt(var + eps) * gain / sqrt(fan_in)``, which its ``dm_nfnet_f*``
  weights were trained with.
  """
  axes = tuple(range(w.ndim - 1))
  fan_in = int(np.prod(w.shape[:-1]))
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var_n = jnp.var(w, axis=axes, keepdims=True) * fan_in
  scale = jax.lax.rsqrt(floored_var(var_n, eps, fan_in, eps_inside)) * gain
  return w * scale - mean * scale, mean, var_n


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def standardize_weight_dot_grad(
  w: jax.Array, gain: jax.Array, eps: float, eps_inside: bool = False
) -> jax.Array:
  """Weight standardization whose gradient's per-unit sums are matrix products.

  Same forward as :func:`standardize_with_moments`. XLA:CPU runs autodiff's sums over the
  major ``fan_in`` axis several times slower than the closed form below as products; same
  maths, float32 rounding.
  """
  return standardize_with_moments(w, gain, eps, eps_inside)[0]


def _ws_fwd(w, gain, eps, eps_inside):
  w_hat, mean, var_n = standardize_with_moments(w, gain, eps, eps_inside)
  return w_hat, (w, gain, mean.reshape(-1), var_n.reshape(-1))


def column_means(x: jax.Array) -> jax.Array:
  """Mean over axis 0 of ``[fan_in, units]`` as a two-row matrix product.

  A one-row (vector) product lets XLA:CPU fuse the elementwise producer into a loop that walks
  the major axis column by column; two rows keep it a library GEMM. The second row is
  discarded.
  """
  rows = jnp.full((2, x.shape[0]), 1.0 / x.shape[0], x.dtype)
  return jnp.dot(rows, x)[0]


def _ws_bwd(eps, eps_inside, residuals, g):
  """Closed-form WS gradient; every per-unit sum over ``fan_in`` is a matrix product.

  With ``c = w - mean``, ``s = gain * rsqrt(n var)`` and ``G`` the incoming gradient:
  ``dw = s (G - mean(G)) - c gain rsqrt(n var)^3 sum(G c)`` (the second term vanishes where
  the eps floor holds ``n var``), and ``dgain = rsqrt(n var) sum(G c)``.
  """
  w, gain, mean, var_n = residuals
  fan_in = int(np.prod(w.shape[:-1]))
  w2, g2 = w.reshape(fan_in, -1), g.reshape(fan_in, -1)
  rstd = jax.lax.rsqrt(floored_var(var_n, eps, fan_in, eps_inside))
  centred = w2 - mean
  g_dot_centred = column_means(g2 * centred) * fan_in
  dvar_term = -g_dot_centred * gain * rstd**3
  if not eps_inside:  # the floor's gradient is zero where it holds
    dvar_term = jnp.where(var_n > eps, dvar_term, 0.0)
  d_w = (g2 - column_means(g2)) * (gain * rstd) + centred * dvar_term
  d_gain = g_dot_centred * rstd
  return d_w.reshape(w.shape), d_gain.astype(gain.dtype)


standardize_weight_dot_grad.defvjp(_ws_fwd, _ws_bwd)
