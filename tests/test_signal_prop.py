"""NF-ResNet paper Figure 1, asserted: the numbers the plot script draws, at a small scale.

ResNet-26 layout (2 blocks per stage) at half width, 64 px: stage 1 runs at 16x16, where SAME
padding barely shrinks a 3x3 conv's output variance, so the NF-ResNet's stream there follows
the closed form 1 + k alpha^2 closely; later (smaller) stages are checked loosely.
"""

import numpy as np
import pytest

from experiments.paper import signal_prop as signal_prop_plot
from nfnets import signal_prop

DEPTHS = (2, 2, 2, 2)


@pytest.fixture(scope='module')
def results():
  return signal_prop.measure_figure1(
    'ResNet26', width=0.5, resolution=64, batch_size=8
  )


def test_nf_resnet_keeps_expected_variance_and_zero_mean(results):
  nf = results['NF-ResNet']
  expected = signal_prop.nf_expected_variance(DEPTHS)  # [1.04, 1.08] per stage
  np.testing.assert_allclose(nf['avg_var'][1:3], expected[:2], rtol=0.05)
  # Every block stays near unit variance: no growth across the 8 blocks.
  assert np.all((nf['avg_var'][1:] > 0.6) & (nf['avg_var'][1:] < 1.3))
  # Weight standardization removes the mean shift the ReLU introduces.
  assert np.all(nf['avg_sq_mean'][1:] < 0.05)
  # Residual branches keep roughly unit variance.
  assert np.all((nf['res_avg_var'] > 0.3) & (nf['res_avg_var'] < 1.5))


def test_unnormalized_resnet_grows(results):
  un = results['Unnormalized ResNet']
  assert np.all(np.diff(un['avg_var']) > 0)  # grows at every block
  assert un['avg_var'][-1] > 50 * un['avg_var'][1]
  assert un['avg_sq_mean'][-1] > 50 * un['avg_sq_mean'][1]
  nf = results['NF-ResNet']
  assert un['avg_var'][-1] > 50 * nf['avg_var'][-1]


def test_batchnorm_resnet_grows_within_stages_and_resets(results):
  bn = results['BN-ReLU-ResNet']
  var = bn['avg_var'][1:]
  # Each BN'd branch adds about the same variance, so within a stage the stream grows
  # linearly, and each stage's projection shortcut (a BN'd input) resets it.
  for stage in range(4):
    first, second = var[2 * stage], var[2 * stage + 1]
    assert second > first + 0.4
  assert np.all(
    var[2::2] < var[1:-1:2]
  )  # transitions reset below the previous block
  assert np.all(bn['res_avg_var'] < 1.0)


def test_plot_script_writes_png_and_table(results, tmp_path):
  path = tmp_path / 'fig1.png'
  signal_prop_plot.plot(results, 'test', str(path))
  assert (
    path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    and path.stat().st_size > 10_000
  )
  table = signal_prop_plot.format_table(results)
  assert len(table.splitlines()) == 1 + 9  # header + stem + 8 blocks
