"""RandAugment ops, MixUp and CutMix against NumPy / PIL oracles."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import PIL.ImageOps  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from data import augment, pipeline  # noqa: E402

SEED = tf.constant([1, 2], tf.int64)


def _image(h=24, w=24, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize('mode', augment.MODES)
@pytest.mark.parametrize('name', augment.OFFICIAL_OPS)
def test_op_keeps_shape_and_dtype(name, mode):
  if name not in augment.ops(mode):
    pytest.skip(f'{name} is not a {mode} op')
  image = tf.constant(_image(20, 28))
  for magnitude in (0, 5, 10, 15):
    out = augment.apply_op(name, image, magnitude, SEED, mode=mode)
    assert out.shape == (20, 28, 3) and out.dtype == tf.uint8


@pytest.mark.parametrize('name', augment.GEOMETRIC_OPS)
def test_geometric_op_at_magnitude_zero_is_identity(name):
  image = _image()
  np.testing.assert_array_equal(
    augment.apply_op(name, tf.constant(image), 0, SEED, mode='corrected'), image
  )
  assert not np.array_equal(
    augment.apply_op(name, tf.constant(image), 10, SEED, mode='corrected'),
    image,
  )


def test_transforms_against_numpy():
  image = _image(16, 16)
  # 90 degrees about the centre of a square image is an exact pixel permutation.
  np.testing.assert_array_equal(
    augment.rotate(tf.constant(image), 90.0), np.rot90(image, 1)
  )
  out = augment.translate_x(tf.constant(image), 3.0).numpy()
  np.testing.assert_array_equal(out[:, 3:], image[:, :-3])
  assert np.all(out[:, :3] == augment.FILL_VALUE)


def test_pixel_ops_against_pil():
  image = _image(32, 32, seed=3)
  pil = PIL.Image.fromarray(image)
  t = tf.constant(image)
  np.testing.assert_array_equal(
    augment.equalize(t), np.asarray(PIL.ImageOps.equalize(pil))
  )
  low_contrast = image[4:12, 4:12] // 2 + 40
  stretched = (
    augment.auto_contrast(tf.constant(low_contrast)).numpy().astype(int)
  )
  expect = np.asarray(
    PIL.ImageOps.autocontrast(PIL.Image.fromarray(low_contrast))
  ).astype(int)
  assert (
    np.abs(stretched - expect).max() <= 1
  )  # float32 vs float64 truncation at .999...
  np.testing.assert_array_equal(
    augment.solarize(t, 128), np.asarray(PIL.ImageOps.solarize(pil, 128))
  )
  np.testing.assert_array_equal(
    augment.posterize(t, 3), np.asarray(PIL.ImageOps.posterize(pil, 3))
  )
  np.testing.assert_array_equal(
    augment.brightness(t, 0.5), (image * 0.5).astype(np.uint8)
  )


def test_randaugment_is_stateless_and_keeps_float_range():
  image = tf.constant(_image().astype(np.float32))
  a = augment.randaugment(image, SEED, 4, 10, mode='corrected')
  b = augment.randaugment(image, SEED, 4, 10, mode='corrected')
  np.testing.assert_array_equal(a, b)
  assert a.shape == (24, 24, 3) and a.dtype == tf.float32
  assert float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255
  outs = {
    augment.randaugment(
      image, tf.constant([i, 0], tf.int64), 2, 10, mode='corrected'
    )
    .numpy()
    .tobytes()
    for i in range(6)
  }
  assert len(outs) > 1


def test_cutmix_ratio_equals_pasted_area_fraction():
  n, h, w = 64, 12, 20
  a = tf.ones([n, h, w, 3])
  b = tf.zeros([n, h, w, 3])
  mixed, ratio = augment.cutmix(a, b, SEED)
  mixed = mixed.numpy()
  area_from_a = mixed[..., 0].mean(axis=(1, 2))
  np.testing.assert_allclose(ratio, area_from_a, atol=1e-6)
  for m in mixed[..., 0]:  # Each pasted region is one axis-aligned rectangle.
    ys, xs = np.nonzero(m)
    if len(ys):
      assert m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
  assert 0.0 < ratio.numpy().mean() < 1.0 and ratio.numpy().std() > 0.05


def test_mixup_is_the_stated_blend_with_beta_ratios():
  rng = np.random.RandomState(0)
  a, b = (
    rng.randn(4000, 2, 2, 3).astype(np.float32),
    rng.randn(4000, 2, 2, 3).astype(np.float32),
  )
  mixed, ratio = augment.mixup(tf.constant(a), tf.constant(b), SEED, alpha=0.2)
  r = ratio.numpy()
  assert np.all((r >= 0) & (r <= 1))
  np.testing.assert_allclose(
    mixed,
    r[:, None, None, None] * a + (1 - r[:, None, None, None]) * b,
    atol=1e-5,
  )
  # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1786.
  assert abs(r.mean() - 0.5) < 0.03 and abs(r.var() - 1 / 5.6) < 0.015


def test_mix_batch_half_and_half_pairs_the_right_labels():
  images = tf.reshape(tf.range(8, dtype=tf.float32), [8, 1, 1, 1]) * tf.ones(
    [8, 4, 4, 3]
  )
  batch = {
    'images': images,
    'labels': tf.range(8),
    'position': tf.range(8, dtype=tf.int64),
  }
  out = augment.mix_batch(batch, SEED, use_mixup=True, use_cutmix=True)
  np.testing.assert_array_equal(out['labels'], [0, 1, 4, 5])
  np.testing.assert_array_equal(out['mix_labels'], [2, 3, 6, 7])
  r = out['ratio'].numpy()
  expect = r * np.array([0, 1, 4, 5]) + (1 - r) * np.array([2, 3, 6, 7])
  np.testing.assert_allclose(
    out['images'].numpy().mean(axis=(1, 2, 3)), expect, atol=1e-5
  )


def test_parse_augment_names():
  assert pipeline.parse_augment('randaugment_405').randaugment == (4, 5)
  spec = pipeline.parse_augment('cutmix_mixup_randaugment_415')
  assert (spec.randaugment, spec.mixup, spec.cutmix) == ((4, 15), True, True)
  assert pipeline.parse_augment('mixup_0.4').mixup_alpha == 0.4
  assert not pipeline.parse_augment(None).mixing
  for bad in ('randaugment', 'mixup_cutmax', 'randaugment_4'):
    with pytest.raises(ValueError, match='accepted'):
      pipeline.parse_augment(bad)
