"""RandAugment mode='official' against the official autoaugment.py's own outputs.

The fixture was written by tests/fixtures/make_official_augment_fixture.py, which runs the
official file (core-TF stand-ins for tensorflow-addons) with recorded random draws.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from data import augment  # noqa: E402

_FIXTURE = os.path.join(
  os.path.dirname(__file__), 'fixtures', 'official_augment.npz'
)
SEED = tf.constant([5, 6], tf.int64)


def _fixture():
  with np.load(_FIXTURE) as f:
    return {k: f[k] for k in f.files}


FIXTURE = _fixture()
CASES = list(
  zip(
    FIXTURE['case_size'].tolist(),
    FIXTURE['case_magnitude'].tolist(),
    FIXTURE['case_op'].tolist(),
    FIXTURE['case_sign'].tolist(),
  )
)


def test_fixture_covers_every_official_op_size_and_magnitude():
  assert set(FIXTURE['case_op'].tolist()) == set(augment.OFFICIAL_OPS)
  assert len(augment.OFFICIAL_OPS) == 16
  assert set(FIXTURE['case_magnitude'].tolist()) == {5, 10, 15}
  assert len(CASES) == 16 * 3 * 2


@pytest.mark.parametrize('size,magnitude,name,sign', CASES)
def test_official_mode_equals_official_op(size, magnitude, name, sign):
  image = FIXTURE[f'input_{size}']
  expected = FIXTURE[f'out_{size}_{magnitude}_{name}']
  out = augment.apply_op_with(
    name,
    tf.constant(image),
    magnitude,
    sign=float(sign),
    centre=FIXTURE['centres'][size],
    mode='official',
  ).numpy()
  if name == 'Sharpness':
    # The official op truncates a float32 convolution with weights w / 13, and
    # so does ours; where the weighted sum is a multiple of 13 the float lands
    # on either side of the integer depending on the convolution's summation
    # order. The fixture was written with TF's Eigen kernels (equal at every
    # pixel under TF_ENABLE_ONEDNN_OPTS=0); oneDNN's differ on those ties only,
    # by one grey level times the blend factor.
    tie = np.zeros(image.shape, bool)
    tie[1:-1, 1:-1] = _smoothing_sum(image) % 13 == 0
    np.testing.assert_array_equal(out[~tie], expected[~tie])
    assert np.abs(out[tie].astype(int) - expected[tie]).max() <= 2
    return
  np.testing.assert_array_equal(out, expected)


def _smoothing_sum(image: np.ndarray) -> np.ndarray:
  """PIL's SMOOTH kernel times 13 (integer weights) over the interior."""
  x = image.astype(np.int64)
  h, w = x.shape[0] - 2, x.shape[1] - 2
  total = 4 * x[1:-1, 1:-1]
  for i in range(3):
    for j in range(3):
      total = total + x[i : i + h, j : j + w]
  return total


def test_solarize_threshold_wraps_like_the_official_uint8_compare():
  """Official int(m/10*256) vs a uint8 image: m=10 inverts all, m=15 solarizes at 128."""
  image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  t = tf.constant(image)
  at10 = augment.apply_op('Solarize', t, 10, SEED, mode='official').numpy()
  np.testing.assert_array_equal(at10, 255 - image)
  at15 = augment.apply_op('Solarize', t, 15, SEED, mode='official').numpy()
  np.testing.assert_array_equal(at15, np.where(image < 128, image, 255 - image))
  # 'corrected' compares in int32: nothing reaches 256 or 384.
  for m in (10, 15):
    np.testing.assert_array_equal(
      augment.apply_op('Solarize', t, m, SEED, mode='corrected'), image
    )


def test_official_argument_mappings_in_closed_form():
  image = np.random.RandomState(0).randint(0, 256, (48, 40, 3)).astype(np.uint8)
  t = tf.constant(image)
  for m, bits in ((5, 2), (10, 4), (15, 6)):
    out = augment.apply_op('Posterize', t, m, SEED, mode='official').numpy()
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    np.testing.assert_array_equal(out, image & mask)
  # Contrast blends toward H*W/256 = 7.5 -> 7, not the mean grey level.
  out = augment.apply_op('Contrast', t, 10, SEED, mode='official').numpy()
  expected = np.clip(7 + 1.9 * (image.astype(np.float32) - 7), 0, 255)
  np.testing.assert_array_equal(out, expected.astype(np.uint8))
  np.testing.assert_array_equal(
    augment.apply_op('Invert', t, 0, SEED, mode='official'), 255 - image
  )


