r"""timm's ``dm_nfnet_f0`` in PyTorch: the peer that benchmarks/train_step.py is measured against.

Times the same work as our benchmark: a full training step (forward, backward, timm's
adaptive gradient clipping at 0.01, SGD with Nesterov momentum 0.9 and weight decay 2e-5, an EMA
of the weights) at batch 8 and 192 px, and the eval forward (no_grad, eval mode) at 256 px, on
random inputs, after warm-up steps. Needs torch and timm, so it runs in its own environment,
not the project's venv:

  python3.11 -m venv /work/torchenv && /work/torchenv/bin/pip install torch timm
  /work/torchenv/bin/python benchmarks/timm_peer.py --batch_size=8 --image_size=192

On a GPU, ``--device=cuda --dtype=bfloat16 --channels_last`` is timm's usual mixed-precision
setup (autocast, fp32 master weights); the timer then synchronizes the device around each loop.

Prints one line per measurement, ``timm <train|eval> ... img/s``, plus peak memory.
"""

import argparse
import contextlib
import os
import resource
import statistics
import time


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='dm_nfnet_f0')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--image_size', type=int, default=192)
  parser.add_argument('--eval_image_size', type=int, default=256)
  parser.add_argument(
    '--steps', type=int, default=5, help='Timed steps per repeat.'
  )
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--no_eval', action='store_true')
  parser.add_argument('--no_train', action='store_true')
  parser.add_argument(
    '--no_agc',
    action='store_true',
    help="No gradient clipping (the BatchNorm models' recipe, e.g. EfficientNet).",
  )
  parser.add_argument('--device', default='cpu', help='cpu or cuda.')
  parser.add_argument(
    '--dtype',
    default='float32',
    choices=('float32', 'bfloat16'),
    help='bfloat16: autocast activations, float32 weights.',
  )
  parser.add_argument(
    '--channels_last', action='store_true', help='NHWC memory format.'
  )
  return parser.parse_args()


def _median_step_seconds(
  fn, steps: int, warmup: int, repeats: int, sync=lambda: None
) -> tuple[float, list, float]:
  """Median wall seconds per step, the per-repeat list, and median process CPU s per step.

  ``sync`` waits for the device (CUDA runs asynchronously), before and after each loop.
  """
  for _ in range(warmup):
    fn()
  times, cpu_times = [], []
  for _ in range(repeats):
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
      fn()
    sync()
    times.append((time.perf_counter() - start) / steps)
    cpu_times.append((time.process_time() - cpu_start) / steps)
  return statistics.median(times), times, statistics.median(cpu_times)


def main() -> None:
  args = _parse()
  import timm
  import torch
  from timm.utils import ModelEmaV3, adaptive_clip_grad

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device(args.device)
  memory_format = (
    torch.channels_last if args.channels_last else torch.contiguous_format
  )
  model = timm.create_model(args.model, pretrained=False, num_classes=1000)
  model = model.to(device=device, memory_format=memory_format)
  on_cuda = device.type == 'cuda'
  sync = torch.cuda.synchronize if on_cuda else (lambda: None)
  if args.dtype == 'bfloat16':
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
  else:
    autocast = contextlib.nullcontext
  name = torch.cuda.get_device_name() if on_cuda else 'cpu'
  print(
    f'torch {torch.__version__}, timm {timm.__version__}, {name}, {args.dtype}, '
    f'{args.threads} threads, '
    f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params'
  )
  images_like = lambda size: torch.randn(
    args.batch_size, 3, size, size, device=device
  ).contiguous(memory_format=memory_format)

  if not args.no_train:
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
      [
        {'params': decay, 'weight_decay': 2e-5},
        {'params': no_decay, 'weight_decay': 0.0},
      ],
      lr=0.1 * args.batch_size / 256,
      momentum=0.9,
      nesterov=True,
    )
    ema = ModelEmaV3(model, decay=0.99999)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = images_like(args.image_size)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    head = model.get_classifier()
    clipped = [
      p
      for p in model.parameters()
      if all(p is not q for q in head.parameters())
    ]

    def train_step():
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = loss_fn(model(images), labels)
      loss.backward()
      if not args.no_agc:
        adaptive_clip_grad(clipped, clip_factor=0.01, eps=1e-3)
      opt.step()
      ema.update(model)

    seconds, times, cpu = _median_step_seconds(
      train_step, args.steps, args.warmup, args.repeats, sync
    )
    print(
      f'timm train batch {args.batch_size} at {args.image_size}px: '
      f'{args.batch_size / seconds:.3f} img/s, {1e3 * seconds:.1f} ms/step, '
      f'CPU {cpu:.2f} s/step '
      f'(repeats: {", ".join(f"{1e3 * t:.0f}" for t in times)} ms)'
    )

  if not args.no_eval:
    model.eval()
    images = images_like(args.eval_image_size)

    def eval_step():
      with torch.no_grad(), autocast():
        model(images)

    seconds, times, cpu = _median_step_seconds(
      eval_step, args.steps, args.warmup, args.repeats, sync
    )
    print(
      f'timm eval  batch {args.batch_size} at {args.eval_image_size}px: '
      f'{args.batch_size / seconds:.3f} img/s, {1e3 * seconds:.1f} ms/step, '
      f'CPU {cpu:.2f} s/step '
      f'(repeats: {", ".join(f"{1e3 * t:.0f}" for t in times)} ms)'
    )

  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f'timm peak host RSS: {peak:.2f} GiB')
  if on_cuda:
    print(
      f'timm peak device memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB'
    )


if __name__ == '__main__':
  main()
