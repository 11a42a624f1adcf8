"""The paper's optimizer: update order, schedule, masks on NFNet-F0, EMA, other optimizers."""

import math

import jax
import numpy as np
import optax
import pytest

import nfnets
from nfnets import optim


def _unit_clip(g, w, clipping, eps):
  """Per-output-unit clip with explicit loops (last axis indexes units for rank >= 2)."""
  g = np.array(g, np.float64)
  w = np.asarray(w, np.float64)
  if g.ndim <= 1:
    g_n, w_n = np.linalg.norm(g), np.linalg.norm(w)
    bound = clipping * max(w_n, eps)
    return g * bound / g_n if g_n > bound else g
  for o in range(g.shape[-1]):
    g_n, w_n = np.linalg.norm(g[..., o]), np.linalg.norm(w[..., o])
    bound = clipping * max(w_n, eps)
    if g_n > bound:
      g[..., o] *= bound / g_n
  return g


def _small_tree(seed):
  rng = np.random.default_rng(seed)
  shapes = {
    'Net/~/conv': {'w': (1, 1, 2, 2), 'gain': (2,), 'bias': (2,)},
    'Net/~/block': {'skip_gain': ()},
    'Net/~/linear': {'w': (2, 3), 'b': (3,)},
  }
  return {
    m: {
      n: np.asarray(rng.normal(size=s), np.float32) for n, s in leaves.items()
    }
    for m, leaves in shapes.items()
  }


def test_sgd_order_clip_then_decay_then_nesterov_three_steps_by_hand():
  cfg = optim.default_config()
  cfg.clipping, cfg.weight_decay, cfg.lr_per_256 = 0.1, 0.01, 0.1
  params = _small_tree(0)
  grads = [_small_tree(s) for s in (1, 2, 3)]
  # batch 512 -> peak 0.2; warmup 2 of 10 steps: lr(0) = 0, lr(1) = 0.1, lr(2) = 0.2.
  tx, schedule = optim.build_optimizer(
    cfg, params=params, total_steps=10, warmup_steps=2, global_batch_size=512
  )
  lrs = [0.0, 0.1, 0.2]
  state = tx.init(params)
  p = params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)

  clipped = {
    'conv/w',
    'conv/gain',
    'conv/bias',
    'block/skip_gain',
    'linear/b',
  }  # not linear/w
  decayed = {'conv/w', 'linear/w'}
  for mod in params:
    for name in params[mod]:
      key = f'{mod.split("/")[-1]}/{name}'
      w = params[mod][name].astype(np.float64)
      m = np.zeros_like(w)
      for t, g_tree in enumerate(grads):
        g = g_tree[mod][name].astype(np.float64)
        if key in clipped:
          g = _unit_clip(g, w, 0.1, 1e-3)
        if key in decayed:
          g = g + 0.01 * w
        m = 0.9 * m + g
        w = w - lrs[t] * (g + 0.9 * m)
      np.testing.assert_allclose(
        p[mod][name], w, rtol=1e-5, atol=1e-7, err_msg=key
      )
  assert [float(schedule(t)) for t in range(3)] == pytest.approx(lrs)


def test_schedule_scales_with_batch_warms_up_linearly_then_cosine_to_zero():
  cfg = optim.default_config()
  _, sched = optim.build_optimizer(
    cfg, params={}, total_steps=1000, warmup_steps=100, global_batch_size=4096
  )
  peak = 0.1 * 4096 / 256
  assert peak == 1.6
  for t in (0, 50, 100, 101, 550, 999, 1000):
    want = (
      peak * t / 100
      if t <= 100
      else 0.5 * peak * (1 + math.cos(math.pi * (t - 100) / 900))
    )
    assert float(sched(t)) == pytest.approx(want, abs=1e-6), t
  cfg.schedule = 'constant'
  _, sched = optim.build_optimizer(
    cfg, params={}, total_steps=1000, warmup_steps=100, global_batch_size=256
  )
  assert [float(sched(t)) for t in (0, 50, 100, 900)] == pytest.approx(
    [0, 0.05, 0.1, 0.1]
  )


def _f0_counts():
  """NFNet-F0 tensor and element counts per group, from the architecture description in
  the paper and the official nfnet.py (widths, depths, bottleneck 0.5, group width 128, SE ratio 0.5, final
  conv 2x, 1000 classes): no model code involved."""
  conv_w, vectors, se_w, n_convs, n_se, n_blocks = 0, 0, 0, 0, 0, 0
  stem = [(3, 16), (16, 32), (32, 64), (64, 128)]
  for cin, cout in stem:
    conv_w += 9 * cin * cout
    vectors += 2 * cout
    n_convs += 1
  cin = 128
  for width, depth in zip((256, 512, 1536, 1536), (1, 2, 6, 3), strict=True):
    for i in range(depth):
      mid = width // 2
      convs = [cin * mid, 9 * 128 * mid, 9 * 128 * mid, mid * width]
      outs = [mid, mid, mid, width]
      if i == 0:
        convs.append(cin * width)
        outs.append(width)
      conv_w += sum(convs)
      vectors += 2 * sum(outs)
      n_convs += len(convs)
      hidden = width // 2
      se_w += width * hidden + hidden * width
      vectors += hidden + width + 1  # SE biases and the skip gain
      n_se += 2
      n_blocks += 1
      cin = width
  conv_w += 1536 * 3072
  vectors += 2 * 3072
  n_convs += 1
  fc_w, fc_b = 3072 * 1000, 1000
  return dict(
    conv_w=conv_w,
    se_w=se_w,
    vectors=vectors + fc_b,
    fc_w=fc_w,
    n_convs=n_convs,
    n_se=n_se,
    n_blocks=n_blocks,
  )


