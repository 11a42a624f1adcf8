r"""F0's training step written as a plain user loop, without and with the runtime switch.

A library user's own loop (``nfnets.create_model`` + ``nfnets.agc``'s clipping
+ optax SGD under ``jax.jit``, nothing from experiments/) timed twice, each in
a fresh process: with JAX's defaults, and after ``nfnets.runtime.configure_cpu()``
(which must run before the first JAX computation, hence the processes). The
same round also runs the project's benchmark (benchmarks/train_step.py, the
trainer's step) and timm's ``dm_nfnet_f0`` (benchmarks/timm_peer.py, in a
torch environment), back to back, and prints img/s and every figure's ratio to
timm's, per round and as medians over rounds (a shared machine drifts).

  python -m benchmarks.plain_loop --torch_python=/work/torchvenv/bin/python
  python -m benchmarks.plain_loop --mode=plain     # one timing, defaults
  python -m benchmarks.plain_loop --mode=runtime   # one timing, configure_cpu()
"""

import statistics
import sys
import time
import types

from absl import app, flags

from benchmarks import cpu_vs_timm

# How each figure is produced: (label, command after the Python executable).
_OURS = {
  'plain': ['-m', 'benchmarks.plain_loop', '--mode=plain'],
  'plain+runtime': ['-m', 'benchmarks.plain_loop', '--mode=runtime'],
  'benchmark': [
    '-m',
    'benchmarks.train_step',
    '--model=nfnet_f0',
    '--compare_bn=false',
    '--eval=false',
  ],
}


_MODE = flags.DEFINE_enum(
  'mode',
  'all',
  ['all', 'plain', 'runtime'],
  'all: every figure, in rounds; plain/runtime: time one user loop.',
)
_TORCH_PYTHON = flags.DEFINE_string(
  'torch_python',
  None,
  'Python with torch and timm (mode all); without it, no timm figure.',
)
flags.DEFINE_string('model', 'nfnet_f0', 'Registered model name.')
flags.DEFINE_integer('rounds', 1, 'Rounds of every figure (mode all).')
flags.DEFINE_integer('steps', 5, 'Timed steps per repeat.')
flags.DEFINE_integer('repeats', 3, 'Repeats; the median is reported.')
flags.DEFINE_integer('batch_size', 8, 'Images per step.')
flags.DEFINE_integer('image_size', 192, 'Square input resolution.')
flags.DEFINE_float('width', 1.0, 'Width multiplier (smoke runs).')


def _parse() -> types.SimpleNamespace:
  """The flags as one namespace (time_user_loop takes it whole)."""
  names = ('model', 'rounds', 'steps', 'repeats', 'batch_size', 'image_size')
  values = {name: flags.FLAGS[name].value for name in (*names, 'width')}
  values.update(mode=_MODE.value, torch_python=_TORCH_PYTHON.value)
  return types.SimpleNamespace(**values)


def time_user_loop(args: types.SimpleNamespace, configure: bool) -> float:
  """Seconds per step of a user's F0 loop (median over repeats)."""
  if configure:
    # First, before anything runs on JAX: that is the documented contract.
    from nfnets import runtime

    print(runtime.configure_cpu(), flush=True)

  import jax
  import jax.numpy as jnp
  import optax

  import nfnets
  from nfnets import agc

  kwargs = {} if args.width == 1.0 else {'width': args.width}
  model = nfnets.create_model(args.model, num_classes=1000, **kwargs)
  rng = jax.random.PRNGKey(0)
  shape = (args.batch_size, args.image_size, args.image_size, 3)
  images = jax.random.normal(rng, shape, jnp.float32)
  labels = jax.random.randint(rng, (args.batch_size,), 0, 1000)
  params, state = model.init(rng, images[:1], is_training=True)
  # The paper's recipe as a user would write it: AGC first, then SGD with
  # Nesterov momentum and weight decay.
  tx = optax.chain(
    agc.adaptive_grad_clip(0.01),
    optax.add_decayed_weights(2e-5),
    optax.sgd(0.1, momentum=0.9, nesterov=True),
  )
  opt_state = tx.init(params)

  def loss_fn(params, state, images, labels):
    out, state = model.apply(params, state, rng, images, is_training=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(
      out['logits'], labels
    )
    return loss.mean(), state

  @jax.jit
  def step(params, state, opt_state, images, labels):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, state, images, labels
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  carry = (params, state, opt_state)
  carry = step(*carry, images, labels)[:3]  # compile and warm up
  jax.block_until_ready(carry)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      out = step(*carry, images, labels)
      carry = out[:3]
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / args.steps)
  return statistics.median(times)


def _throughput(command: list[str]) -> float:
  return cpu_vs_timm.throughputs(cpu_vs_timm.run(command))['train']


def main(argv: list[str]) -> None:
  del argv  # Unused.
  args = _parse()
  if args.mode != 'all':
    seconds = time_user_loop(args, configure=args.mode == 'runtime')
    print(
      f'{args.mode} train batch {args.batch_size} at {args.image_size}px: '
      f'{args.batch_size / seconds:8.3f} img/s'
    )
    return
  common = [
    f'--steps={args.steps}',
    f'--repeats={args.repeats}',
    f'--batch_size={args.batch_size}',
    f'--image_size={args.image_size}',
  ]
  width = [f'--width={args.width}'] if args.width != 1.0 else []
  runs = {
    label: [sys.executable, *command, *common, *width]
    for label, command in _OURS.items()
  }
  if args.torch_python:
    runs['timm'] = [
      args.torch_python,
      'benchmarks/timm_peer.py',
      '--no_eval',
      *common,
    ]
  figures = {label: [] for label in runs}
  for index in range(1, args.rounds + 1):
    for label, command in runs.items():
      figures[label].append(_throughput(command))
      # Each figure as it comes: a round cut short still says what it measured.
      print(
        f'round {index} {label}: {figures[label][-1]:.3f} img/s', flush=True
      )
    line = ', '.join(f'{k} {v[-1]:.3f}' for k, v in figures.items())
    print(f'round {index} (img/s): {line}', flush=True)
    if 'timm' in figures:
      print(
        f'round {index} vs timm: '
        + ', '.join(
          f'{k} {v[-1] / figures["timm"][-1]:.2f}x'
          for k, v in figures.items()
          if k != 'timm'
        ),
        flush=True,
      )
  for label, values in figures.items():
    median = statistics.median(values)
    line = f'{label}: median {median:.3f} img/s over {len(values)} round(s)'
    if 'timm' in figures and label != 'timm':
      ratios = [v / t for v, t in zip(values, figures['timm'])]
      line += f', {statistics.median(ratios):.2f}x timm'
    print(line)


if __name__ == '__main__':
  app.run(main)
