"""Smoke tests of benchmarks/train_step.py's pieces on a tiny NFNet."""

import importlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import train_step as benchmark
from experiments import train
from nfnets import layers, optim, registry
from nfnets.counting import count_model_macs


def _load_script(name: str):
  """benchmarks/<name>.py as a module."""
  return importlib.import_module(f'benchmarks.{name}')


class _TinyNet(hk.Module):
  """Two WS convs (one grouped) and a classifier: compiles in about a second."""

  def __init__(self, num_classes: int):
    super().__init__(name='NFNet')
    self.conv0 = layers.WSConv2D(8, 3, stride=2, name='stem_conv0')
    self.conv1 = layers.WSConv2D(8, 3, feature_group_count=2, name='conv1')
    self.fc = layers.Linear(num_classes)

  def __call__(self, x, is_training, return_metrics=False):
    out = self.conv1(jax.nn.gelu(self.conv0(x)))
    return {'logits': self.fc(jnp.mean(out, axis=(1, 2))).astype(jnp.float32)}

  def count_macs(self, h, w):
    return (
      self.conv0.count_macs(3, h, w)
      + self.conv1.count_macs(8, h / 2, w / 2)
      + 8 * self.fc.output_size
    )


def _tiny():
  return registry.Model(
    name='tiny', num_classes=10, kwargs={}, module_fn=_TinyNet
  )


def test_train_step_is_the_trainers_and_updates_params_and_ema():
  model = _tiny()
  config = benchmark.step_config()
  compiled, state, (batch,), _ = benchmark.compiled_train_step(
    model, batch_size=2, image_size=32, dtype=jnp.float32, seed=0, config=config
  )
  before = jax.tree_util.tree_map(np.asarray, state.params)
  # The trainer's own step, pmapped over one device, from the same state: what the
  # benchmark times must be what training runs, number for number.
  optimizer, schedule = optim.build_optimizer(
    config.optimizer,
    params=model.param_shapes(32),
    total_steps=10_000,
    warmup_steps=100,
    global_batch_size=2,
  )
  p_step = jax.pmap(
    train.make_train_step(model, optimizer, schedule, config),
    axis_name=train.AXIS,
    devices=jax.devices()[:1],
  )
  rstate = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], state)
  rbatch = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], batch)
  for _ in range(2):
    rstate, p_metrics = p_step(rstate, rbatch)
    state, metrics = compiled(state, batch)
  assert int(state.step) == 2
  assert float(metrics['loss']) == pytest.approx(
    float(p_metrics['loss'][0]), rel=1e-5
  )
  np.testing.assert_allclose(
    jax.tree_util.tree_leaves(state.params)[0],
    jax.tree_util.tree_leaves(rstate.params)[0][0],
    rtol=1e-5,
    atol=1e-6,
  )
  assert 0.0 <= float(metrics['agc_clip_fraction']) <= 1.0
  w = 'NFNet/~/linear'
  # Warmup lr is nonzero after step 0, so the classifier moved; EMA decay at step 1 is
  # min(0.99999, 2/11): the EMA sits between the old and new weights.
  new_params, ema = state.params, state.ema_params
  assert np.any(np.asarray(new_params[w]['b']) != before[w]['b'])
  d = 2.0 / 11.0
  np.testing.assert_allclose(
    ema[w]['w'], before[w]['w'] * d + new_params[w]['w'] * (1 - d), atol=1e-4
  )


def test_timing_and_report():
  model = _tiny()
  timing = benchmark.time_eval_step(
    model, batch_size=2, image_size=32, steps=1, warmup=0
  )
  assert timing.seconds_per_step > 0 and timing.compile_seconds > 0
  assert timing.images_per_second == pytest.approx(2 / timing.seconds_per_step)
  flops = benchmark.eval_flops_per_image(model, 32)
  # Traced MACs agree with the rule-based count.
  assert flops == pytest.approx(2 * model.count_macs(32), rel=1e-6)
  line = benchmark.report(
    timing, flops, peak=flops * timing.images_per_second * 4
  )
  assert 'MFU  25.0%' in line


