r"""timm's ``dm_nfnet_f0`` in PyTorch: the peer that experiments/benchmark.py is measured against.

Times the same work as our benchmark: a full training step (forward, backward, timm's
adaptive gradient clipping at 0.01, SGD with Nesterov momentum 0.9 and weight decay 2e-5, an EMA
of the weights) at batch 8 and 192 px, and the eval forward (no_grad, eval mode) at 256 px, on
random inputs, after warm-up steps. Needs torch and timm, so it runs in its own environment,
not the project's venv:

  python3.11 -m venv /work/torchenv && /work/torchenv/bin/pip install torch timm
  /work/torchenv/bin/python scripts/benchmark_timm.py --batch_size=8 --image_size=192

Prints one line per measurement, ``timm <train|eval> ... img/s``, plus peak host memory.
"""

import argparse
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
    parser.add_argument('--steps', type=int, default=5, help='Timed steps per repeat.')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--no_eval', action='store_true')
    parser.add_argument('--no_train', action='store_true')
    return parser.parse_args()


def _median_step_seconds(fn, steps: int, warmup: int, repeats: int
                         ) -> tuple[float, list, float]:
    """Median wall seconds per step, the per-repeat list, and median process CPU s per step."""
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
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
    model = timm.create_model(args.model, pretrained=False, num_classes=1000)
    print(f'torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, '
          f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params')

    if not args.no_train:
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        opt = torch.optim.SGD([{'params': decay, 'weight_decay': 2e-5},
                               {'params': no_decay, 'weight_decay': 0.0}],
                              lr=0.1 * args.batch_size / 256, momentum=0.9, nesterov=True)
        ema = ModelEmaV3(model, decay=0.99999)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        labels = torch.randint(0, 1000, (args.batch_size,))
        head = model.get_classifier()
        clipped = [p for p in model.parameters()
                   if all(p is not q for q in head.parameters())]

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            adaptive_clip_grad(clipped, clip_factor=0.01, eps=1e-3)
            opt.step()
            ema.update(model)

        seconds, times, cpu = _median_step_seconds(train_step, args.steps, args.warmup,
                                                    args.repeats)
        print(f'timm train batch {args.batch_size} at {args.image_size}px: '
              f'{args.batch_size / seconds:.3f} img/s, {1e3 * seconds:.1f} ms/step, '
              f'CPU {cpu:.2f} s/step '
              f'(repeats: {", ".join(f"{1e3 * t:.0f}" for t in times)} ms)')

    if not args.no_eval:
        model.eval()
        images = torch.randn(args.batch_size, 3, args.eval_image_size, args.eval_image_size)

        def eval_step():
            with torch.no_grad():
                model(images)

        seconds, times, cpu = _median_step_seconds(eval_step, args.steps, args.warmup,
                                                   args.repeats)
        print(f'timm eval  batch {args.batch_size} at {args.eval_image_size}px: '
              f'{args.batch_size / seconds:.3f} img/s, {1e3 * seconds:.1f} ms/step, '
              f'CPU {cpu:.2f} s/step '
              f'(repeats: {", ".join(f"{1e3 * t:.0f}" for t in times)} ms)')

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f'timm peak host RSS: {peak:.2f} GiB')


if __name__ == '__main__':
    main()
