r"""Where a CPU training step's time goes: XLA:CPU's ops by kind, and host page faults.

benchmarks/train_step.py gives the step's wall time; conv_layers_vs_torch.py times the
convolutions alone. This script accounts for the rest of the step, which is the part outside
the convolution kernels:

- the compiled step's temporary buffer and the host page faults per step (XLA:CPU allocates
  that buffer afresh for every execution; with JAX's and glibc's defaults each step faults it
  in again, and ``--keep_step_buffers`` applies nfnets.runtime.configure_cpu() first);
- thread milliseconds per step by op kind, from a JAX profiler trace with XLA:CPU's per-op
  trace events (``--xla_cpu_enable_xprof_traceme``). ``ynn_fusion`` ops are what XLA:CPU
  hands to YNNPACK: the convolutions, the matrix products and some reductions;
  ``transpose_copy_fusion`` ops mostly lay out activations batch-minor for weight-gradient
  convolutions. Thread time sums all cores, so on 2 cores it exceeds the wall time.

  python benchmarks/profile_train_step.py --model=nfnet_f0 --batch_size=8 --image_size=192

Needs only the project's environment (run it with .venv/bin/python from the repository root).
"""

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import resource
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Trace events that time the runtime around the ops, not the ops themselves.
_RUNTIME_EVENT = re.compile(
  r'^(\$|end: )|Execute|Pjit|Allocate|Await|ParseArguments|'
  r'CreateOutputs|Handle input|donation'
)


def op_kind(event_name: str) -> str:
  """``multiply_add_fusion.776`` -> ``multiply_add_fusion``: the op kind, without its number."""
  return re.sub(r'\.\d+$', '', event_name)


def thread_ms_by_kind(
  events: list[dict], steps: int
) -> dict[str, tuple[float, float]]:
  """``{kind: (thread ms per step, ops per step)}`` over complete ('X') trace events.

  Runtime events (dispatch, waits, Python frames) are left out; durations are microseconds.
  """
  totals, counts = collections.Counter(), collections.Counter()
  for event in events:
    if event.get('ph') != 'X' or _RUNTIME_EVENT.search(event['name']):
      continue
    kind = op_kind(event['name'])
    totals[kind] += event['dur']
    counts[kind] += 1
  return {
    kind: (total / 1e3 / steps, counts[kind] / steps)
    for kind, total in totals.most_common()
  }


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='nfnet_f0')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--image_size', type=int, default=192)
  parser.add_argument(
    '--steps', type=int, default=3, help='Profiled (and fault-counted) steps.'
  )
  parser.add_argument('--top', type=int, default=25, help='Op kinds to print.')
  parser.add_argument(
    '--keep_step_buffers',
    action='store_true',
    help='Apply nfnets.runtime.configure_cpu() first, as the entry points do '
    "(by default this profiles JAX's and glibc's defaults).",
  )
  return parser.parse_args()


def main() -> None:
  args = _parse()
  # Per-op trace events must be switched on before XLA initializes.
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_enable_xprof_traceme=true'
  ).strip()
  import jax
  import jax.numpy as jnp

  import nfnets
  from benchmarks import train_step as benchmark
  from nfnets import runtime

  print(runtime.configure_cpu(args.keep_step_buffers))

  model = nfnets.create_model(args.model, num_classes=1000)
  compiled, train_state, batch, compile_seconds = benchmark.compiled_train_step(
    model,
    batch_size=args.batch_size,
    image_size=args.image_size,
    dtype=jnp.float32,
    seed=0,
  )
  memory = compiled.memory_analysis()
  print(
    f'{args.model} train step, batch {args.batch_size} at {args.image_size}px on '
    f'{jax.devices()[0].device_kind}: compiled in {compile_seconds:.0f} s; temporary '
    f'buffer {memory.temp_size_in_bytes / 2**30:.2f} GiB, arguments '
    f'{memory.argument_size_in_bytes / 2**30:.2f} GiB'
  )
  for _ in range(2):
    train_state, _, _ = benchmark.timed_loop(compiled, train_state, batch, 1)

  faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  train_state, seconds, cpu_seconds = benchmark.timed_loop(
    compiled, train_state, batch, args.steps
  )
  faults = (
    resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
  ) / args.steps
  print(
    f'unprofiled: {1e3 * seconds / args.steps:.0f} ms/step, CPU '
    f'{cpu_seconds / args.steps:.2f} s/step, {faults:,.0f} host page faults/step '
    f'({faults * resource.getpagesize() / 2**30:.2f} GiB)'
  )

  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      train_state, seconds, _ = benchmark.timed_loop(
        compiled, train_state, batch, args.steps
      )
    trace = next(pathlib.Path(trace_dir).rglob('*.trace.json.gz'))
    events = json.load(gzip.open(trace))['traceEvents']
  kinds = thread_ms_by_kind(events, args.steps)
  total = sum(ms for ms, _ in kinds.values())
  print(
    f'profiled: {1e3 * seconds / args.steps:.0f} ms/step wall, {total:.0f} thread ms/step '
    f'in XLA ops'
  )
  print(f'{"thread ms/step":>15} {"ops/step":>9}  op kind')
  for kind, (ms, count) in list(kinds.items())[: args.top]:
    print(f'{ms:15.1f} {count:9.0f}  {kind}')


if __name__ == '__main__':
  main()
