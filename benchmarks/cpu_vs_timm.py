r"""Our CPU training step and eval forward against timm's, in alternating rounds, as ratios.

A shared VM's speed drifts by 10% or more within minutes, so throughputs from runs far apart
can't be compared. Each round runs timm's benchmark (benchmarks/timm_peer.py, in the torch
environment), then ours (benchmarks/train_step.py, in this one), back to back; the ratio is
taken within each round, and the median over rounds is reported.

  .venv/bin/python benchmarks/cpu_vs_timm.py --torch_python=/work/torchenv/bin/python --rounds=3

Prints one line per round (img/s of both and the ratio, for training and eval) and the medians.
"""

import argparse
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# "nfnet_f0 train batch 8 at 192px:    3.546 img/s, ..." and "timm train batch 8 at 192px: ..."
_THROUGHPUT = re.compile(
  r'\b(train|eval) +batch \d+ at \d+px: +([0-9.]+) img/s'
)


def throughputs(output: str) -> dict[str, float]:
  """``{'train': img/s, 'eval': img/s}`` from either benchmark's output (first line of each)."""
  found = {}
  for kind, value in _THROUGHPUT.findall(output):
    found.setdefault(kind, float(value))
  return found


def ratios(ours: dict[str, float], peer: dict[str, float]) -> dict[str, float]:
  """Our throughput over the peer's, for each kind both measured."""
  return {kind: ours[kind] / peer[kind] for kind in ours if kind in peer}


def run(command: list[str]) -> str:
  result = subprocess.run(
    command, cwd=ROOT, capture_output=True, text=True, check=False
  )
  if result.returncode != 0:
    raise SystemExit(
      f'{" ".join(command)} failed ({result.returncode}):\n'
      f'{result.stderr[-3000:]}'
    )
  return result.stdout + result.stderr


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--torch_python',
    required=True,
    help='Python of an environment with torch and timm.',
  )
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch_size', type=int, default=8)
  return parser.parse_args()


def main() -> None:
  args = _parse()
  if args.rounds < 1:
    raise SystemExit('--rounds must be at least 1.')
  if not pathlib.Path(args.torch_python).exists():
    raise SystemExit(
      f'--torch_python {args.torch_python} does not exist; see '
      'benchmarks/timm_peer.py for how to make that environment.'
    )
  common = [
    f'--steps={args.steps}',
    f'--repeats={args.repeats}',
    f'--batch_size={args.batch_size}',
  ]
  timm_command = [args.torch_python, 'benchmarks/timm_peer.py', *common]
  ours_command = [
    sys.executable,
    '-m',
    'benchmarks.train_step',
    '--model=nfnet_f0',
    '--compare_bn=false',
    *common,
  ]
  per_round = []
  for index in range(1, args.rounds + 1):
    peer = throughputs(run(timm_command))
    ours = throughputs(run(ours_command))
    per_round.append(ratios(ours, peer))
    print(
      f'round {index}: '
      + '; '.join(
        f'{kind} ours {ours[kind]:.2f} / timm {peer[kind]:.2f} img/s = '
        f'{per_round[-1][kind]:.2f}x'
        for kind in per_round[-1]
      ),
      flush=True,
    )
  for kind in per_round[0]:
    values = [r[kind] for r in per_round]
    print(
      f'{kind}: median ratio {statistics.median(values):.2f}x over {len(values)} '
      f'rounds ({", ".join(f"{v:.2f}" for v in values)})'
    )


if __name__ == '__main__':
  main()
