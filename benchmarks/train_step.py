r"""Training-step and eval-forward speed of a registered model on the device at hand.

Times, after compilation, the full training step that the trainer runs (forward, backward,
adaptive gradient clipping, the paper's SGD with weight decay and Nesterov momentum, the EMA of
the weights) and the eval forward pass, on synthetic device-resident batches, and reports
images/s, compile seconds, peak memory, achieved FLOP/s and MFU (when the device's peak is
known). It then times the same architecture with BatchNorm in place of weight standardization
('<model>_bn', when registered) and prints the WS/BN step-time ratio (the paper: 73.3 vs
111.7 ms per step on TPU, NF being faster).

  python -m benchmarks.train_step                                  # F0, batch 8, 192/256 px
  python -m benchmarks.train_step --dtype=bfloat16 --batch_size=32 # GPU, the paper's batch
  python -m benchmarks.train_step --compare_bn=false --steps=3
  python -m benchmarks.train_step --dtype=bfloat16 --max_batch     # + the largest batch that fits
  python -m benchmarks.train_step --dtype=bfloat16 --max_batch --train=false --eval=false \
      --compare_bn=false                                           # only the largest batch

``--max_batch`` compiles the step at two batch sizes, fits XLA's planned bytes as
``fixed + per_image * batch``, and times the largest multiple of 8 whose plan fits 95% of the
device's allocator limit (``--memory_gib`` elsewhere; ``--plan_fraction``: above it XLA:GPU
rematerializes), stepping down if it still runs out of memory.

Steps are dispatched back to back with donated buffers; the host waits (block_until_ready)
only once, after the last timed step, so the figure includes no host syncs.
FLOPs are counted from the traced forward (nfnets.counting): 2 FLOPs per multiply-add, and a
training step counted as 3 forwards (forward + two backward products), as is customary.
"""

import dataclasses
import functools
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

import nfnets
from experiments import train
from experiments.configs import common
from nfnets import counting, cpu_conv, layers, optim

# Dense peak FLOP/s per device (no sparsity), by dtype, from the vendors' data sheets.
PEAK_FLOPS: dict[str, dict[str, float]] = {
  'H100': {'bfloat16': 989e12, 'float32': 67e12},  # SXM; fp32 without TF32
  'H200': {'bfloat16': 989e12, 'float32': 67e12},
  'A100': {'bfloat16': 312e12, 'float32': 19.5e12},
  'TPU v3': {'bfloat16': 123e12, 'float32': 123e12 / 4},  # per chip (2 cores)
  'TPU v4': {'bfloat16': 275e12, 'float32': 275e12 / 4},
}

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass
class Timing:
  """One timed function: median seconds per call over the timed repeats, and compile time."""

  name: str
  batch_size: int
  image_size: int
  seconds_per_step: float
  compile_seconds: float
  step_times: list[float]
  cpu_seconds_per_step: float = float(
    'nan'
  )  # process CPU time (all threads) per step

  @property
  def images_per_second(self) -> float:
    return self.batch_size / self.seconds_per_step


def device_peak_flops(
  device: jax.Device, dtype: str, cpu_peak: float | None = None
) -> float | None:
  """Peak FLOP/s of ``device`` for ``dtype`` from :data:`PEAK_FLOPS`, else None.

  CPUs have no entry (their peak depends on cores, clocks and vector units); pass
  ``cpu_peak`` to get an MFU there.
  """
  if device.platform == 'cpu':
    return cpu_peak
  kind = device.device_kind
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peaks.get(dtype)
  return None


def peak_memory_bytes(device: jax.Device) -> tuple[int | None, str]:
  """Peak memory so far and what it measures: device bytes in use, or host peak RSS on CPU."""
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  rss = resource.getrusage(
    resource.RUSAGE_SELF
  ).ru_maxrss  # KiB on Linux, bytes on macOS
  return int(rss if sys.platform == 'darwin' else rss * 1024), 'host peak RSS'


def step_config(dtype: Any = jnp.float32) -> ml_collections.ConfigDict:
  """The training config the timed step runs: the paper's recipe (label smoothing 0.1, AGC,
  SGD with Nesterov momentum and weight decay, EMA), activations in ``dtype``."""
  config = common.base_config()
  config.bfloat16 = jnp.dtype(dtype) == jnp.bfloat16
  return config