def test_official_translate_and_cutout_are_fixed_pixels_at_any_size():
  image = np.full((300, 300, 3), 7, np.uint8)
  t = tf.constant(image)
  out = augment.apply_op_with(
    'TranslateX', t, 10, sign=1.0, mode='official'
  ).numpy()
  grey = np.all(out == augment.FILL_VALUE, axis=(0, 2))
  assert grey.sum() == 100 and grey[-100:].all()  # content moved 100 px left
  out = augment.apply_op_with(
    'Cutout', t, 15, centre=(150, 150), mode='official'
  ).numpy()
  assert (out[..., 0] == augment.FILL_VALUE).sum() == (2 * 60) ** 2


def test_official_sharpness_truncates_corrected_rounds():
  """One bright pixel: smoothed centre 60/13 = 4.6, its neighbours 12/13 = 0.92."""
  image = np.zeros((5, 5, 3), np.uint8)
  image[2, 2] = 12
  t = tf.constant(image)
  # Factor 0 returns the smoothed copy itself (borders keep the original).
  official = augment.sharpness(t, 0.0, round_smooth=False).numpy()[..., 0]
  corrected = augment.sharpness(t, 0.0).numpy()[..., 0]
  want_official = np.zeros((5, 5), np.uint8)
  want_official[2, 2] = 4
  want_corrected = np.zeros((5, 5), np.uint8)
  want_corrected[1:4, 1:4] = 1
  want_corrected[2, 2] = 5
  np.testing.assert_array_equal(official, want_official)
  np.testing.assert_array_equal(corrected, want_corrected)


def test_unknown_mode_and_op_are_clear_errors():
  t = tf.zeros([8, 8, 3], tf.uint8)
  with pytest.raises(ValueError, match='accepted'):
    augment.apply_op('Rotate', t, 5, SEED, mode='paper')
  with pytest.raises(ValueError, match='accepted'):
    augment.randaugment(tf.zeros([8, 8, 3]), SEED, 1, 5, mode='tpu')
  with pytest.raises(ValueError, match='Invert'):
    augment.apply_op('Invert', t, 5, SEED, mode='corrected')


def test_official_randaugment_draws_all_16_ops():
  """One layer at m=10: a seed range hits Invert and the wrapped Solarize, both of which
  invert a uint8 ramp entirely (about 2 in 16 draws)."""
  ramp = np.arange(64, dtype=np.float32).reshape(8, 8, 1).repeat(3, -1) * 4
  inverted = 0
  for i in range(160):
    out = augment.randaugment(
      tf.constant(ramp), tf.constant([i, 1], tf.int64), 1, 10, mode='official'
    ).numpy()
    inverted += np.array_equal(out, 255 - ramp)
  assert 8 <= inverted <= 35


def test_paper_configs_default_to_the_official_augmentation_and_eval():
  import jax.numpy as jnp

  from experiments import train
  from experiments.configs import common, demo, nfnet

  config = nfnet.get_config('F1')
  assert config.augment_mode == 'official'
  assert config.augment_before_mix is False  # official NFNet: mix first
  assert config.augment == 'cutmix_mixup_randaugment_410'
  assert config.bfloat16 and train.eval_dtype(config) == jnp.float32
  assert common.base_config().augment_before_mix is True  # official default
  assert train.eval_dtype(demo.get_config()) == jnp.float32
  config.eval_dtype = 'bfloat16'
  assert train.eval_dtype(config) == jnp.bfloat16
  config.eval_dtype = None
  assert train.eval_dtype(config) == jnp.bfloat16  # follows bfloat16
  config.eval_dtype = 'float16'
  with pytest.raises(ValueError, match='accepted'):
    train.eval_dtype(config)


@pytest.mark.parametrize('mode', ['official', 'corrected'])
def test_randaugment_draws_the_first_and_last_ops(mode):
  # The op index is uniform over every op, both ends included: the first op's
  # (AutoContrast) and the last op's outputs each appear in about 1 in 16 (15).
  image = np.random.RandomState(0).randint(60, 140, (16, 16, 3))
  image = image.astype(np.float32)
  names = augment.ops(mode)
  first, last = (
    augment.apply_op_with(
      name, tf.constant(image.astype(np.uint8)), 10, mode=mode
    ).numpy()
    for name in (names[0], names[-1])
  )
  assert names[0] == 'AutoContrast'
  hits = {'first': 0, 'last': 0}
  for i in range(200):
    out = augment.randaugment(
      tf.constant(image), tf.constant([i, 2], tf.int64), 1, 10, mode=mode
    ).numpy()
    hits['first'] += np.array_equal(out, first)
    hits['last'] += np.array_equal(out, last)
  assert hits['first'] >= 3 and hits['last'] >= 3, hits