def test_masks_on_nfnet_f0_match_counts_from_the_architecture():
  c = _f0_counts()
  # Stated numbers: 57 WS convs (4 stem, 48 in blocks, 4 shortcuts, final), 24 SE linears,
  # 12 skip gains, and the classifier; 71,489,284 parameters in all (paper Table 3).
  assert (c['n_convs'], c['n_se'], c['n_blocks']) == (57, 24, 12)
  assert c['conv_w'] + c['se_w'] + c['vectors'] + c['fc_w'] == 71_489_284
  assert c['fc_w'] == 3_072_000
  assert c['conv_w'] + c['se_w'] + c['fc_w'] == 71_375_792
  assert c['vectors'] == 113_492

  shapes = nfnets.create_model('nfnet_f0').param_shapes(resolution=32)
  cfg = optim.default_config()
  size = lambda leaf: int(np.prod(leaf.shape))

  def group(mask):
    leaves = zip(
      jax.tree_util.tree_leaves(mask),
      jax.tree_util.tree_leaves(shapes),
      strict=True,
    )
    on = [size(x) for m, x in leaves if m]
    return len(on), sum(on)

  # AGC: every tensor but the classifier weight (232 of 233 tensors).
  assert group(optim.agc_mask(shapes, cfg)) == (
    3 * 57 + 2 * 24 + 12 + 1,
    71_489_284 - 3_072_000,
  )
  assert not optim.agc_mask(shapes, cfg)['NFNet/~/linear']['w']
  assert optim.agc_mask(shapes, cfg)['NFNet/~/linear']['b']
  assert optim.agc_mask(shapes, cfg)[
    'NFNet/~/nf_block_3/~/squeeze_excite/~/linear'
  ]['w']
  # Weight decay: the 57 conv kernels, 24 SE weights and the classifier weight only.
  assert group(optim.weight_decay_mask(shapes, cfg)) == (
    57 + 24 + 1,
    71_375_792,
  )

  table = optim.describe_param_groups(shapes, cfg)
  assert 'AGC no: 1 tensors, 3,072,000 parameters' in table
  assert 'weight decay no: 151 tensors, 113,492 parameters' in table
  line = next(
    x for x in table.splitlines() if x.startswith('NFNet/~/linear/w ')
  )
  assert line.split()[-3:] == ['no', '-', 'yes']


def test_classifier_rule_is_configurable_and_clipping_none_disables_agc():
  params = {
    'Other/~/head': {'w': np.ones((4, 2), np.float32)},
    'Other/~/linear_1': {'w': np.ones((4, 4), np.float32)},
  }
  cfg = optim.default_config()
  assert optim.agc_mask(params, cfg) == {
    'Other/~/head': {'w': True},
    'Other/~/linear_1': {'w': True},
  }
  # A top-level linear built inside __call__ has no '~' in its name; still the classifier.
  assert optim.agc_mask({'M/linear': {'w': np.ones((2, 2))}}, cfg) == {
    'M/linear': {'w': False}
  }
  cfg.agc_exclude = (r'/~/head/w$',)
  assert optim.agc_mask(params, cfg)['Other/~/head']['w'] is False
  cfg.clipping = None
  assert optim.agc_mask(params, cfg) == {
    'Other/~/head': {'w': False},
    'Other/~/linear_1': {'w': False},
  }
  assert (
    float(optim.clip_stats(params, params, cfg)['agc_clip_fraction']) == 0.0
  )