def build_train_step(
  model, config: ml_collections.ConfigDict, *, params, batch_size: int
) -> tuple[Callable, Any]:
  """The trainer's step (``train.make_jitted_train_step``) and its optimizer.

  ``step(state, batch) -> (state, metrics)`` with a ``train.TrainState`` (donated, so XLA
  updates the weights in place) and a batch ``{'images', 'labels'}``. Activations run in
  the config's dtype; parameters, gradients, AGC, the optimizer and the EMA stay float32.
  """
  optimizer, schedule = optim.build_optimizer(
    config.optimizer,
    params=params,
    total_steps=10_000,
    warmup_steps=100,
    global_batch_size=batch_size,
  )
  step = train.make_jitted_train_step(model, optimizer, schedule, config)
  return step, optimizer


def build_eval_step(model, dtype: Any = jnp.float32, numerics=None) -> Callable:
  """A jitted ``eval(params, state, images) -> logits`` (float32) in inference mode.

  As train.Evaluator runs it: ``params`` come from ``layers.standardize_params``
  with the model's own ``numerics`` (``train.ws_numerics``), so weight
  standardization happens once per evaluation, outside the per-batch forward.
  """
  numerics = train.ws_numerics(model) if numerics is None else numerics

  def forward(params, state, images):
    with layers.standardized_weights(numerics):
      out, _ = model.apply(
        params, state, None, images.astype(dtype), is_training=False
      )
    return out['logits']

  return jax.jit(forward)


def timed_loop(
  fn: Callable, carry: Any, args: tuple, steps: int
) -> tuple[Any, float, float]:
  """Runs ``carry = fn(carry, *args)[0]`` ``steps`` times, waiting only at the end.

  Returns the carry, the wall seconds and the process CPU seconds (all threads). On a shared
  host the CPU seconds measure the work itself; the wall seconds also count waiting for cores.
  """
  start, cpu_start = time.perf_counter(), time.process_time()
  out = None
  for _ in range(steps):
    out = fn(carry, *args)
    carry = out[0]
  jax.block_until_ready(out)
  return carry, time.perf_counter() - start, time.process_time() - cpu_start


def time_compiled(
  fn: Callable, carry: Any, args: tuple, steps: int, warmup: int, repeats: int
) -> tuple[list[float], list[float]]:
  """``warmup`` untimed calls, then ``repeats`` timed loops of ``steps`` calls.

  ``fn`` as :func:`timed_loop` runs it; the carry (the train state) is threaded through
  the warm-up and every loop, as training threads it. Returns the wall and the CPU
  seconds per call of each loop.
  """
  for _ in range(warmup):
    carry, _, _ = timed_loop(fn, carry, args, 1)
  logging.info('Warm-up done; timing %d x %d steps.', repeats, steps)
  times, cpu_times = [], []
  for _ in range(repeats):
    carry, seconds, cpu = timed_loop(fn, carry, args, steps)
    times.append(seconds / steps)
    cpu_times.append(cpu / steps)
  return times, cpu_times


def compiled_train_step(
  model,
  *,
  batch_size: int,
  image_size: int,
  dtype: Any,
  seed: int,
  config: ml_collections.ConfigDict | None = None,
  compiler_options: dict | None = None,
) -> tuple[Any, train.TrainState, tuple, float]:
  """Builds the train state and compiles the step: ``(compiled, state, (batch,), secs)``.

  The parameters come from ``config.seed`` (as in training), the synthetic batch from
  ``seed``; ``config`` defaults to :func:`step_config` for ``dtype``.
  """
  config = config or step_config(dtype)
  rng = jax.random.PRNGKey(seed)
  batch = {
    'images': jax.random.normal(
      rng, (batch_size, image_size, image_size, 3), jnp.float32
    ),
    'labels': jax.random.randint(rng, (batch_size,), 0, model.num_classes),
  }
  step, optimizer = build_train_step(
    model,
    config,
    params=model.param_shapes(image_size),
    batch_size=batch_size,
  )
  state = train.init_state(model, optimizer, config, image_size)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile(compiler_options)
  return compiled, state, (batch,), time.perf_counter() - start