def test_peak_flops_table():
  cpu = jax.devices('cpu')[0]
  assert benchmark.device_peak_flops(cpu, 'float32') is None
  assert benchmark.device_peak_flops(cpu, 'float32', cpu_peak=1e12) == 1e12
  mem, what = benchmark.peak_memory_bytes(cpu)
  assert mem > 0 and 'RSS' in what


def _f0_conv_macs(image_size: int) -> int:
  """F0's traced MACs minus the classifier (3072 x 1000) and the squeeze-excite linears
  (C x C/2 and back, per block: one 256, two 512, nine 1536 channels): its convolutions."""
  model = registry.create_model('nfnet_f0', num_classes=1000)
  se_macs = 256**2 + 2 * 512**2 + 9 * 1536**2
  return count_model_macs(model, image_size) - 3072 * 1000 - se_macs


def test_conv_peer_script_lists_every_f0_convolution():
  # benchmarks/conv_layers_vs_torch.py times F0's convolutions one by one; its list must be F0's.
  script = _load_script('conv_layers_vs_torch')
  assert script.conv_macs() == _f0_conv_macs(192)
  assert (
    sum(count for *_, count in script.F0_CONVS) == 57
  )  # F0's WSConv2D layers


def test_conv_peer_script_scales_the_layers_to_the_eval_resolution():
  # --image_size=256 (F0's eval size) must list the convolutions of F0's 256 px forward.
  script = _load_script('conv_layers_vs_torch')
  assert script.conv_macs(256) == _f0_conv_macs(256)
  with pytest.raises(ValueError, match='multiple of 32'):
    script.f0_convs(200)


def test_batch_fit_largest_batch_closed_form():
  fit = benchmark.BatchFit(fixed_bytes=2 * 2**30, bytes_per_image=100 * 2**20)
  # (10 GiB - 2 GiB) / 100 MiB = 81.92 images -> 81, rounded down to a multiple of 8.
  assert fit.largest_batch(10 * 2**30) == 80
  assert fit.largest_batch(10 * 2**30, multiple=1) == 81
  assert fit.largest_batch(1 * 2**30) == 0


def test_largest_batch_plans_within_the_fraction_and_steps_down(monkeypatch):
  fit = benchmark.BatchFit(fixed_bytes=2 * 2**30, bytes_per_image=100 * 2**20)
  monkeypatch.setattr(
    benchmark, 'fit_train_memory', lambda model, **kwargs: fit
  )
  tried = []

  def fake_time(model, *, batch_size, **kwargs):
    tried.append(batch_size)
    if len(tried) == 1:
      raise RuntimeError(
        'RESOURCE_EXHAUSTED: Out of memory while trying to allocate'
      )
    return batch_size

  monkeypatch.setattr(benchmark, 'time_train_step', fake_time)
  _, planned, timed = benchmark.time_largest_batch(
    None, image_size=16, dtype=None, memory_bytes=10 * 2**30, plan_fraction=0.9
  )
  # 0.9 * 10 GiB = 9 GiB; (9 GiB - 2 GiB) / 100 MiB = 71.68 -> 71 -> 64; then 5% down:
  # int(64 * 0.95) = 60 -> 56.
  assert planned == 64
  assert tried == [64, 56] and timed == 56
  with pytest.raises(ValueError, match='plan_fraction'):
    benchmark.time_largest_batch(
      None, image_size=16, dtype=None, memory_bytes=1, plan_fraction=1.5
    )


