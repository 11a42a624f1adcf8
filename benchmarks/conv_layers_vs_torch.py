r"""Every convolution of NFNet-F0's training step, timed alone in JAX (ours) and in PyTorch.

The CPU training step is bound by its convolutions (forward, input gradient, weight gradient),
so this is the ceiling analysis behind the benchmark ratio: how fast XLA:CPU runs F0's
convolutions, as we lower them (split groups, 1x1 as dots, stride-2 input gradients by phases;
benchmarks/train_step.py times the whole step), against the oneDNN kernels timm uses. Weight
standardization and activations are left out on both sides.

Run it once per framework (the frameworks live in different environments), then compare:

  python benchmarks/conv_layers_vs_torch.py --framework=jax --out=/tmp/conv_jax.json
  /work/torchenv/bin/python benchmarks/conv_layers_vs_torch.py --framework=torch \
      --out=/tmp/conv_torch.json
  python benchmarks/conv_layers_vs_torch.py --compare /tmp/conv_jax.json /tmp/conv_torch.json

Times are wall milliseconds (min over repeats) at batch 8 and F0's 192 px training resolution,
with every thread of the machine; 'bwd' is the input plus weight gradient (no input gradient
for the stem's first convolution, whose input is the image). ``--image_size=256
--forward_only`` times the eval forward's convolutions instead (F0's 256 px test resolution):
their total is the floor under our eval forward, against the peer's.
"""

import argparse
import json
import time

# (input size, in channels, out channels, kernel, stride, groups, how many in F0)
F0_CONVS = [
  (192, 3, 16, 3, 2, 1, 1),
  (96, 16, 32, 3, 1, 1, 1),
  (96, 32, 64, 3, 1, 1, 1),
  (96, 64, 128, 3, 2, 1, 1),  # stem
  (48, 128, 256, 1, 1, 1, 2),
  (48, 128, 128, 1, 1, 1, 1),
  (48, 128, 128, 3, 1, 1, 2),
  (48, 256, 256, 1, 1, 1, 1),
  (48, 256, 256, 3, 2, 2, 1),
  (24, 256, 256, 3, 1, 2, 3),
  (24, 256, 512, 1, 1, 1, 3),
  (24, 512, 256, 1, 1, 1, 1),  # stages 1-2
  (24, 512, 768, 1, 1, 1, 1),
  (24, 768, 768, 3, 2, 6, 1),
  (12, 768, 768, 3, 1, 6, 11),
  (12, 768, 1536, 1, 1, 1, 6),
  (12, 512, 1536, 1, 1, 1, 1),
  (12, 1536, 768, 1, 1, 1, 6),
  (12, 768, 768, 3, 2, 6, 1),
  (6, 768, 768, 3, 1, 6, 5),
  (6, 1536, 1536, 1, 1, 1, 1),
  (6, 768, 1536, 1, 1, 1, 3),
  (6, 1536, 768, 1, 1, 1, 2),
  (6, 1536, 3072, 1, 1, 1, 1),  # stages 3-4, final
]
BATCH = 8


def _min_ms(fn, repeats: int) -> float:
  fn()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return 1e3 * best