def compiled_eval_step(
  model, batch_size: int, image_size: int, dtype: Any, seed: int
) -> tuple[Callable, None, tuple, float]:
  """Compiles the eval forward: ``(step, None, (params, state, images), secs)``.

  ``step(carry, params, state, images)`` threads a trivial carry, as
  :func:`timed_loop` wants; the weights are standardized once, untimed, as
  evaluation does.
  """
  rng = jax.random.PRNGKey(seed)
  images = jax.random.normal(
    rng, (batch_size, image_size, image_size, 3), jnp.float32
  )
  # Initialised in training mode so that models with state (BatchNorm averages) have it.
  params, state = jax.jit(model.init, static_argnums=2)(rng, images[:1], True)
  numerics = train.ws_numerics(model)
  params = jax.jit(lambda p: layers.standardize_params(p, numerics))(params)
  forward = build_eval_step(model, dtype, numerics)
  start = time.perf_counter()
  compiled = forward.lower(params, state, images).compile()
  compile_seconds = time.perf_counter() - start
  return (
    lambda carry, p, s, x: (carry, compiled(p, s, x)),
    None,
    (params, state, images),
    compile_seconds,
  )


def time_step(
  kind: str,
  model,
  *,
  batch_size: int,
  image_size: int,
  dtype: Any = jnp.float32,
  steps: int = 5,
  warmup: int = 1,
  repeats: int = 1,
  seed: int = 0,
  config: ml_collections.ConfigDict | None = None,
) -> Timing:
  """Compiles and times the training step ('train') or the eval forward ('eval').

  Returns the median seconds per step (per batch for 'eval') over ``repeats`` timed loops
  of ``steps`` steps each. ``config`` is the trainer's step config ('train' only; see
  :func:`compiled_train_step`).
  """
  if kind == 'train':
    compiled, carry, args, compile_seconds = compiled_train_step(
      model,
      batch_size=batch_size,
      image_size=image_size,
      dtype=dtype,
      seed=seed,
      config=config,
    )
  elif kind == 'eval' and config is None:
    compiled, carry, args, compile_seconds = compiled_eval_step(
      model, batch_size, image_size, dtype, seed
    )
  else:
    raise ValueError(f'Cannot time {kind!r} with config={config!r}.')
  # Logged before running so that a run cut short still says where its time went.
  logging.info(
    'Compiled the %s step at batch %d in %.0f s.',
    kind,
    batch_size,
    compile_seconds,
  )
  times, cpu_times = time_compiled(
    compiled, carry, args, steps, warmup, repeats
  )
  return Timing(
    kind,
    batch_size,
    image_size,
    float(np.median(times)),
    compile_seconds,
    times,
    float(np.median(cpu_times)),
  )


# What users time, by name (time_step's arguments after ``kind``).
time_train_step = functools.partial(time_step, 'train')
time_eval_step = functools.partial(time_step, 'eval')


def planned_train_step_bytes(
  model,
  *,
  batch_size: int,
  image_size: int,
  dtype: Any = jnp.float32,
  config: ml_collections.ConfigDict | None = None,
) -> int:
  """Device bytes XLA plans for one training step (compiled, not run).

  Arguments plus outputs not aliased to a donated argument plus temporaries: the train state,
  the batch, and the activations kept for the backward pass. On GPU the probe compiles
  without convolution autotuning, which does not change which buffers the step keeps (on an
  H200 an F0 probe still took 47-50 s, against 50-65 s with autotuning at batch 32).
  """
  options = (
    {'xla_gpu_autotune_level': 0} if jax.default_backend() == 'gpu' else None
  )
  compiled, _, _, seconds = compiled_train_step(
    model,
    batch_size=batch_size,
    image_size=image_size,
    dtype=dtype,
    seed=0,
    config=config,
    compiler_options=options,
  )
  stats = compiled.memory_analysis()
  planned = int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )
  logging.info(
    'Memory probe: batch %d plans %.2f GiB (compiled in %.0f s).',
    batch_size,
    planned / 2**30,
    seconds,
  )
  return planned


