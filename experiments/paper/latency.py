r"""NFNet paper Table 3 (training latency) and Figure 1 from our own code.

Times the full training step that the trainer runs (``train.make_train_step``
through ``benchmarks.train_step``: forward, backward, AGC where the recipe has
it, SGD with Nesterov momentum and weight decay, the EMA of the weights) for
each model at its own training resolution and a given per-device batch, on
synthetic batches already on the device, as the paper measured (median of a
run, data on device). Prints our milliseconds per step next to the paper's
TPUv3 and V100 figures and the EfficientNet-B7 / NFNet-F1 ratio behind the
paper's "8.7x faster"; writes a CSV and Figure 1 (published ImageNet top-1
against our measured latency).

  python -m experiments.paper.latency --models=nfnet_f1,efficientnet_b7 \
      --batch_size=2 --steps=3 --out=lat.csv --plot=fig1.png
  python -m experiments.paper.latency --dtype=bfloat16        # GPU/TPU, batch 32

The paper's figures are accelerator figures (32 TPUv3 cores or one V100, batch
32 per device, bf16/fp16); on a CPU the batch defaults to 2 and only the ratios
between models are comparable.
"""

import csv
import dataclasses
import os
import re
import subprocess

import jax
import jax.numpy as jnp
from absl import app, flags, logging

import nfnets
from benchmarks import train_step as bench

# Paper Table 3: (ms per step on TPUv3, on V100, ImageNet top-1). Batch 32 per
# device; '-' in the paper is None here. EfficientNet top-1 with RandAugment.
PAPER_TABLE3: dict[str, tuple[float, float | None, float]] = {
  'resnet_v1_50': (41.6, 35.3, 78.6),
  'efficientnet_b0': (51.1, 44.8, 77.1),
  'nfnet_f0': (73.3, 56.7, 83.6),
  'efficientnet_b3': (129.5, 116.6, 81.6),
  'nfnet_f1': (158.5, 133.9, 84.7),
  'efficientnet_b4': (245.9, 221.6, 82.9),
  'nfnet_f2': (295.8, 226.3, 85.1),
  'efficientnet_b5': (450.5, 458.9, 83.7),
  'nfnet_f3': (532.2, 524.5, 85.7),
  'efficientnet_b6': (775.7, 868.2, 84.0),
  'nfnet_f4': (1033.3, 1190.6, 85.9),
  'efficientnet_b7': (1397.0, 1753.3, 84.7),
  'nfnet_f5': (1398.5, 2177.1, 86.0),
}

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list(
    'models',
    list(PAPER_TABLE3),
    'Registered model names to time (default: the rows of Table 3).',
  )
  flags.DEFINE_integer(
    'batch_size',
    None,
    'Images per device per step (default: 32 as the paper; 2 on CPU).',
  )
  flags.DEFINE_integer('steps', 5, 'Timed steps; the median is reported.')
  flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.')
  flags.DEFINE_enum('dtype', 'float32', list(bench.DTYPES), 'Activation dtype.')
  flags.DEFINE_string(
    'timm_python',
    None,
    "A Python with torch and timm: also time timm's version of each model "
    '(benchmarks/timm_peer.py, same batch, resolution and recipe) in this run.',
  )
  flags.DEFINE_string('out', None, 'Write the table as CSV here.')
  flags.DEFINE_string('plot', None, 'Write Figure 1 as PNG here.')


@dataclasses.dataclass
class Row:
  model: str
  train_px: int
  batch_size: int
  ms_per_step: float
  images_per_second: float
  mfu: float | None
  compile_seconds: float
  paper_tpuv3_ms: float | None
  paper_v100_ms: float | None
  paper_top1: float | None
  timm_ms_per_step: float | None = None