def f0_convs(image_size: int = 192) -> list[tuple]:
  """F0_CONVS at another input resolution (a multiple of 32, F0's total stride)."""
  if image_size % 32:
    raise ValueError(f'image_size must be a multiple of 32, got {image_size}.')
  return [(size * image_size // 192, *rest) for size, *rest in F0_CONVS]


def conv_macs(image_size: int = 192) -> int:
  """Multiply-adds of F0's convolutions for one image (the tests check it against F0)."""
  return sum(
    count * (size // stride) ** 2 * k * k * cin // groups * cout
    for size, cin, cout, k, stride, groups, count in f0_convs(image_size)
  )


def _jax_layer(
  size, cin, cout, k, stride, groups, repeats: int, forward_only: bool
) -> tuple[float, float]:
  import jax
  import jax.numpy as jnp

  from nfnets import cpu_conv

  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (BATCH, size, size, cin))
  w = jax.random.normal(key, (k, k, cin // groups, cout)) * 0.05
  conv = lambda x, w: cpu_conv.grouped_conv(
    x, w, (stride, stride), 'SAME', groups, 'split'
  )
  fwd = jax.jit(conv)
  fwd_ms = _min_ms(lambda: jax.block_until_ready(fwd(x, w)), repeats)
  if forward_only:
    return fwd_ms, 0.0
  dy = jnp.ones_like(conv(x, w))
  if cin != 3:
    bwd = jax.jit(lambda x, w: jax.vjp(conv, x, w)[1](dy))
  else:  # the image needs no gradient
    bwd = jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](dy))
  return fwd_ms, _min_ms(lambda: jax.block_until_ready(bwd(x, w)), repeats)


def _torch_layer(
  size, cin, cout, k, stride, groups, repeats: int, forward_only: bool
) -> tuple[float, float]:
  import torch

  needs_dx = cin != 3  # the image needs no gradient
  x = torch.randn(BATCH, cin, size, size, requires_grad=needs_dx)
  conv = torch.nn.Conv2d(
    cin, cout, k, stride, padding=k // 2, groups=groups, bias=False
  )

  def fwd():
    with torch.no_grad():
      conv(x)

  fwd_ms = _min_ms(fwd, repeats)
  if forward_only:
    return fwd_ms, 0.0
  dy = torch.ones_like(conv(x))
  inputs = (x, conv.weight) if needs_dx else (conv.weight,)
  both_ms = _min_ms(lambda: torch.autograd.grad(conv(x), inputs, dy), repeats)
  return fwd_ms, max(both_ms - fwd_ms, 0.0)


def time_layers(
  framework: str,
  repeats: int,
  image_size: int = 192,
  forward_only: bool = False,
) -> list[dict]:
  """Per-layer forward and backward (0 if ``forward_only``) milliseconds for every
  convolution shape of F0 at ``image_size``."""
  time_layer = _jax_layer if framework == 'jax' else _torch_layer
  rows = []
  for size, cin, cout, k, stride, groups, count in f0_convs(image_size):
    fwd, bwd = time_layer(
      size, cin, cout, k, stride, groups, repeats, forward_only
    )
    rows.append(
      dict(
        layer=[size, cin, cout, k, stride, groups],
        count=count,
        fwd=fwd,
        bwd=bwd,
      )
    )
    print(rows[-1], flush=True)
  return rows


def compare(ours: list[dict], peer: list[dict]) -> str:
  """Per-layer table and count-weighted totals; ratio = peer time / our time (>1: we win)."""
  lines = [
    f'{"size cin cout k s g":>24} {"x":>3} {"ours fwd":>9} {"bwd":>7} '
    f'{"peer fwd":>9} {"bwd":>7} {"ratio":>6}'
  ]
  totals = dict(of=0.0, ob=0.0, pf=0.0, pb=0.0)
  for a, b in zip(ours, peer, strict=True):
    if a['layer'] != b['layer']:
      raise ValueError(f'Layer lists differ: {a["layer"]} vs {b["layer"]}.')
    n = a['count']
    totals['of'] += n * a['fwd']
    totals['ob'] += n * a['bwd']
    totals['pf'] += n * b['fwd']
    totals['pb'] += n * b['bwd']
    ratio = (b['fwd'] + b['bwd']) / (a['fwd'] + a['bwd'])
    lines.append(
      f'{" ".join(map(str, a["layer"])):>24} {n:>3} {a["fwd"]:9.1f} '
      f'{a["bwd"]:7.1f} {b["fwd"]:9.1f} {b["bwd"]:7.1f} {ratio:6.2f}'
    )
  ours_total, peer_total = (
    totals['of'] + totals['ob'],
    totals['pf'] + totals['pb'],
  )
  if not totals['ob'] and not totals['pb']:  # --forward_only runs
    lines.append(
      f'F0 forward, all convolutions: ours {ours_total:.0f} ms, peer '
      f'{peer_total:.0f} ms; peer/ours {peer_total / ours_total:.2f}'
    )
    return '\n'.join(lines)
  lines.append(
    f'F0 step, all convolutions: ours {ours_total:.0f} ms (fwd {totals["of"]:.0f}, '
    f'bwd {totals["ob"]:.0f}), peer {peer_total:.0f} ms (fwd {totals["pf"]:.0f}, '
    f'bwd {totals["pb"]:.0f}); peer/ours {peer_total / ours_total:.2f} '
    f'(fwd {totals["pf"] / totals["of"]:.2f}, bwd {totals["pb"] / totals["ob"]:.2f})'
  )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--framework', choices=('jax', 'torch'))
  parser.add_argument(
    '--out', help='Where to write the per-layer times (JSON).'
  )
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--compare', nargs=2, metavar=('OURS_JSON', 'PEER_JSON'))
  parser.add_argument(
    '--image_size',
    type=int,
    default=192,
    help="Input resolution (a multiple of 32); 256 is F0's eval size.",
  )
  parser.add_argument(
    '--forward_only',
    action='store_true',
    help='Time only the forward convolutions (the eval forward).',
  )
  args = parser.parse_args()
  if args.compare:
    with open(args.compare[0]) as f, open(args.compare[1]) as g:
      print(compare(json.load(f), json.load(g)))
    return
  if not args.framework:
    parser.error(
      'give --framework (to time) or --compare (to compare two runs).'
    )
  rows = time_layers(
    args.framework, args.repeats, args.image_size, args.forward_only
  )
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(rows, f)


if __name__ == '__main__':
  main()
