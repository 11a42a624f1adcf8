"""The Normalizer-Free layers the model families are built from.

WSConv2D (scaled weight standardization), Linear, SqueezeExcite, StochDepth and the pieces
every NF residual block shares (shortcut, residual merge, signal metrics, classifier head).
How a WSConv2D's convolution is computed on each backend lives in :mod:`nfnets.cpu_conv`.

Parameters are always created in float32; a layer computes in its input's dtype, so feeding
bfloat16 activations gives mixed precision with float32 master weights (weight standardization
itself runs in float32 before the cast).
"""

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets import cpu_conv

# Weight standardization's variance floor (per unit, times fan-in), as in the official code.
WS_EPS = 1e-4


class WSNumerics(NamedTuple):
  """How a WSConv2D adds its eps: the official floor, or timm's eps inside the variance."""

  eps: float = WS_EPS
  eps_inside: bool = False


OFFICIAL_WS = WSNumerics()
# timm's ScaledStdConv2d, as its dm_nfnet_f* weights were trained with.
TIMM_WS = WSNumerics(eps=1e-5, eps_inside=True)


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
  form with its per-unit sums as matrix products (:func:`cpu_conv.standardize_weight_dot_grad`).
  Same maths, float32 rounding.

  ``eps_inside`` gives timm's ``ScaledStdConv2d`` form instead,
  ``(w - mean) / sqrt(var + eps) * gain / sqrt(fan_in)``, i.e.
  ``rsqrt(var * fan_in + eps * fan_in)``, which its ``dm_nfnet_f*`` weights were tuned with.
  """
  if grad_by_dot:
    return cpu_conv.standardize_weight_dot_grad(w, gain, eps, eps_inside)
  return cpu_conv.standardize_with_moments(w, gain, eps, eps_inside)[0]


# The parameter that replaces a WSConv2D's ``w`` and ``gain`` in standardize_params()'s output.
STANDARDIZED_W = 'w_standardized'
_WS_PARAMS = frozenset({'w', 'gain', 'bias'})
_standardized_state = threading.local()


# What WSConv2D modules fold with: one WSNumerics for all, or one per module name (modules
# missing from the mapping use OFFICIAL_WS).
Numerics = WSNumerics | Mapping[str, WSNumerics]


def _numerics_of(numerics: Numerics, module: str) -> WSNumerics:
  if isinstance(numerics, WSNumerics):
    return numerics
  return numerics.get(module, OFFICIAL_WS)


@contextlib.contextmanager
def standardized_weights(numerics: Numerics = OFFICIAL_WS) -> Iterator[None]:
  """While active, WSConv2D modules read weights already standardized by standardize_params.

  For inference: evaluating one set of weights on many batches, standardizing once saves
  each forward pass a pass over every weight.
  Enter it inside the traced function. Parameters without ``w_standardized`` fail to apply
  rather than run unstandardized, and a module whose own numerics differ from the
  ``numerics`` given here (those standardize_params() folded with) fails too.
  """
  previous = getattr(_standardized_state, 'numerics', None)
  _standardized_state.numerics = numerics
  try:
    yield
  finally:
    _standardized_state.numerics = previous


def weights_are_standardized() -> bool:
  """Whether WSConv2D modules traced now read ``w_standardized`` (see standardized_weights)."""
  return getattr(_standardized_state, 'numerics', None) is not None


@contextlib.contextmanager
def recording_ws_numerics() -> Iterator[dict[str, WSNumerics]]:
  """Yields a dict that every WSConv2D traced meanwhile enters its numerics in, by name.

  Trace a model's init or forward inside it (``jax.eval_shape`` is enough) to learn what
  standardize_params() and standardized_weights() need for a model that mixes numerics.
  """
  previous = getattr(_standardized_state, 'recorder', None)
  recorded: dict[str, WSNumerics] = {}
  _standardized_state.recorder = recorded
  try:
    yield recorded
  finally:
    _standardized_state.recorder = previous


def standardize_params(
  params: hk.Params, numerics: Numerics = OFFICIAL_WS
) -> hk.Params:
  """Every WSConv2D's ``{w, gain, bias}`` as ``{w_standardized, bias}``; others unchanged.

  ``w_standardized`` is exactly the weight WSConv2D convolves with (float32, each module
  with its own ``numerics``: see recording_ws_numerics), so a model applied to the result
  inside ``standardized_weights(numerics)`` gives the same outputs.
  WSConv2D modules are recognised by their parameter names, which no other layer here uses.
  """
  out = {}
  for module, module_params in params.items():
    if set(module_params) == _WS_PARAMS:
      eps, eps_inside = _numerics_of(numerics, module)
      w_hat = standardize_weight(
        module_params['w'], module_params['gain'], eps, eps_inside=eps_inside
      )
      out[module] = {STANDARDIZED_W: w_hat, 'bias': module_params['bias']}
    else:
      out[module] = dict(module_params)
  return out


def check_groups(x: jax.Array, groups: int, module_name: str) -> int:
  """The input channels of ``x``, checked to split into ``groups`` groups."""
  in_ch = x.shape[-1]
  if in_ch % groups:
    raise ValueError(
      f'{module_name}: input channels {in_ch} not divisible by {groups} groups.'
    )
  return in_ch


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
    cpu_conv.check_impl(grouped_conv_impl)
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
    in_ch = check_groups(x, self.feature_group_count, self.module_name)
    w_shape = self.kernel_shape + (
      in_ch // self.feature_group_count,
      self.output_channels,
    )
    impl = self.grouped_conv_impl or cpu_conv.default_grouped_conv_impl()
    own = WSNumerics(self.eps, self.eps_inside)
    recorder = getattr(_standardized_state, 'recorder', None)
    if recorder is not None:
      recorder[self.module_name] = own
    if weights_are_standardized():
      if hk.running_init():
        raise ValueError(
          'standardized_weights() is for applying parameters from '
          'standardize_params(), not for initializing them.'
        )
      folded = _numerics_of(_standardized_state.numerics, self.module_name)
      if own != folded:
        raise ValueError(
          f'{self.module_name}: its numerics {own} are not the {folded} that '
          'standardized_weights() says the weights were folded with (the '
          f'official WS_EPS={WS_EPS} unless given); pass the numerics '
          'recording_ws_numerics() records.'
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
    out = cpu_conv.grouped_conv(
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


def measure_and_drop(
  branch: jax.Array, stoch_depth: StochDepth | None, is_training: bool
) -> tuple[jax.Array, jax.Array]:
  """Stochastic depth on a residual branch, and its ``res_avg_var`` metric before it."""
  res_avg_var = jnp.mean(jnp.var(branch.astype(jnp.float32), axis=(0, 1, 2)))
  if stoch_depth is not None:
    branch = stoch_depth(branch, is_training)
  return branch, res_avg_var


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
  branch, res_avg_var = measure_and_drop(branch, stoch_depth, is_training)
  skip_gain = hk.get_parameter(
    'skip_gain', (), jnp.float32, init=hk.initializers.Constant(skip_init)
  )
  branch = branch * skip_gain.astype(branch.dtype)
  return branch * jnp.asarray(alpha, branch.dtype) + shortcut, res_avg_var


class ResidualBlock(hk.Module):
  """What every residual block here shares: widths, stride, projection, stochastic depth.

  Subclasses take their own options and pass these shared ones on as ``**kwargs``; they
  build their convolutions after calling this constructor, and NF blocks end their
  ``__call__`` with :meth:`merge`. ``beta`` scales the branch input (``1 / expected_std``)
  and ``alpha`` the branch output; 0.2 is the NF papers' and the official code's alpha.
  """

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    stride: int = 1,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    stochdepth_rate: float | None = None,
    beta: float = 1.0,
    alpha: float = 0.2,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
    self.activation = activation
    self.beta, self.alpha = beta, alpha
    # A block that changes resolution or width needs a projection shortcut.
    self.use_projection = stride > 1 or in_ch != out_ch
    self.stoch_depth = None
    if stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0:
      self.stoch_depth = StochDepth(stochdepth_rate)

  @property
  def has_stochdepth(self) -> bool:
    return self.stoch_depth is not None

  def shortcut_macs(self, h: float, w: float) -> float:
    """Multiply-adds of the projection ``conv_shortcut`` at ``h x w`` (0 without one)."""
    if not self.use_projection:
      return 0.0
    return self.conv_shortcut.count_macs(self.in_ch, h, w)

  def pre_activate(self, x: jax.Array) -> jax.Array:
    """``act(x) * beta``: the NF branch input, scaled back to unit variance."""
    return self.activation(x) * jnp.asarray(self.beta, x.dtype)

  def merge(
    self,
    branch: jax.Array,
    shortcut: jax.Array,
    is_training: bool,
    skip_init: float = 0.0,
  ) -> tuple[jax.Array, jax.Array]:
    """:func:`residual_merge` with this block's ``alpha`` and stochastic depth."""
    return residual_merge(
      branch, shortcut, self.alpha, self.stoch_depth, is_training, skip_init
    )


