"""The latency table's pieces: recipe per model, the ratio, CSV and Figure 1."""

import csv

import jax.numpy as jnp
import pytest

import nfnets
from experiments.paper import latency


def _row(model, ms, top1):
  return latency.Row(
    model=model,
    train_px=224,
    batch_size=2,
    ms_per_step=ms,
    images_per_second=2e3 / ms,
    mfu=None,
    compile_seconds=1.0,
    paper_tpuv3_ms=latency.PAPER_TABLE3[model][0],
    paper_v100_ms=latency.PAPER_TABLE3[model][1],
    paper_top1=top1,
  )


def test_paper_ratio_is_the_headline():
  # Table 3: 1397.0 / 158.5 = 8.81 on TPUv3, 1753.3 / 133.9 = 13.09 on V100.
  rows = [_row('nfnet_f1', 100.0, 84.7), _row('efficientnet_b7', 450.0, 84.7)]
  line = latency.ratio_line(rows)
  assert 'ours 4.50x' in line
  assert '8.8x TPUv3' in line and '13.1x V100' in line
  assert latency.ratio_line(rows[:1]) is None
  rows[0].timm_ms_per_step, rows[1].timm_ms_per_step = 120.0, 600.0
  line = latency.ratio_line(rows)
  assert 'timm 5.00x' in line
  assert 'efficientnet_b7 0.75x' in line and 'nfnet_f1 0.83x' in line


def test_timm_names():
  assert latency.timm_name('nfnet_f1') == 'dm_nfnet_f1'
  assert latency.timm_name('efficientnet_b7') == 'tf_efficientnet_b7'
  assert latency.timm_name('nfnet_f1_plus') is None
  assert latency.timm_name('nfnet_f0_bn') is None


def test_recipe_uses_agc_only_for_normalizer_free_models():
  nf = latency.recipe_config(nfnets.create_model('nfnet_f0'), jnp.float32)
  bn = latency.recipe_config(nfnets.create_model('nfnet_f0_bn'), jnp.float32)
  assert nf.optimizer.clipping == pytest.approx(0.01)
  assert bn.optimizer.clipping == 0.0


def test_csv_and_figure(tmp_path):
  rows = [
    _row('nfnet_f0', 50.0, 83.6),
    _row('nfnet_f1', 100.0, 84.7),
    _row('efficientnet_b0', 30.0, 77.1),
    _row('efficientnet_b7', 450.0, 84.7),
  ]
  table = latency.format_table(rows)
  assert table.count('\n') == 4 and '1397.0' in table
  latency.write_csv(str(tmp_path / 'lat.csv'), rows)
  with open(tmp_path / 'lat.csv') as f:
    read = list(csv.DictReader(f))
  assert [r['model'] for r in read] == [r.model for r in rows]
  assert float(read[3]['paper_tpuv3_ms']) == 1397.0
  latency.plot_figure1(str(tmp_path / 'fig1.png'), rows, 'cpu')
  assert (tmp_path / 'fig1.png').read_bytes()[:4] == b'\x89PNG'