@pytest.mark.parametrize(
  'name,reference',
  [
    ('adamw', lambda lr, wd, mask: optax.adamw(lr, weight_decay=wd, mask=mask)),
    (
      'lamb',
      lambda lr, wd, mask: optax.lamb(lr, eps=1e-8, weight_decay=wd, mask=mask),
    ),
    (
      'adam',
      lambda lr, wd, mask: optax.chain(
        optax.masked(optax.add_decayed_weights(wd), mask), optax.adam(lr)
      ),
    ),
  ],
)
def test_adaptive_optimizers_equal_optax_after_the_clip(name, reference):
  cfg = optim.default_config()
  cfg.name, cfg.weight_decay, cfg.clipping = name, 0.1, 0.05
  params = _small_tree(0)
  grads = [_small_tree(s) for s in (1, 2)]
  tx, sched = optim.build_optimizer(
    cfg, params=params, total_steps=10, warmup_steps=1, global_batch_size=256
  )
  ref = reference(sched, 0.1, optim.weight_decay_mask(params, cfg))
  p, q = params, params
  s, r = tx.init(p), ref.init(q)
  for g in grads:
    u, s = tx.update(g, s, p)
    # The reference sees gradients clipped by the explicit-loop oracle (classifier w not).
    gc = {
      m: {
        n: (
          g[m][n]
          if (m, n) == ('Net/~/linear', 'w')
          else _unit_clip(g[m][n], q[m][n], 0.05, 1e-3).astype(np.float32)
        )
        for n in g[m]
      }
      for m in g
    }
    v, r = ref.update(gc, r, q)
    p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
  for a, b in zip(
    jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_ema_uses_the_official_warmup():
  e = {'a': np.array([1.0, 2.0], np.float32)}
  p = {'a': np.array([3.0, -2.0], np.float32)}
  # step 0: d = min(0.99999, 1/10) = 0.1; step 10**6: d = 0.99999.
  np.testing.assert_allclose(
    optim.ema_update(e, p, 0, 0.99999)['a'],
    [0.1 * 1 + 0.9 * 3, 0.1 * 2 - 0.9 * 2],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    optim.ema_update(e, p, 10**6, 0.99999)['a'],
    [0.99999 + 3e-5, 2 * 0.99999 - 2e-5],
    rtol=1e-6,
  )
  d = 91 / 100  # step 90: (1 + 90) / (10 + 90) < 0.99
  np.testing.assert_allclose(
    optim.ema_update(e, p, 90, 0.99)['a'],
    [d + (1 - d) * 3, 2 * d - 2 * (1 - d)],
    rtol=1e-6,
  )


def test_clip_stats_report_overall_and_per_parameter_fractions():
  cfg = optim.default_config()
  params = {
    'N/~/c': {'w': np.ones((1, 1, 1, 4), np.float32)},
    'N/~/linear': {'w': np.ones((2, 2), np.float32)},
  }
  # Units 0 and 1 over the bound 0.01 * 1, units 2 and 3 under it; the classifier is excluded.
  grads = {
    'N/~/c': {'w': np.array([[[[1.0, 0.5, 0.001, 0.0]]]], np.float32)},
    'N/~/linear': {'w': np.full((2, 2), 100.0, np.float32)},
  }
  stats = optim.clip_stats(grads, params, cfg)
  assert float(stats['agc_clip_fraction']) == 0.5
  assert float(stats['agc_clip_fraction/N/~/c/w']) == 0.5
  assert 'agc_clip_fraction/N/~/linear/w' not in stats


def test_bad_config_raises_with_accepted_values():
  cfg = optim.default_config()
  kw = dict(params={}, total_steps=10, warmup_steps=1, global_batch_size=8)
  cfg.name = 'rmsprop'
  with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'; accepted"):
    optim.build_optimizer(cfg, **kw)
  cfg = optim.default_config()
  cfg.schedule = 'step'
  with pytest.raises(ValueError, match="Unknown schedule 'step'"):
    optim.build_optimizer(cfg, **kw)
  with pytest.raises(ValueError, match='warmup_steps'):
    optim.build_optimizer(optim.default_config(), **{**kw, 'warmup_steps': 11})
  with pytest.raises(ValueError, match=r"'N/~/attn/w'"):
    optim.build_optimizer(
      optim.default_config(),
      **{**kw, 'params': {'N/~/attn': {'w': np.ones((2, 2, 2))}}},
    )


def test_weight_decay_mask_rules_by_name_rank_and_strength():
  cfg = optim.default_config()
  shapes = {
    'net/~/conv': {
      'w': np.zeros((3, 3, 4, 8)),
      'gain': np.zeros((8,)),
      'bias': np.zeros((8,)),
    },
    'net/~/table': {
      # Rank 2, but named as gains and biases are: never decayed, even when
      # the config's list of names does not hold them.
      'ws_gain': np.zeros((4, 8)),
      'bias_matrix': np.zeros((4, 8)),
      'scale': np.zeros((4, 8)),
      'kernel': np.zeros((4, 8)),
    },
  }
  want = {
    'net/~/conv': {'w': True, 'gain': False, 'bias': False},
    'net/~/table': {
      'ws_gain': False,
      'bias_matrix': False,
      'scale': False,
      'kernel': True,
    },
  }
  assert optim.weight_decay_mask(shapes, cfg) == want
  cfg.no_decay_names = ()
  want['net/~/table']['scale'] = True
  assert optim.weight_decay_mask(shapes, cfg) == want
  # No weight decay: no parameter is in the decayed group.
  cfg.weight_decay = 0.0
  mask = optim.weight_decay_mask(shapes, cfg)
  assert not any(jax.tree_util.tree_leaves(mask))