def recipe_config(model: nfnets.Model, dtype):
  """The trainer's config for ``model``: the NFNet recipe (AGC 0.01 on all but
  the classifier) for normalizer-free models, no AGC for BatchNorm models
  (EfficientNet and the ResNet baseline were trained without it)."""
  config = bench.step_config(dtype)
  state_free = not jax.tree_util.tree_leaves(
    jax.eval_shape(
      model.init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )[1]
  )
  if not state_free:
    config.optimizer.clipping = 0.0
  return config


def time_model(name: str, batch_size: int, dtype, steps: int, warmup: int):
  model = nfnets.create_model(name)
  if model.train_imsize is None:
    raise ValueError(f'{name} has no train resolution; pick another model.')
  image_size = model.train_imsize
  logging.info('%s: compiling the train step at %d px.', name, image_size)
  timing = bench.time_train_step(
    model,
    batch_size=batch_size,
    image_size=image_size,
    dtype=dtype,
    steps=steps,
    warmup=warmup,
    config=recipe_config(model, dtype),
  )
  device = jax.devices()[0]
  peak = bench.device_peak_flops(device, jnp.dtype(dtype).name)
  flops = bench.train_flops_per_image(model, image_size)
  mfu = flops * timing.images_per_second / peak if peak else None
  tpu, v100, top1 = PAPER_TABLE3.get(name, (None, None, None))
  return Row(
    model=name,
    train_px=image_size,
    batch_size=batch_size,
    ms_per_step=1e3 * timing.seconds_per_step,
    images_per_second=timing.images_per_second,
    mfu=mfu,
    compile_seconds=timing.compile_seconds,
    paper_tpuv3_ms=tpu,
    paper_v100_ms=v100,
    paper_top1=top1,
  )


def timm_name(name: str) -> str | None:
  """timm's model of the same architecture and numerics, if it has one."""
  if name.startswith('nfnet_f') and not name.endswith(('_plus', '_bn')):
    return 'dm_' + name
  if name.startswith('efficientnet_b'):
    return 'tf_' + name
  return None


def time_timm(python: str, row: Row) -> float | None:
  """timm's training step for ``row``'s model, in ms (a subprocess)."""
  name = timm_name(row.model)
  if name is None:
    return None
  script = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    'benchmarks',
    'timm_peer.py',
  )
  cmd = [
    python,
    script,
    f'--model={name}',
    f'--batch_size={row.batch_size}',
    f'--image_size={row.train_px}',
    f'--steps={FLAGS.steps}',
    f'--warmup={FLAGS.warmup}',
    '--no_eval',
    f'--dtype={FLAGS.dtype}',
  ]
  if jax.devices()[0].platform == 'gpu':
    cmd += ['--device=cuda', '--channels_last']
  if row.model.startswith('efficientnet_'):
    cmd.append('--no_agc')
  logging.info('Running %s', ' '.join(cmd))
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  match = re.search(r'timm train .* ([0-9.]+) ms/step', out)
  if match is None:
    raise RuntimeError(f'No step time in timm_peer output:\n{out}')
  return float(match.group(1))


def _fmt(x, spec):
  return '-' if x is None else format(x, spec)


def format_table(rows: list[Row]) -> str:
  head = (
    f'{"model":<18}{"px":>5}{"batch":>6}{"ms/step":>10}{"img/s":>9}'
    f'{"MFU":>7}{"paper TPUv3":>13}{"paper V100":>12}{"top-1":>7}'
    f'{"timm ms":>10}'
  )
  lines = [head]
  for r in rows:
    lines.append(
      f'{r.model:<18}{r.train_px:>5}{r.batch_size:>6}{r.ms_per_step:>10.1f}'
      f'{r.images_per_second:>9.2f}'
      f'{_fmt(r.mfu and 100 * r.mfu, ".1f"):>7}'
      f'{_fmt(r.paper_tpuv3_ms, ".1f"):>13}{_fmt(r.paper_v100_ms, ".1f"):>12}'
      f'{_fmt(r.paper_top1, ".1f"):>7}'
      f'{_fmt(r.timm_ms_per_step, ".1f"):>10}'
    )
  return '\n'.join(lines)


