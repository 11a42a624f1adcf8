"""Makes the timm equivalence fixture, and compares our NFNet with timm's on full dm_nfnet_f0.

Two halves, each run in its own environment (PyTorch never enters the project's venv):

1. ``make`` (needs torch + timm): builds a timm ``NormFreeNet`` with a DeepMind-style ``NfCfg``
   that equals ``nfnets.create_model('nfnet_f0', num_classes=10, width=0.0625, group_size=8)``,
   gives every parameter random values (nonzero skip-init gains and non-unit conv gains, so
   every path matters), runs fixed random inputs through it in eval mode and writes the state
   dict, the inputs (NHWC) and timm's logits to ``tests/fixtures/timm_nfnet_tiny.npz``. With
   ``--full_f0_out`` it also writes the same for timm's full ``dm_nfnet_f0`` at 256 px.
2. ``compare`` (the project's venv): converts a written state dict with
   ``nfnets.weights.from_timm``, runs our model and prints the logit differences.

Regenerate the fixture (about 10 s):

    python3.11 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch timm numpy
    /tmp/torchenv/bin/python scripts/make_timm_fixture.py make
    python scripts/make_timm_fixture.py compare          # the project's venv

Choices that make the two networks the same function, not just the same shapes:

- timm's ``ScaledStdConv2dSame`` computes ``(w - mean) / sqrt(var + eps) * gain / sqrt(fan_in)``,
  i.e. ``rsqrt(var * fan_in + eps * fan_in)``; the official (ours) is
  ``rsqrt(max(var * fan_in, 1e-4))``. PyTorch's batch_norm refuses eps=0, so we use
  ``std_conv_eps=1e-12``: for half the fixture's convs (var near 1) ``var + 1e-12`` rounds to
  ``var`` in float32, and the two agree whenever ``var * fan_in > 1e-4``; only float rounding
  differs. The other half have var * fan_in = 5e-5 in every unit, under the 1e-4 floor, and a
  per-conv timm eps that lands on the floor exactly (``_eps_bound_kernels``), so the eps shows
  in the logits. timm's ``dm_nfnet_f*`` default is ``std_conv_eps=1e-5``, a relative change of
  ``5e-6 / var`` in every conv's scale.
- The official code uses ``jax.nn.gelu`` (tanh approximation) with gamma 1.7015043497085571;
  timm's ``dm_nfnet_f*`` use the exact erf GELU. We register ``gelu_tanh`` with the same gamma.
- Our stem is always 16, 32, 64, width[0]/2 channels; timm's ``deep_quad`` stem is
  stem_chs/8, /4, /2, stem_chs. At full width both are 16, 32, 64, 128; for the tiny model
  the first three timm stem convs are rebuilt with 16, 32, 64 channels.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

FIXTURE = os.path.join(
  os.path.dirname(__file__), '..', 'tests', 'fixtures', 'timm_nfnet_tiny.npz'
)
TINY = dict(width=0.0625, group_size=8, num_classes=10, image_size=64, batch=2)
GELU_GAMMA = 1.7015043497085571
STD_CONV_EPS = 1e-12  # batch_norm needs eps > 0; see the module docstring.
WS_EPS = 1e-4  # the official floor on var * fan_in
# var * fan_in of every unit of every other WS conv: under WS_EPS, so the floor decides
# those convs' scale (eps 1e-5 instead of 1e-4 scales them by sqrt(2)).
FLOOR_VAR_N = 5e-5


def _randomize(model, seed: int) -> dict:
  """Random values for every timm parameter; returns the state dict as NumPy arrays."""
  import torch

  rng = np.random.default_rng(seed)
  sd = {}
  for name, t in model.state_dict().items():
    shape = tuple(t.shape)
    if name.endswith('skipinit_gain'):
      v = rng.uniform(0.5, 1.5, shape)
    elif name.endswith('.gain'):
      v = rng.uniform(0.5, 1.5, shape)
    elif name.endswith('.bias'):
      v = rng.normal(0.0, 0.2, shape)
    elif 'attn_last' in name or name.startswith('head.'):
      v = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
    else:  # WS conv weights: standardized anyway, any scale works.
      v = rng.normal(0.0, 1.0, shape)
    sd[name] = np.asarray(v, np.float32)
  model.load_state_dict(
    {k: torch.from_numpy(v) for k, v in sd.items()}, strict=True
  )
  return sd


def _eps_bound_kernels(model, seed: int) -> dict:
  """Every other WS conv gets units with var * fan_in exactly FLOOR_VAR_N (< WS_EPS).

  For those convs the official scale is rsqrt(max(var * fan_in, 1e-4)) = rsqrt(1e-4); timm's is
  rsqrt(var * fan_in + eps * fan_in), so setting that conv's eps to
  (1e-4 - FLOOR_VAR_N) / fan_in makes timm compute the same function. The fixture's logits then
  depend on the WS eps: a wrong eps, or a formula without the max, moves them.
  """
  import torch
  from timm.layers import ScaledStdConv2dSame

  rng = np.random.default_rng(seed)
  convs = [
    m for _, m in model.named_modules() if isinstance(m, ScaledStdConv2dSame)
  ]
  for m in convs[::2]:
    out = m.weight.shape[0]
    fan_in = m.weight[0].numel()
    z = rng.normal(size=(out, fan_in))
    z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    w = z * np.sqrt(FLOOR_VAR_N / fan_in) + rng.normal(
      0.0, np.sqrt(FLOOR_VAR_N / fan_in), (out, 1)
    )
    with torch.no_grad():
      m.weight.copy_(torch.from_numpy(w.reshape(m.weight.shape)).float())
    m.eps = (WS_EPS - FLOOR_VAR_N) / fan_in
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _timm_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
  import torch

  model.eval()
  with torch.no_grad():
    x = torch.from_numpy(
      np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    )
    return model(x).numpy().astype(np.float32)


def _dm_cfg(nfnet, **changes):
  """timm's dm_nfnet_f0 NfCfg with the official conv eps and GELU form, plus ``changes``."""
  nfnet._nonlin_gamma.setdefault('gelu_tanh', GELU_GAMMA)
  return dataclasses.replace(
    nfnet.model_cfgs['dm_nfnet_f0'],
    std_conv_eps=STD_CONV_EPS,
    act_layer='gelu_tanh',
    **changes,
  )


