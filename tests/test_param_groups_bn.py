"""BatchNorm baselines: ``scale`` and ``offset`` never get weight decay.

Haiku stores them as [1, 1, 1, C], rank 4 like a conv kernel, so only their names keep them
out of weight decay; the paper's baselines (and the official code) never decay them.
"""

import jax
import numpy as np
import pytest

import nfnets
from nfnets import agc, optim


def _leaves(params):
  return [
    (agc.param_path(kp), np.shape(leaf))
    for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  ]


@pytest.mark.parametrize(
  'name', ['resnet_v1_50', 'resnet_v2_50', 'nfnet_f0_bn']
)
def test_batchnorm_scale_and_offset_are_not_decayed(name):
  params = nfnets.create_model(name, num_classes=10).param_shapes(32)
  mask = optim.weight_decay_mask(params, optim.default_config())
  decayed = {
    agc.param_path(kp): bool(v)
    for kp, v in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  bn = [
    (p, s)
    for p, s in _leaves(params)
    if p.rsplit('/', 1)[1] in ('scale', 'offset')
  ]
  assert (
    len(bn) >= 90
  )  # every BatchNorm of the network (49 in the v2 ResNet-50)
  assert any(
    len(s) == 4 for _, s in bn
  )  # the shape alone would not exclude them
  assert not any(decayed[p] for p, _ in bn)
  # Exactly the convolution and classifier kernels decay.
  assert {p for p, d in decayed.items() if d} == {
    p for p, s in _leaves(params) if p.endswith('/w') and len(s) >= 2
  }


def test_sgd_step_decays_kernels_and_leaves_batchnorm_alone():
  # Zero gradients: one SGD step is w <- w - lr * (1 + momentum) * wd * w (Nesterov on a
  # momentum buffer that starts at zero) where decay applies, and no change elsewhere.
  params = nfnets.create_model('resnet_v2_26', num_classes=10).param_shapes(32)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
    lambda s: np.asarray(rng.uniform(0.5, 1.5, s.shape), np.float32), params
  )
  config = optim.default_config()
  config.schedule = 'constant'
  tx, _ = optim.build_optimizer(
    config, params=params, total_steps=10, warmup_steps=0, global_batch_size=256
  )
  grads = jax.tree_util.tree_map(np.zeros_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  factor = config.lr_per_256 * (1 + config.momentum) * config.weight_decay
  flat_updates = dict(_leaves_with_values(updates))
  n_bn = 0
  for path, value in _leaves_with_values(params):
    name = path.rsplit('/', 1)[1]
    if name in ('scale', 'offset'):
      n_bn += 1
      np.testing.assert_array_equal(flat_updates[path], 0.0, err_msg=path)
    elif name == 'w':
      np.testing.assert_allclose(
        flat_updates[path], -factor * value, rtol=1e-5, err_msg=path
      )
  assert n_bn > 0


def _leaves_with_values(tree):
  return [
    (agc.param_path(kp), np.asarray(leaf))
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]
