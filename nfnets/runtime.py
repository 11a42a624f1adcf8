"""Process settings for running NFNets on a CPU: ``configure_cpu()``.

Call :func:`configure_cpu` once, first thing, in any program that trains or
evaluates on a CPU (the project's entry points do; a user's own training loop
should too)::

  import nfnets
  from nfnets import runtime

  print(runtime.configure_cpu())  # before the first JAX computation
  model = nfnets.create_model('nfnet_f0')
  ...

What it fixes: XLA:CPU allocates each execution's temporary buffer anew (1.22
GiB for NFNet-F0's training step at batch 8). With JAX's default asynchronous
CPU dispatch it does so on a worker thread, and glibc serves a request that
large from a thread's arena only by ``mmap``, unmapping it on ``free``: every
step faults the whole buffer in again, 4 KiB at a time (320,000 page faults per
F0 step, about 10% of it on a 2-core Xeon). Running CPU computations inline on
the calling thread puts the allocation in glibc's main arena, where ``mallopt``
can keep it: no ``mmap`` for large blocks and no trimming of the heap top, so
the next step reuses the same pages.

Only the main arena's settings change, and only when the default backend is the
CPU. The CPU dispatch setting is read when JAX creates its CPU client, so
:func:`configure_cpu` must run before the first JAX computation (in a
multi-process run ``jax.distributed.initialize()`` has started the backend
before it, and it then says that it applied nothing); it changes nothing on a
GPU or TPU, whose steps don't run on the CPU client. The cost: the main thread's
heap keeps its peak mapped until the process exits, and Python does not overlap
the next step's dispatch with the current step (it has no other work to overlap
on CPU). docs/performance.md has the measured effect on a plain
user loop.
"""

import ctypes
import os

import jax
from jax._src import (
  xla_bridge,
)  # JAX has no public way to ask whether a backend has started.

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
  try:
    if not os.confstr('CS_GNU_LIBC_VERSION'):
      return None
  except (ValueError, OSError):
    return None
  libc = ctypes.CDLL(None)
  return libc if hasattr(libc, 'mallopt') else None


def configure_cpu(keep_step_buffers: bool = True) -> str:
  """Applies the settings above where they apply; returns a line for the logs.

  Call before any JAX computation. ``keep_step_buffers=False`` changes nothing
  (and says so), for measuring the defaults.
  """
  if not keep_step_buffers:
    return 'host step buffers: JAX and glibc defaults (keep_step_buffers=False)'
  if xla_bridge.backends_are_initialized():
    # Too late for the dispatch setting (e.g. after jax.distributed.initialize() queried
    # the devices); without it the buffer stays in a thread's arena, out of mallopt's reach.
    return 'host step buffers: JAX and glibc defaults (a JAX backend had already started)'
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  if jax.default_backend() != 'cpu':
    return f'host step buffers: not needed on {jax.default_backend()}'
  libc = _glibc()
  if libc is None:
    return (
      'host step buffers: CPU steps run inline; not glibc, allocator left as is'
    )
  # -1 becomes SIZE_MAX in glibc: never trim the heap top.
  applied = [libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, -1)]
  if not all(applied):
    raise RuntimeError(f'glibc refused the mallopt settings: {applied}')
  return (
    'host step buffers: CPU steps run inline, and the main heap keeps freed memory '
    'mapped (no mmap, no trim)'
  )