def make(args) -> None:
  from functools import partial

  import timm
  import torch
  from timm.layers import ScaledStdConv2dSame
  from timm.models import nfnet

  torch.manual_seed(0)
  w = TINY['width']
  channels = tuple(int(c * w) for c in (256, 512, 1536, 1536))
  cfg = _dm_cfg(
    nfnet,
    channels=channels,
    group_size=TINY['group_size'],
    stem_chs=channels[0] // 2,
    num_features=2 * channels[-1],
  )
  model = nfnet.NormFreeNet(cfg, num_classes=TINY['num_classes'])
  conv = partial(ScaledStdConv2dSame, eps=STD_CONV_EPS)
  # Our stem's first three convs are fixed at 16/32/64 channels (see the module docstring).
  model.stem.conv1 = conv(3, 16, kernel_size=3, stride=2)
  model.stem.conv2 = conv(16, 32, kernel_size=3, stride=1)
  model.stem.conv3 = conv(32, 64, kernel_size=3, stride=1)
  model.stem.conv4 = conv(64, channels[0] // 2, kernel_size=3, stride=2)
  _randomize(model, seed=0)
  sd = _eps_bound_kernels(model, seed=4)
  rng = np.random.default_rng(1)
  size = TINY['image_size']
  images = rng.normal(0.0, 1.0, (TINY['batch'], size, size, 3)).astype(
    np.float32
  )
  logits = _timm_logits(model, images)
  out = {f'sd/{k}': v for k, v in sd.items()}
  out.update(
    images=images,
    logits=logits,
    versions=np.array(
      [f'torch {torch.__version__}', f'timm {timm.__version__}']
    ),
  )
  np.savez_compressed(args.out, **out)
  print(
    f'wrote {args.out}: {len(sd)} tensors, {sum(v.size for v in sd.values())} params, '
    f'{os.path.getsize(args.out) / 1e6:.2f} MB; logits[0,:4]={logits[0, :4]}'
  )
  if args.full_f0_out:
    _make_full_f0(args.full_f0_out, nfnet)


def _make_full_f0(path: str, nfnet) -> None:
  """Full-size dm_nfnet_f0, random weights, 256 px: timm as shipped and timm made equal."""
  import timm

  shipped = timm.create_model('dm_nfnet_f0', pretrained=False)
  sd = _randomize(shipped, seed=2)
  images = (
    np.random.default_rng(3).normal(0, 1, (2, 256, 256, 3)).astype(np.float32)
  )
  logits_shipped = _timm_logits(shipped, images)
  equal = nfnet.NormFreeNet(_dm_cfg(nfnet))
  equal.load_state_dict(shipped.state_dict(), strict=True)
  logits_equal = _timm_logits(equal, images)
  np.savez(
    path,
    images=images,
    logits_shipped=logits_shipped,
    logits_equal=logits_equal,
    **{f'sd/{k}': v for k, v in sd.items()},
  )
  print(f'wrote {path}')


def compare(args) -> None:
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
  import jax

  import nfnets
  from nfnets import weights

  for path in [args.out] + ([args.full_f0_out] if args.full_f0_out else []):
    with np.load(path, allow_pickle=False) as data:
      sd = {k[3:]: data[k] for k in data.files if k.startswith('sd/')}
      ref = {k: data[k] for k in data.files if k.startswith('logits')}
      images = data['images']
    params = weights.from_timm(sd)
    if path == args.out:
      model = nfnets.create_model(
        'nfnet_f0',
        num_classes=TINY['num_classes'],
        width=TINY['width'],
        group_size=TINY['group_size'],
      )
    else:
      model = nfnets.create_model('nfnet_f0')
    weights.check_params(
      params, model.param_shapes(images.shape[1]), source=path
    )
    out, _ = model.apply(
      params, {}, jax.random.PRNGKey(0), images, is_training=False
    )
    ours = np.asarray(out['logits'])
    for name, logits in ref.items():
      diff = np.abs(ours - logits).max()
      print(
        f'{os.path.basename(path)} {name}: max|ours - timm| = {diff:.3e}, '
        f'relative to max|timm| = {diff / np.abs(logits).max():.3e}'
      )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('mode', choices=('make', 'compare'))
  parser.add_argument('--out', default=FIXTURE)
  parser.add_argument(
    '--full_f0_out',
    default=None,
    help='also write/compare full dm_nfnet_f0 (about 290 MB; not a fixture)',
  )
  args = parser.parse_args()
  make(args) if args.mode == 'make' else compare(args)


if __name__ == '__main__':
  main()
