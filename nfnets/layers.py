"""Building blocks shared by the NF model families.

Parameters are always created in float32; a layer computes in its input's dtype, so feeding
bfloat16 activations gives mixed precision with float32 master weights (weight standardization
itself runs in float32 before the cast).
"""

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

GROUPED_CONV_IMPLS = ('native', 'split')

# Per-process override of the grouped-conv strategy (None: choose per backend).
_grouped_conv_override: str | None = None


def set_grouped_conv_impl(impl: str | None) -> None:
  """Forces the grouped-conv strategy for every WSConv2D built after this call.

  ``None`` restores the per-backend default (see :func:`default_grouped_conv_impl`).
  """
  global _grouped_conv_override
  if impl is not None and impl not in GROUPED_CONV_IMPLS:
    raise ValueError(
      f'Unknown grouped conv impl {impl!r}; accepted: {GROUPED_CONV_IMPLS}.'
    )
  _grouped_conv_override = impl


def default_grouped_conv_impl() -> str:
  """The grouped-conv strategy for the current default backend.

  XLA:CPU runs ``feature_group_count`` convolutions 4-33x slower than the same work as one
  dense convolution per group (measured in shared/REFERENCE.md), so CPU gets ``'split'``; GPU
  and TPU have fast native grouped kernels.
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
  takes the gradients of other dense convolutions in faster forms (:func:`_dense_conv`).
  """
  if (
    impl == 'split'
    and groups == 1
    and w.shape[:2] == (1, 1)
    and tuple(stride) == (1, 1)
  ):
    # A 1x1 convolution is a matrix product over channels; XLA:CPU runs its backward pass
    # about 1.75x faster as a dot than as a convolution (same sums, same results). The
    # product is taken on [N*H*W, C]: with the 4-D operand XLA transposes the activations
    # to batch-minor layout for the weight gradient (34 vs 16 ms for F0's 48x48 128->256).
    rows = jnp.dot(x.reshape(-1, x.shape[-1]), w[0, 0])
    return rows.reshape(x.shape[:-1] + (w.shape[-1],))
  if impl == 'split' and groups == 1:
    return _dense_conv(x, w, tuple(stride), padding)
  if impl == 'native':
    return jax.lax.conv_general_dilated(
      x,
      w,
      window_strides=tuple(stride),
      padding=padding,
      dimension_numbers=_DN,
      feature_group_count=groups,
    )
  if impl != 'split':
    raise ValueError(
      f'Unknown grouped conv impl {impl!r}; accepted: {GROUPED_CONV_IMPLS}.'
    )
  # lax.split, not slices: its gradient concatenates the groups' gradients, where a slice's
  # pads each to full size with zeros for a sum (2.6% of F0's CPU step, measured A/B).
  x_groups = jax.lax.split(x, [w.shape[2]] * groups, axis=3)
  w_groups = jax.lax.split(w, [w.shape[3] // groups] * groups, axis=3)
  outs = [
    grouped_conv(xg, wg, stride, padding, 1, impl)
    for xg, wg in zip(x_groups, w_groups)
  ]
  return jnp.concatenate(outs, axis=3)


_DN = ('NHWC', 'HWIO', 'NHWC')


def _phase_split_applies(x_shape, w_shape, stride, padding) -> bool:
  """Stride-2 3x3 SAME convolutions of even-sized inputs (SAME then pads 0 before, 1 after)."""
  return (
    tuple(stride) == (2, 2)
    and tuple(w_shape[:2]) == (3, 3)
    and padding == 'SAME'
    and x_shape[1] % 2 == 0
    and x_shape[2] % 2 == 0
  )


def _conv_by_phases(x: jax.Array, w: jax.Array) -> jax.Array:
  """The stride-2 3x3 SAME convolution as four stride-1 convolutions over input phases.

  Output ``(i, j)`` reads input rows ``2i + {0, 1, 2}`` and columns ``2j + {0, 1, 2}``; even
  taps (0, 2) read the even phase at offsets 0 and 1, the odd tap (1) the odd phase. Same
  sums as the strided convolution, no multiplications by inserted zeros.
  """
  phases = _input_phases(x)
  conv = lambda a, k: jax.lax.conv_general_dilated(
    a, k, (1, 1), 'VALID', dimension_numbers=_DN
  )
  return (
    conv(phases[0, 0], w[0::2, 0::2])
    + conv(phases[0, 1], w[0::2, 1:2])
    + conv(phases[1, 0], w[1:2, 0::2])
    + jnp.dot(phases[1, 1], w[1, 1])
  )


def _input_phases(x: jax.Array) -> dict[tuple[int, int], jax.Array]:
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


def _xla_conv(
  x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: str
) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, w, stride, padding, dimension_numbers=_DN
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense_conv(
  x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: str
) -> jax.Array:
  """A dense convolution with its gradients in the forms XLA:CPU runs fastest.

  The forward pass is XLA's convolution. Over many output positions the weight gradient is
  summed from XLA's weight-gradient convolutions of small chunks of the batch
  (:func:`_weight_grad_by_chunks`); over few, a strided one's input is moved batch-minor by
  a matrix product first (:func:`_weight_grad_batch_minor`). The input gradient of a stride-2
  3x3 SAME convolution is taken by phases (:func:`_conv_by_phases`; XLA's runs over the
  zero-dilated output gradient, 2-2.5x slower); other input gradients are XLA's.
  """
  return _xla_conv(x, w, stride, padding)


def _dense_conv_fwd(x, w, stride, padding):
  return _xla_conv(x, w, stride, padding), (x, w)


def _dense_conv_bwd(stride, padding, residuals, g):
  x, w = residuals
  if _phase_split_applies(x.shape, w.shape, stride, padding):
    _, input_vjp = jax.vjp(lambda x: _conv_by_phases(x, w), x)
  else:
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, w, stride, padding), x)
  if _chunks_pay_off(x.shape, g.shape, stride):
    weight_grad = _weight_grad_by_chunks(x, g, w.shape, stride, padding).astype(
      w.dtype
    )
  elif tuple(stride) != (1, 1) and x.shape[3] >= 16:
    weight_grad = _weight_grad_batch_minor(x, g, w.shape, stride, padding)
  else:
    weight_grad = jax.vjp(lambda w: _xla_conv(x, w, stride, padding), w)[1](g)[
      0
    ]
  return input_vjp(g)[0], weight_grad


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)

