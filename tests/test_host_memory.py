"""nfnets/runtime.py: XLA:CPU's temporary buffer stays mapped from one call to the next.

Each case runs in a fresh process: the settings are process-wide, and JAX reads the dispatch
setting when it creates its CPU client.
"""

import pathlib
import statistics
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]

# A jitted function whose temporary buffer (the cumulative sum and its reverse) is far above
# glibc's mmap threshold; prints the page faults of each of seven calls as a fraction of that
# buffer's pages, then what a call made once JAX is running says.
_SCRIPT = """
import resource, sys
import jax, jax.numpy as jnp
from nfnets import runtime
print('status:', runtime.configure_cpu(sys.argv[1] == 'keep'))

@jax.jit
def f(x):
    y = jnp.cumsum(x * 2.0)
    return jnp.sum(y * y[::-1])

x = jnp.ones((16 * 2**20,), jnp.float32)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
assert temp > 128 * 2**20, temp
for _ in range(2):
    f(x).block_until_ready()
fractions = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    fractions.append(faults * resource.getpagesize() / temp)
print('fractions:', ' '.join(f'{v:.4f}' for v in fractions))
print('late:', runtime.configure_cpu(True))
"""


def _fault_fraction(mode: str) -> tuple[str, float, str]:
  """``(status, median of faults per call / buffer pages, status of a call once running)``.

  The median, because one call in three once faulted a buffer's worth of pages on the CI
  machine and never here (150 calls, some pinned to one busy core); the cause is outside
  what this test checks. A broken setting faults the buffer in on every call.
  """
  out = subprocess.run(
    [sys.executable, '-c', _SCRIPT, mode],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
    env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin'},
  )
  lines = dict(
    line.split(': ', 1)
    for line in out.stdout.strip().splitlines()
    if line.startswith(('status: ', 'fractions: ', 'late: '))
  )
  fractions = [float(v) for v in lines['fractions'].split()]
  return lines['status'], statistics.median(fractions), lines['late']


def _transparent_huge_pages_always() -> bool:
  path = pathlib.Path('/sys/kernel/mm/transparent_hugepage/enabled')
  return path.exists() and '[always]' in path.read_text()


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc allocator behaviour')
def test_step_buffer_is_not_faulted_in_again_once_kept_mapped():
  status, kept, _ = _fault_fraction('keep')
  assert 'CPU steps run inline' in status
  assert kept < 0.05  # a few stray pages, not the buffer, on a typical call
  status, default, late = _fault_fraction('default')
  assert 'defaults' in status
  # Once a backend runs, the dispatch setting can no longer apply, and the log says so.
  assert 'had already started' in late
  if not _transparent_huge_pages_always():
    # The control: with JAX's and glibc's defaults every call faults the buffer in again.
    assert default > 0.5