def stage_layout(
  in_ch: int,
  widths: Sequence[int],
  depths: Sequence[int],
  strides: Sequence[int],
) -> list[tuple[int, int, int, bool]]:
  """``(in_ch, out_ch, stride, first_of_stage)`` of every block, stage by stage.

  The first block of each stage takes the stage's stride and width change.
  """
  layout, ch = [], in_ch
  for out_ch, depth, stride in zip(widths, depths, strides, strict=True):
    for i in range(depth):
      layout.append((ch, out_ch, stride if i == 0 else 1, i == 0))
      ch = out_ch
  return layout


def build_nf_stages(
  in_ch: int,
  widths: Sequence[int],
  depths: Sequence[int],
  strides: Sequence[int],
  alpha: float,
  stochdepth_rate: float,
  make_block: Callable[..., hk.Module],
) -> list[hk.Module]:
  """The blocks of an NF network, each told the expected std of its input.

  Calls ``make_block(in_ch, out_ch, index=, stride=, beta=, stochdepth_rate=)`` for block
  ``index`` (counted over the network); ``beta = 1 / expected_std`` and the stochastic depth
  rate grows linearly with depth, as in the official code.
  """
  layout = stage_layout(in_ch, widths, depths, strides)
  blocks, expected_std = [], 1.0
  for index, (block_in, block_out, stride, first) in enumerate(layout):
    blocks.append(
      make_block(
        block_in,
        block_out,
        index=index,
        stride=stride,
        beta=1.0 / expected_std,
        stochdepth_rate=stochdepth_rate * index / len(layout),
      )
    )
    # A transition block resets the expected std, then every block grows it.
    if first:
      expected_std = 1.0
    expected_std = math.sqrt(expected_std**2 + alpha**2)
  return blocks


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


def check_num_classes(num_classes: int) -> None:
  """Raises a ValueError unless ``num_classes`` is a positive int."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(
      f'num_classes must be a positive int, got {num_classes!r}.'
    )


def check_images(x: jax.Array, total_stride: int, channels: int = 3) -> None:
  """Raises a ValueError naming the problem when ``x`` is not a valid NHWC image batch."""
  if x.ndim != 4:
    raise ValueError(
      f'Expected NHWC images of rank 4, got shape {tuple(x.shape)}.'
    )
  if x.shape[-1] != channels:
    raise ValueError(
      f'Expected NHWC images with {channels} channels (last axis), got shape '
      f'{tuple(x.shape)}; transpose NCHW inputs to NHWC.'
    )
  if min(x.shape[1], x.shape[2]) < total_stride:
    raise ValueError(
      f"Images of {x.shape[1]}x{x.shape[2]} are smaller than the network's "
      f'total stride {total_stride}; use at least {total_stride}x'
      f'{total_stride}.'
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'Expected floating-point images, got dtype {x.dtype}.')