# Output positions per chunk of :func:`_weight_grad_by_chunks`, by stride, as measured fastest
# on a 2-core AVX-512 CPU: one 48x48 image (four 24x24 ones) at stride 1; at stride 2, whose
# chunks read four times the input, 12 rows of a 24x24 output (48x48 128->128: 8.4 ms, against
# 13.7 for whole images and 16.5 for XLA's whole-batch gradient).
_WEIGHT_GRAD_CHUNK = {(1, 1): 48 * 48, (2, 2): 12 * 24}


def _chunks_pay_off(
  x_shape: Sequence[int], g_shape: Sequence[int], stride: Sequence[int]
) -> bool:
  """Where chunking beat XLA's whole-batch weight gradient on a 2-core AVX-512 CPU.

  F0's layers at batch 8 (scripts/conv_layers_vs_torch.py): 0.3-0.6x XLA's time with 96x96,
  48x48 and (stride 1) 24x24 outputs; but 1.3-1.5x with 12x12 and smaller outputs, and 4.5x
  for the stem's first convolution (3 input channels), where XLA's is already efficient.
  """
  n, ho, wo = g_shape[:3]
  # At least two stride-1 chunks' worth of outputs (4,608: 24x24 at batch 8), at any stride.
  return (
    tuple(stride) in _WEIGHT_GRAD_CHUNK
    and x_shape[3] >= 16
    and n * ho * wo >= 2 * _WEIGHT_GRAD_CHUNK[1, 1]
  )


# Most convolutions one weight gradient is unrolled into: the program (and its compile time)
# grows with their number, and in a loop (lax.scan) XLA:CPU ran them 80x slower (48x48
# 128->128 at batch 8: 3.4 s against 43 ms), so the chunks are not looped over.
_MAX_WEIGHT_GRAD_CHUNKS = 32