@dataclasses.dataclass
class BatchFit:
  """A linear fit of planned training-step bytes against the batch size."""

  fixed_bytes: (
    float  # train state (params, momentum, EMA) and batch-independent buffers
  )
  bytes_per_image: float  # activations and their gradients per image

  def largest_batch(self, memory_bytes: float, multiple: int = 8) -> int:
    """The largest multiple of ``multiple`` whose planned bytes fit in ``memory_bytes``."""
    fitting = int((memory_bytes - self.fixed_bytes) // self.bytes_per_image)
    return max(fitting // multiple * multiple, 0)


def fit_train_memory(
  model,
  *,
  image_size: int,
  dtype: Any = jnp.float32,
  probe_batches: tuple[int, int] = (64, 256),
) -> BatchFit:
  """Planned step bytes at two batch sizes, as ``fixed + per_image * batch``.

  XLA's buffer assignment is linear in the batch for a fixed graph, so two compilations
  predict the largest batch without trying (and failing) to run larger ones.
  """
  small, large = probe_batches
  if not 0 < small < large:
    raise ValueError(
      f'probe_batches must be two increasing sizes, got {probe_batches}.'
    )
  bytes_small, bytes_large = (
    planned_train_step_bytes(
      model, batch_size=b, image_size=image_size, dtype=dtype
    )
    for b in probe_batches
  )
  per_image = (bytes_large - bytes_small) / (large - small)
  if per_image <= 0:
    raise ValueError(
      f'Planned bytes did not grow with the batch ({bytes_small} at {small}, '
      f'{bytes_large} at {large}).'
    )
  return BatchFit(
    fixed_bytes=bytes_small - per_image * small, bytes_per_image=per_image
  )


def is_out_of_memory(error: Exception) -> bool:
  """Whether ``error`` is XLA's allocation failure (compile- or run-time)."""
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def device_memory_bytes(device: jax.Device) -> int | None:
  """Bytes the device's allocator may hand out (``bytes_limit``), None where unknown."""
  stats = device.memory_stats() or {}
  return int(stats['bytes_limit']) if 'bytes_limit' in stats else None


# XLA:GPU's scheduler and rematerialization (recomputing activations, itself a slow pass) aim
# at xla_gpu_memory_limit_slop_factor, 95%, of the memory beside the step's arguments. On an
# H200, F0 at the batch planned to fill the whole allocator limit did not finish compiling and
# running within 5.5 minutes (not profiled: rematerialization is the likely cause). A batch
# planned within this fraction stays clear of it.
PLAN_FRACTION = 0.95


def time_largest_batch(
  model,
  *,
  image_size: int,
  dtype: Any,
  memory_bytes: float,
  plan_fraction: float = PLAN_FRACTION,
  multiple: int = 8,
  tries: int = 4,
  **timing_kwargs,
) -> tuple[BatchFit, int, Timing]:
  """Times the training step at the largest batch whose plan fits ``plan_fraction`` of
  ``memory_bytes``; returns the fit, the planned batch and the timing.

  The batch comes from :func:`fit_train_memory`; if running it still fails for memory (the
  allocator's fragmentation and the convolution workspaces are not in XLA's plan), it steps
  down 5% at a time.
  """
  if not 0 < plan_fraction <= 1:
    raise ValueError(f'plan_fraction must be in (0, 1], got {plan_fraction}.')
  fit = fit_train_memory(model, image_size=image_size, dtype=dtype)
  planned = batch = fit.largest_batch(memory_bytes * plan_fraction, multiple)
  for _ in range(tries):
    if batch <= 0:
      break
    logging.info('Timing the train step at batch %d.', batch)
    try:
      return (
        fit,
        planned,
        time_train_step(
          model,
          batch_size=batch,
          image_size=image_size,
          dtype=dtype,
          **timing_kwargs,
        ),
      )
    except (
      Exception
    ) as error:  # jax's XlaRuntimeError, raised at compile or run time
      if not is_out_of_memory(error):
        raise
      logging.warning(
        'Batch %d ran out of memory; trying a smaller one.', batch
      )
      batch = int(batch * 0.95) // multiple * multiple
  raise RuntimeError(
    f'No batch fits in {memory_bytes / 2**30:.1f} GiB (fit: {fit}).'
  )


def train_flops_per_image(model, image_size: int) -> float:
  """FLOPs of one trained image: 3 forwards' worth of traced MACs, 2 FLOPs each."""
  return 3 * 2 * counting.count_model_macs(model, image_size)


def eval_flops_per_image(model, image_size: int) -> float:
  return 2 * counting.count_model_macs(model, image_size)


def report(timing: Timing, flops_per_image: float, peak: float | None) -> str:
  """One line: images/s, ms per step, compile seconds, achieved FLOP/s and MFU."""
  achieved = flops_per_image * timing.images_per_second
  line = (
    f'{timing.name:5s} batch {timing.batch_size} at {timing.image_size}px: '
    f'{timing.images_per_second:8.3f} img/s, {1e3 * timing.seconds_per_step:9.1f} ms/step, '
    f'compile {timing.compile_seconds:6.1f} s, {achieved / 1e9:8.1f} GFLOP/s, '
    f'CPU {timing.cpu_seconds_per_step:.2f} s/step'
  )
  if peak:
    line += f', MFU {100 * achieved / peak:5.1f}%'
  return line


def bn_variant(name: str) -> str | None:
  """The BatchNorm counterpart of ``name`` if the registry has one, else None."""
  bn_name = name + '_bn'
  return bn_name if bn_name in nfnets.list_models() else None


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so other benchmarks can import this module."""
  flags.DEFINE_string('model', 'nfnet_f0', 'Registered model name.')
  flags.DEFINE_integer('batch_size', 8, 'Images per training / eval step.')
  flags.DEFINE_integer(
    'image_size', None, "Train resolution (default: the model's)."
  )
  flags.DEFINE_integer(
    'eval_image_size',
    None,
    "Eval resolution (default: the model's test resolution).",
  )
  flags.DEFINE_enum('dtype', 'float32', list(DTYPES), 'Activation dtype.')
  flags.DEFINE_integer('steps', 5, 'Timed steps per repeat.')
  flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.')
  flags.DEFINE_integer(
    'repeats', 1, 'Timed loops; the median per-step time is used.'
  )
  flags.DEFINE_bool('compare_bn', True, 'Also time the BatchNorm variant.')
  flags.DEFINE_bool(
    'train',
    True,
    'Time the train step at --batch_size (off: only --max_batch / --eval).',
  )
  flags.DEFINE_bool('eval', True, 'Also time the eval forward.')
  flags.DEFINE_enum(
    'grouped_conv_impl',
    None,
    list(cpu_conv.GROUPED_CONV_IMPLS),
    'Grouped-conv strategy (default: per backend).',
  )
  flags.DEFINE_float('width', 1.0, 'Model width multiplier.')
  flags.DEFINE_bool(
    'max_batch',
    False,
    'Also time the train step at the largest batch that fits.',
  )
  flags.DEFINE_float(
    'memory_gib',
    None,
    'Memory for --max_batch (default: the device allocator limit).',
  )
  flags.DEFINE_float(
    'plan_fraction',
    PLAN_FRACTION,
    'Fraction of that memory the --max_batch step may plan (XLA:GPU rematerializes above 95%).',
  )
  flags.DEFINE_float(
    'cpu_peak_gflops',
    None,
    'Peak GFLOP/s of this CPU, to report an MFU on CPU.',
  )


def main(argv):
  del argv
  train.configure_runtime()
  cpu_conv.set_grouped_conv_impl(FLAGS.grouped_conv_impl)
  device = jax.devices()[0]
  dtype_name = FLAGS.dtype
  dtype = DTYPES[dtype_name]
  cpu_peak = FLAGS.cpu_peak_gflops * 1e9 if FLAGS.cpu_peak_gflops else None
  peak = device_peak_flops(device, dtype_name, cpu_peak)
  logging.info(
    'Device: %s (%s), %d devices; grouped conv: %s',
    device.device_kind,
    device.platform,
    jax.device_count(),
    cpu_conv.default_grouped_conv_impl(),
  )
  print(
    f'device {device.device_kind} ({device.platform}), dtype {dtype_name}, grouped conv '
    f'{cpu_conv.default_grouped_conv_impl()}, peak '
    f'{"unknown" if peak is None else f"{peak / 1e12:.1f} TFLOP/s"}'
  )

  if not FLAGS.train and FLAGS.compare_bn:
    raise app.UsageError(
      '--compare_bn compares training steps: it needs --train.'
    )
  names = [FLAGS.model]
  if FLAGS.compare_bn:
    bn_name = bn_variant(FLAGS.model)
    if bn_name is None:
      print(
        f'BatchNorm variant {FLAGS.model}_bn is not registered: skipping the '
        f'WS-vs-BN comparison.'
      )
    else:
      names.append(bn_name)
  kwargs = dict(width=FLAGS.width) if FLAGS.width != 1.0 else {}
  train_times = {}
  # The timed loop and batch, the same for every model and step timed.
  timed = dict(steps=FLAGS.steps, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
  loop = dict(batch_size=FLAGS.batch_size, dtype=dtype, **timed)
  for name in names:
    model = nfnets.create_model(name, num_classes=1000, **kwargs)
    train_size = FLAGS.image_size or model.train_imsize
    eval_size = FLAGS.eval_image_size or model.test_imsize
    print(
      f'{name}: {counting.count_params(model.param_shapes(train_size)) / 1e6:.2f}M '
      f'params, {counting.count_model_macs(model, train_size) / 1e9:.2f} GMACs at '
      f'{train_size}px'
    )
    if FLAGS.train:
      timing = time_train_step(model, image_size=train_size, **loop)
      train_times[name] = timing.seconds_per_step
      print(
        name, report(timing, train_flops_per_image(model, train_size), peak)
      )
      mem, what = peak_memory_bytes(device)
      # Host RSS is a process-wide high-water mark: the first model's figure is its own.
      print(
        f'{name} peak memory after the train step ({what}, process high-water '
        f'mark): {mem / 2**30:.2f} GiB'
      )
    if FLAGS.eval:
      timing = time_eval_step(model, image_size=eval_size, **loop)
      print(name, report(timing, eval_flops_per_image(model, eval_size), peak))
  if FLAGS.max_batch:
    _report_largest_batch(
      nfnets.create_model(names[0], num_classes=1000, **kwargs),
      device,
      dtype,
      peak,
      timed,
    )
  if len(train_times) == 2:
    ws, bn = (train_times[n] for n in names)
    print(
      f'train step time {names[0]} / {names[1]}: {ws / bn:.3f} '
      f'({1e3 * ws:.1f} vs {1e3 * bn:.1f} ms; paper on TPU: 73.3 vs 111.7 ms = 0.656)'
    )


def _report_largest_batch(
  model, device: jax.Device, dtype: Any, peak: float | None, timed: dict
) -> None:
  """Prints the memory fit and the train-step timing at the largest batch that fits.

  ``timed`` holds the timed loop's steps, warm-up and repeats.
  """
  memory = (
    FLAGS.memory_gib * 2**30
    if FLAGS.memory_gib
    else device_memory_bytes(device)
  )
  if memory is None:
    raise app.UsageError(
      f'--max_batch: {device.platform} reports no memory limit; '
      f'pass --memory_gib.'
    )
  train_size = FLAGS.image_size or model.train_imsize
  fit, planned, timing = time_largest_batch(
    model,
    image_size=train_size,
    dtype=dtype,
    memory_bytes=memory,
    plan_fraction=FLAGS.plan_fraction,
    **timed,
  )
  # The batch that ran can be below the plan's if the plan's batch ran out of memory.
  print(
    f'{model.name} memory plan at {train_size}px: {fit.fixed_bytes / 2**30:.2f} GiB fixed '
    f'+ {fit.bytes_per_image / 2**20:.1f} MiB per image; {FLAGS.plan_fraction:.0%} of '
    f'{memory / 2**30:.1f} GiB available -> planned {planned}, largest batch '
    f'{timing.batch_size}'
  )
  print(
    model.name,
    'largest',
    report(timing, train_flops_per_image(model, train_size), peak),
  )
  mem, what = peak_memory_bytes(device)
  print(
    f'{model.name} peak memory after the largest batch ({what}): {mem / 2**30:.2f} GiB'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
