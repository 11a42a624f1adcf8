"""Signal propagation at initialization (NF-ResNet paper, Figure 1).

For a residual network fed N(0, 1) images, the paper plots per residual block the average
squared channel mean, the average channel variance of the residual stream and the variance of
the residual branch. :func:`measure` takes those numbers from any registry model's
``return_metrics`` outputs; :func:`nf_expected_variance` is the closed form an NF-ResNet is built
to follow (variance ``1 + k alpha^2`` after the k-th block of a stage, reset by each stage's
projection shortcut).
"""

from collections.abc import Sequence

import jax
import numpy as np

import nfnets

# The three networks of Figure 1: name -> (registry model, constructor overrides).
# The NF-ResNet's skip gains start at 1 (not the default 0) so its branches contribute and the
# alpha^2 growth is visible; stochastic depth is off so training mode measures every block.
FIGURE1_MODELS: dict[str, tuple[str, dict]] = {
  'BN-ReLU-ResNet': ('resnet_v2_50', {}),
  'Unnormalized ResNet': ('unnorm_resnet_50', {}),
  'NF-ResNet': ('nf_resnet_50', dict(skip_init=1.0, stochdepth_rate=0.0)),
}


def nf_expected_variance(
  depths: Sequence[int], alpha: float = 0.2
) -> np.ndarray:
  """Expected residual-stream variance after every block of an NF-ResNet (one per block)."""
  return np.concatenate([1.0 + alpha**2 * np.arange(1, d + 1) for d in depths])


def measure(
  name: str,
  *,
  variant: str,
  width: float,
  resolution: int = 64,
  batch_size: int = 16,
  seed: int = 0,
  **overrides,
) -> dict[str, np.ndarray]:
  """Per-block signal statistics of registry model ``name`` at init on N(0, 1) images.

  Runs in training mode so BatchNorm normalizes with batch statistics, as at the start of
  training. Returns float64 arrays 'avg_sq_mean' and 'avg_var' (stem output, then one per
  block) and 'res_avg_var' (one per block).
  """
  model = nfnets.create_model(
    name, num_classes=10, variant=variant, width=width, **overrides
  )
  key_x, key_init, key_apply = jax.random.split(jax.random.PRNGKey(seed), 3)
  images = jax.random.normal(key_x, (batch_size, resolution, resolution, 3))

  @jax.jit  # One compilation for init and the measured forward pass.
  def init_and_measure(key_init, key_apply, x):
    params, state = model.init(key_init, x)
    return model.apply(params, state, key_apply, x, True, True)[0]

  out = jax.device_get(init_and_measure(key_init, key_apply, images))
  num_blocks = sum(1 for k in out if k.startswith('res_avg_var_'))
  stack = lambda prefix, n: np.array(
    [out[f'{prefix}_{i}'] for i in range(n)], np.float64
  )
  return {
    'avg_sq_mean': stack('avg_sq_mean', num_blocks + 1),
    'avg_var': stack('avg_var', num_blocks + 1),
    'res_avg_var': stack('res_avg_var', num_blocks),
  }


def measure_figure1(
  variant: str = 'ResNet50',
  width: float = 1.0,
  resolution: int = 64,
  batch_size: int = 16,
  seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
  """:func:`measure` for each network of :data:`FIGURE1_MODELS`, same depth/width/inputs."""
  return {
    label: measure(
      name,
      variant=variant,
      width=width,
      resolution=resolution,
      batch_size=batch_size,
      seed=seed,
      **overrides,
    )
    for label, (name, overrides) in FIGURE1_MODELS.items()
  }