def _chunk_shape(n: int, ho: int, wo: int, positions: int) -> tuple[int, int]:
  """``(images, rows)`` per chunk: about ``positions`` outputs, and a bounded chunk count.

  Whole images when one image has fewer outputs than ``positions``, else blocks of rows of
  one image; over ``_MAX_WEIGHT_GRAD_CHUNKS`` chunks (large batches or images), the chunks
  grow, trading speed for a bounded program.
  """
  while True:
    images = max(1, min(n, positions // (ho * wo)))
    rows = ho if images > 1 else max(1, min(ho, positions // wo))
    if -(-n // images) * -(-ho // rows) <= _MAX_WEIGHT_GRAD_CHUNKS:
      return images, rows
    positions *= 2


def _weight_grad_by_chunks(
  x: jax.Array,
  g: jax.Array,
  w_shape: Sequence[int],
  stride: tuple[int, int],
  padding: str,
) -> jax.Array:
  """``dL/dw`` of an NHWC x HWIO convolution, summed over chunks of output positions.

  XLA:CPU's weight-gradient convolution slows down as the number of output positions it
  contracts over grows (on a 2-core AVX-512 CPU, 48x48 128->128: 3.3 ms for one image, 77 ms
  for eight); so the sum is split into chunks of about ``_WEIGHT_GRAD_CHUNK[stride]`` positions:
  whole images where they are small, blocks of output rows of one image where they are
  large. A block of ``r`` output rows reads ``(r - 1) * stride + kh`` padded input rows, its
  receptive field, so each chunk is a VALID convolution and the chunks' sums add up exactly
  to the whole.
  """
  kh, kw = w_shape[:2]
  n, ho, wo, _ = g.shape
  pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), stride, padding)
  x_pad = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  images, rows = _chunk_shape(n, ho, wo, _WEIGHT_GRAD_CHUNK[tuple(stride)])
  w_type = jax.ShapeDtypeStruct(tuple(w_shape), x.dtype)
  total = jnp.zeros(w_shape, jnp.float32)
  for i in range(0, n, images):
    for r in range(0, ho, rows):
      r_end = min(r + rows, ho)
      x_chunk = x_pad[
        i : i + images, r * stride[0] : (r_end - 1) * stride[0] + kh
      ]
      transpose = jax.linear_transpose(
        lambda w, x_chunk=x_chunk: _xla_conv(x_chunk, w, stride, 'VALID'),
        w_type,
      )
      total += transpose(g[i : i + images, r:r_end])[0].astype(jnp.float32)
  return total


def _weight_grad_batch_minor(
  x: jax.Array,
  g: jax.Array,
  w_shape: Sequence[int],
  stride: tuple[int, int],
  padding: str,
) -> jax.Array:
  """``dL/dw`` as XLA's weight-gradient convolution, with the input moved batch-minor first.

  That convolution contracts over the batch, so XLA:CPU lays its input out as ``[C, H, W, N]``
  and fuses the input's elementwise producer (the activation before a convolution) into the
  transposing copy, which it then runs as a slow strided loop: 5.4 ms per group for F0's
  24x24x768 stride-2 grouped convolution, whose output is only 12x12. A product with the
  ``N x N`` identity hands the same move to the matrix-product library and gives
  ``[H, W, C, N]`` (16 against 33 ms for that layer's six groups); XLA's remaining transpose
  moves whole ``N``-element rows. Exact for finite inputs (each output is ``x * 1`` plus
  zeros); an infinite input turns its position NaN for the whole batch.
  """
  kh, kw = w_shape[:2]
  pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), stride, padding)
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


# Weight standardization's variance floor (per unit, times fan-in), as in the official code.
WS_EPS = 1e-4


def standardize_weight(
  w: jax.Array,
  gain: jax.Array,
  eps: float = WS_EPS,
  grad_by_dot: bool = False,
  eps_inside: bool = False,
) -> jax.Array:
  """Scaled weight standardization (NF-ResNet paper, eq. 5), fused as in the official code.

  ``w_hat = (w - mean) * rsqrt(max(var * fan_in, eps)) * gain`` with mean and variance per
  output unit over all but the last axis, so each unit has zero mean and variance
  ``gain^2 / fan_in``: a unit-variance input gives a unit-variance output.

  ``grad_by_dot`` (the CPU strategy) keeps this forward but computes the gradient in closed
  form with its per-unit sums as matrix products: XLA:CPU runs autodiff's sums over the major
  ``fan_in`` axis 4-6x slower (0.3 s per F0 step for the final 1x1 conv alone). Same maths,
  float32 rounding.

  ``eps_inside`` gives timm's ``ScaledStdConv2d`` form instead,
  ``(w - mean) / sqrt(var + eps) * gain / sqrt(fan_in)``, i.e.
  ``rsqrt(var * fan_in + eps * fan_in)``, which its ``dm_nfnet_f*`` weights were tuned with.
  """
  if grad_by_dot:
    return _standardize_weight_dot_grad(w, gain, eps, eps_inside)
  return _standardize_weight(w, gain, eps, eps_inside)


def _standardize_weight(
  w: jax.Array, gain: jax.Array, eps: float, eps_inside: bool = False
) -> jax.Array:
  return _standardize_with_moments(w, gain, eps, eps_inside)[0]


def _floored_var(var_n: jax.Array, eps: float, fan_in: int, eps_inside: bool):
  """The official ``max(var * fan_in, eps)``, or timm's ``var * fan_in + eps * fan_in``."""
  if eps_inside:
    return var_n + eps * fan_in
  return jnp.maximum(var_n, eps)


def _standardize_with_moments(
  w: jax.Array, gain: jax.Array, eps: float, eps_inside: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(w_hat, mean, var * fan_in)``, the moments per unit (keepdims)."""
  axes = tuple(range(w.ndim - 1))
  fan_in = int(np.prod(w.shape[:-1]))
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var_n = jnp.var(w, axis=axes, keepdims=True) * fan_in
  scale = jax.lax.rsqrt(_floored_var(var_n, eps, fan_in, eps_inside)) * gain
  return w * scale - mean * scale, mean, var_n


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _standardize_weight_dot_grad(
  w: jax.Array, gain: jax.Array, eps: float, eps_inside: bool = False
) -> jax.Array:
  return _standardize_weight(w, gain, eps, eps_inside)


def _ws_fwd(w, gain, eps, eps_inside):
  w_hat, mean, var_n = _standardize_with_moments(w, gain, eps, eps_inside)
  return w_hat, (w, gain, mean.reshape(-1), var_n.reshape(-1))


def _column_means(x: jax.Array) -> jax.Array:
  """Mean over axis 0 of ``[fan_in, units]`` as a two-row matrix product.

  A one-row (vector) product lets XLA:CPU fuse the elementwise producer into a loop that walks
  the major axis column by column (15x slower on the final 1536x3072 conv); two rows keep it
  a library GEMM. The second row is discarded.
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
  rstd = jax.lax.rsqrt(_floored_var(var_n, eps, fan_in, eps_inside))
  centred = w2 - mean
  g_dot_centred = _column_means(g2 * centred) * fan_in
  dvar_term = -g_dot_centred * gain * rstd**3
  if not eps_inside:  # the floor's gradient is zero where it holds
    dvar_term = jnp.where(var_n > eps, dvar_term, 0.0)
  d_w = (g2 - _column_means(g2)) * (gain * rstd) + centred * dvar_term
  d_gain = g_dot_centred * rstd
  return d_w.reshape(w.shape), d_gain.astype(gain.dtype)


_standardize_weight_dot_grad.defvjp(_ws_fwd, _ws_bwd)


# The parameter that replaces a WSConv2D's ``w`` and ``gain`` in standardize_params()'s output.
STANDARDIZED_W = 'w_standardized'
_WS_PARAMS = frozenset({'w', 'gain', 'bias'})
_standardized_state = threading.local()


@contextlib.contextmanager
def standardized_weights() -> Iterator[None]:
  """While active, WSConv2D modules read weights already standardized by standardize_params.

  For inference: evaluating one set of weights on many batches, standardizing once saves
  each forward pass a pass over every weight (4% of F0's CPU eval forward at batch 8).
  Enter it inside the traced function. Parameters without ``w_standardized`` fail to apply
  rather than run unstandardized.
  """
  previous = weights_are_standardized()
  _standardized_state.active = True
  try:
    yield
  finally:
    _standardized_state.active = previous


def weights_are_standardized() -> bool:
  """Whether WSConv2D modules traced now read ``w_standardized`` (see standardized_weights)."""
  return getattr(_standardized_state, 'active', False)


def standardize_params(params: hk.Params) -> hk.Params:
  """Every WSConv2D's ``{w, gain, bias}`` as ``{w_standardized, bias}``; others unchanged.

  ``w_standardized`` is exactly the weight WSConv2D convolves with (float32, WS_EPS), so a
  model applied to the result inside standardized_weights() gives the same outputs.
  WSConv2D modules are recognised by their parameter names, which no other layer here uses.
  """
  out = {}
  for module, module_params in params.items():
    if set(module_params) == _WS_PARAMS:
      w_hat = standardize_weight(
        module_params['w'], module_params['gain'], WS_EPS
      )
      out[module] = {STANDARDIZED_W: w_hat, 'bias': module_params['bias']}
    else:
      out[module] = dict(module_params)
  return out


class WSConv2D(hk.Module):
  """2D convolution with scaled weight standardization, a learnable gain and a bias.

  Weights are HWIO (``[kh, kw, in/groups, out]``), padding is SAME, NHWC in and out.
  Parameters ``w``, ``gain`` and ``bias`` match the official checkpoints; inside
  standardized_weights() it reads ``w_standardized`` and ``bias`` (standardize_params).
  """

  def __init__(
    self,
    output_channels: int,
    kernel_shape: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    padding: str = 'SAME',
    eps: float = WS_EPS,
    grouped_conv_impl: str | None = None,
    eps_inside: bool = False,
    name: str | None = None,
  ):
    """``eps_inside``: timm's form of the eps (see :func:`standardize_weight`)."""
    super().__init__(name=name)
    if isinstance(kernel_shape, int):
      kernel_shape = (kernel_shape, kernel_shape)
    if isinstance(stride, int):
      stride = (stride, stride)
    if output_channels % feature_group_count:
      raise ValueError(
        f'output_channels={output_channels} is not divisible by '
        f'feature_group_count={feature_group_count}.'
      )
    if (
      grouped_conv_impl is not None
      and grouped_conv_impl not in GROUPED_CONV_IMPLS
    ):
      raise ValueError(
        f'Unknown grouped conv impl {grouped_conv_impl!r}; '
        f'accepted: {GROUPED_CONV_IMPLS}.'
      )
    self.output_channels = output_channels
    self.kernel_shape = tuple(kernel_shape)
    self.stride = tuple(stride)
    self.feature_group_count = feature_group_count
    self.padding = padding
    self.eps = eps
    self.eps_inside = eps_inside
    self.grouped_conv_impl = grouped_conv_impl

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the convolution to ``x`` of shape ``[N, H, W, C]``."""
    in_ch = x.shape[-1]
    if in_ch % self.feature_group_count:
      raise ValueError(
        f'{self.module_name}: input channels {in_ch} not divisible by '
        f'feature_group_count={self.feature_group_count}.'
      )
    w_shape = self.kernel_shape + (
      in_ch // self.feature_group_count,
      self.output_channels,
    )
    impl = self.grouped_conv_impl or default_grouped_conv_impl()
    if weights_are_standardized():
      if hk.running_init():
        raise ValueError(
          'standardized_weights() is for applying parameters from '
          'standardize_params(), not for initializing them.'
        )
      if self.eps != WS_EPS or self.eps_inside:  # folded the official way
        raise ValueError(
          f'{self.module_name}: eps={self.eps} (eps_inside={self.eps_inside}) '
          f'is not the official WS_EPS={WS_EPS}, which standardize_params() '
          'uses.'
        )
      weight = hk.get_parameter(
        STANDARDIZED_W, w_shape, jnp.float32, init=jnp.zeros
      )
    else:
      # Fan-in init; WS makes the result largely insensitive to this choice.
      w_init = hk.initializers.VarianceScaling(1.0, 'fan_in', 'normal')
      w = hk.get_parameter('w', w_shape, jnp.float32, init=w_init)
      gain = hk.get_parameter(
        'gain', (self.output_channels,), jnp.float32, init=jnp.ones
      )
      weight = standardize_weight(
        w,
        gain,
        self.eps,
        grad_by_dot=impl == 'split',
        eps_inside=self.eps_inside,
      )
    bias = hk.get_parameter(
      'bias', (self.output_channels,), jnp.float32, init=jnp.zeros
    )
    out = grouped_conv(
      x,
      weight.astype(x.dtype),
      self.stride,
      self.padding,
      self.feature_group_count,
      impl,
    )
    return out + bias.astype(x.dtype)

  def count_macs(self, in_ch: int, h: float, w: float) -> float:
    """Multiply-adds at input size ``h x w``, counted as the official ``count_conv_flops``."""
    return (
      self.output_channels
      * h
      * w
      * np.prod(self.kernel_shape)
      * in_ch
      / self.feature_group_count
      / np.prod(self.stride)
    )


class Linear(hk.Module):
  """Dense layer ``x @ w + b`` with float32 parameters, computing in the input dtype.

  Same parameter names and layout (``w``: ``[in, out]``, ``b``) as ``hk.Linear``, which would
  create bfloat16 parameters when fed bfloat16 inputs.
  """

  def __init__(
    self,
    output_size: int,
    w_init: hk.initializers.Initializer | None = None,
    with_bias: bool = True,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.output_size = output_size
    self.w_init = w_init
    self.with_bias = with_bias

  def __call__(self, x: jax.Array) -> jax.Array:
    in_size = x.shape[-1]
    w_init = self.w_init or hk.initializers.TruncatedNormal(
      1.0 / np.sqrt(in_size)
    )
    w = hk.get_parameter(
      'w', (in_size, self.output_size), jnp.float32, init=w_init
    )
    out = jnp.dot(x, w.astype(x.dtype))
    if self.with_bias:
      b = hk.get_parameter(
        'b', (self.output_size,), jnp.float32, init=jnp.zeros
      )
      out = out + b.astype(x.dtype)
    return out


class SqueezeExcite(hk.Module):
  """Squeeze-and-excite gate: ``sigmoid(fc1(relu(fc0(mean_hw(x)))))`` of shape [N,1,1,C]."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    se_ratio: float | None = 0.5,
    hidden_ch: int | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if se_ratio is None:
      if hidden_ch is None:
        raise ValueError('SqueezeExcite needs one of se_ratio or hidden_ch.')
      self.hidden_ch = hidden_ch
    else:
      self.hidden_ch = max(1, int(in_ch * se_ratio))
    self.in_ch, self.out_ch = in_ch, out_ch
    # Built here, not in __call__, so the names are '.../squeeze_excite/~/linear{,_1}'.
    self.fc0 = Linear(self.hidden_ch)
    self.fc1 = Linear(self.out_ch)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.mean(x, axis=(1, 2))
    h = self.fc1(jax.nn.relu(self.fc0(h)))
    return jax.nn.sigmoid(h)[:, None, None, :]

  def count_macs(self) -> int:
    return self.in_ch * self.hidden_ch + self.hidden_ch * self.out_ch


class StochDepth(hk.Module):
  """Stochastic depth: drops a residual branch per example with probability ``drop_rate``.

  As in the official NFNets, kept branches are not rescaled by default (``scale_by_keep``).
  Identity when not training.
  """

  def __init__(
    self, drop_rate: float, scale_by_keep: bool = False, name: str | None = None
  ):
    super().__init__(name=name)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
    self.drop_rate = drop_rate
    self.scale_by_keep = scale_by_keep

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    if not is_training or self.drop_rate == 0.0:
      return x
    keep_prob = 1.0 - self.drop_rate
    r = jax.random.uniform(
      hk.next_rng_key(), (x.shape[0],) + (1,) * (x.ndim - 1), dtype=jnp.float32
    )
    mask = jnp.floor(keep_prob + r).astype(x.dtype)
    if self.scale_by_keep:
      x = x / jnp.asarray(keep_prob, x.dtype)
    return x * mask


def signal_metrics(x: jax.Array, index: int) -> dict[str, jax.Array]:
  """Average squared channel mean and average channel variance of an NHWC activation.

  These are the signal-propagation statistics of the NF-ResNet paper (Figure 1), taken over
  the batch and spatial axes, per channel, then averaged over channels, in float32.
  """
  x = x.astype(jnp.float32)
  return {
    f'avg_sq_mean_{index}': jnp.mean(jnp.mean(x, axis=(0, 1, 2)) ** 2),
    f'avg_var_{index}': jnp.mean(jnp.var(x, axis=(0, 1, 2))),
  }


def pooled_shortcut(
  x: jax.Array,
  pre_activated: jax.Array,
  stride: int,
  projection: WSConv2D | None,
) -> jax.Array:
  """The shortcut of an NFNet/NF-RegNet block (ResNet-D style).

  Identity blocks pass ``x`` through. Transition blocks take the pre-activated input, 2x2
  average-pool it when strided (so no input is skipped, unlike a strided 1x1 conv) and
  project it with a 1x1 WS conv.
  """
  shortcut = pre_activated if (stride > 1 or projection is not None) else x
  if stride > 1:
    # The official 2x2 window (every NF block strides by 1 or 2).
    shortcut = hk.avg_pool(
      shortcut, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding='SAME'
    )
  if projection is not None:
    shortcut = projection(shortcut)
  return shortcut


def residual_merge(
  branch: jax.Array,
  shortcut: jax.Array,
  alpha: float,
  stoch_depth: StochDepth | None,
  is_training: bool,
  skip_init: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """The end of every NF residual block: ``shortcut + alpha * skip_gain * drop(branch)``.

  Creates the block's scalar ``skip_gain`` parameter (SkipInit; zero at init by default, so
  each block starts as the identity on its shortcut) in the calling module. Also returns the
  branch's average channel variance before stochastic depth, the ``res_avg_var`` metric.
  """
  res_avg_var = jnp.mean(jnp.var(branch.astype(jnp.float32), axis=(0, 1, 2)))
  if stoch_depth is not None:
    branch = stoch_depth(branch, is_training)
  skip_gain = hk.get_parameter(
    'skip_gain', (), jnp.float32, init=hk.initializers.Constant(skip_init)
  )
  branch = branch * skip_gain.astype(branch.dtype)
  return branch * jnp.asarray(alpha, branch.dtype) + shortcut, res_avg_var


def run_blocks(
  blocks,
  x: jax.Array,
  is_training: bool,
  return_metrics: bool,
  outputs: dict[str, jax.Array],
) -> jax.Array:
  """Applies residual ``blocks`` in order, adding per-block signal metrics to ``outputs``.

  Index 0 of the metrics is the blocks' input (the stem output); block ``i`` adds
  ``avg_sq_mean_{i+1}``, ``avg_var_{i+1}`` and ``res_avg_var_{i}``.
  """
  if return_metrics:
    outputs.update(signal_metrics(x, 0))
  for i, block in enumerate(blocks):
    x, res_avg_var = block(x, is_training=is_training)
    if return_metrics:
      outputs.update(signal_metrics(x, i + 1))
      outputs[f'res_avg_var_{i}'] = res_avg_var
  return x


def classifier_head(
  features: jax.Array,
  fc: Linear,
  drop_rate: float,
  is_training: bool,
  outputs: dict[str, jax.Array],
) -> dict[str, jax.Array]:
  """Global average pool, dropout (training only), classifier; float32 logits.

  Adds 'pool' (the pre-dropout features) and 'logits' to ``outputs`` and returns it.
  """
  pool = jnp.mean(features, axis=(1, 2))
  outputs['pool'] = pool
  if is_training and drop_rate > 0.0:
    pool = hk.dropout(hk.next_rng_key(), drop_rate, pool)
  outputs['logits'] = fc(pool).astype(jnp.float32)
  return outputs