def ratio_line(rows: list[Row], slow='efficientnet_b7', fast='nfnet_f1'):
  """EffNet-B7 / NFNet-F1 step-time ratio next to the paper's, or None."""
  by_name = {r.model: r for r in rows}
  if slow not in by_name or fast not in by_name:
    return None
  ours = by_name[slow].ms_per_step / by_name[fast].ms_per_step
  tpu = PAPER_TABLE3[slow][0] / PAPER_TABLE3[fast][0]
  v100 = PAPER_TABLE3[slow][1] / PAPER_TABLE3[fast][1]
  line = (
    f'{slow} / {fast} step time: ours {ours:.2f}x '
    f'(paper: {tpu:.1f}x TPUv3, {v100:.1f}x V100)'
  )
  a, b = by_name[slow].timm_ms_per_step, by_name[fast].timm_ms_per_step
  if a and b:
    line += (
      f'; timm {a / b:.2f}x; ours / timm per step: {slow} '
      f'{by_name[slow].ms_per_step / a:.2f}x, {fast} '
      f'{by_name[fast].ms_per_step / b:.2f}x'
    )
  return line


def write_csv(path: str, rows: list[Row]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(
      f, fieldnames=[x.name for x in dataclasses.fields(Row)]
    )
    writer.writeheader()
    for r in rows:
      writer.writerow(dataclasses.asdict(r))


def plot_figure1(path: str, rows: list[Row], device: str) -> None:
  """Published top-1 against our measured latency; NFNets and EfficientNets as
  two lines on a log x axis (the paper's Figure 1 uses TPUv3 latency)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for prefix, label, style in (
    ('nfnet_', 'NFNet', 'o-'),
    ('efficientnet_', 'EfficientNet', 's-'),
  ):
    pts = sorted(
      (r.ms_per_step, r.paper_top1, r.model)
      for r in rows
      if r.model.startswith(prefix) and r.paper_top1 is not None
    )
    if not pts:
      continue
    xs, ys, names = zip(*pts)
    ax.plot(xs, ys, style, label=label)
    for x, y, n in pts:
      ax.annotate(
        n.split('_')[-1].upper(),
        (x, y),
        textcoords='offset points',
        xytext=(4, -10),
        fontsize=8,
      )
  ax.set_xscale('log')
  ax.set_xlabel(f'Training latency, ms per step (ours, {device})')
  ax.set_ylabel('ImageNet top-1, % (published)')
  ax.set_title('NFNet paper Figure 1, latency measured with nfnets')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  batch_size = FLAGS.batch_size or (2 if on_cpu else 32)
  if on_cpu:
    print(
      f"Note: running on CPU at batch {batch_size}. The paper's figures are "
      'accelerator figures (TPUv3 / V100, batch 32 per device); compare the '
      'ratios between models, not the milliseconds.',
      flush=True,
    )
  dtype = bench.DTYPES[FLAGS.dtype]
  rows = []
  for name in FLAGS.models:
    rows.append(time_model(name, batch_size, dtype, FLAGS.steps, FLAGS.warmup))
    if FLAGS.timm_python:
      rows[-1].timm_ms_per_step = time_timm(FLAGS.timm_python, rows[-1])
    print(
      f'{name}: {rows[-1].ms_per_step:.1f} ms/step '
      f'(compiled in {rows[-1].compile_seconds:.0f} s)',
      flush=True,
    )
  where = f'{device.device_kind}, {FLAGS.dtype}'
  print(f'\nTraining step latency on {where}, batch {batch_size} per device:')
  print(format_table(rows))
  line = ratio_line(rows)
  if line:
    print(line)
  if FLAGS.out:
    write_csv(FLAGS.out, rows)
    print(f'Wrote {FLAGS.out}')
  if FLAGS.plot:
    plot_figure1(FLAGS.plot, rows, where)
    print(f'Wrote {FLAGS.plot}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