def test_memory_fit_from_two_probes(monkeypatch):
  planned = lambda model, *, batch_size, **kwargs: 1000 + 37 * batch_size
  monkeypatch.setattr(benchmark, 'planned_train_step_bytes', planned)
  fit = benchmark.fit_train_memory(None, image_size=16, probe_batches=(4, 8))
  assert (fit.fixed_bytes, fit.bytes_per_image) == (1000, 37)
  with pytest.raises(ValueError, match='increasing'):
    benchmark.fit_train_memory(None, image_size=16, probe_batches=(8, 4))
  monkeypatch.setattr(
    benchmark, 'planned_train_step_bytes', lambda model, **kwargs: 5
  )
  with pytest.raises(ValueError, match='did not grow'):
    benchmark.fit_train_memory(None, image_size=16)


def test_planned_bytes_hold_train_state_and_batch():
  # The plan must at least hold the live train state (params, momentum, EMA: float32 each)
  # and the batch; the activations for the backward pass come on top.
  model = _tiny()
  planned = benchmark.planned_train_step_bytes(
    model, batch_size=2, image_size=16
  )
  num_params = sum(
    int(np.prod(s.shape))
    for s in jax.tree_util.tree_leaves(model.param_shapes(16))
  )
  assert planned >= 3 * 4 * num_params + 2 * 16 * 16 * 3 * 4


def test_out_of_memory_errors_are_recognised():
  assert benchmark.is_out_of_memory(
    RuntimeError(
      'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB'
    )
  )
  assert not benchmark.is_out_of_memory(ValueError('shapes do not match'))


def test_profile_script_sums_thread_time_by_op_kind():
  # benchmarks/profile_train_step.py's breakdown: op events summed by kind (numbers stripped),
  # per step, in ms (trace durations are microseconds); runtime events are not ops.
  script = _load_script('profile_train_step')
  events = [
    {'ph': 'X', 'name': 'ynn_fusion.12', 'dur': 3000},
    {'ph': 'X', 'name': 'ynn_fusion', 'dur': 1000},
    {'ph': 'X', 'name': 'transpose_copy_fusion.97', 'dur': 500},
    {'ph': 'X', 'name': 'end: ynn_fusion.12', 'dur': 7},
    {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 9000},
    {'ph': 'X', 'name': '$api.py:2479 block_until_ready', 'dur': 9000},
    {'ph': 'i', 'name': 'ynn_fusion.3', 'dur': 8000},
  ]
  assert script.thread_ms_by_kind(events, steps=2) == {
    'ynn_fusion': (2.0, 1.0),
    'transpose_copy_fusion': (0.25, 0.5),
  }
  assert list(script.thread_ms_by_kind(events, steps=1)) == [
    'ynn_fusion',
    'transpose_copy_fusion',
  ]


def test_cpu_vs_timm_script_reads_both_benchmarks_lines():
  # benchmarks/cpu_vs_timm.py parses the two benchmarks' printed lines (as printed this session)
  # and divides ours by timm's within a round.
  script = _load_script('cpu_vs_timm')
  ours = script.throughputs(
    'nfnet_f0: 71.49M params, 4.35 GMACs at 192px\n'
    'nfnet_f0 train batch 8 at 192px:    3.546 img/s,    2256.2 ms/step, compile   26.9 s\n'
    'nfnet_f0 peak memory after the train step (host peak RSS): 3.82 GiB\n'
    'nfnet_f0 eval  batch 8 at 256px:    7.644 img/s,    1046.5 ms/step, compile    3.1 s\n'
  )
  timm = script.throughputs(
    'timm train batch 8 at 192px: 3.036 img/s, 2635.0 ms/step, CPU 5.19 s/step\n'
    'timm eval  batch 8 at 256px: 6.741 img/s, 1186.8 ms/step, CPU 2.35 s/step\n'
  )
  assert ours == {'train': 3.546, 'eval': 7.644}
  assert timm == {'train': 3.036, 'eval': 6.741}
  assert script.ratios(ours, timm) == pytest.approx(
    {'train': 3.546 / 3.036, 'eval': 7.644 / 6.741}
  )
  assert script.ratios({'train': 2.0}, timm) == {'train': 2.0 / 3.036}
