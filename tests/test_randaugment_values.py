"""Every RandAugment op, through ``apply_op`` at a magnitude, against PIL or NumPy.

Each oracle takes the argument the magnitude should map to (the TPU ``autoaugment.py`` table
that the official NFNet code uses, with the deliberate corrections the module docstring
lists), so these tests pin both the op and its magnitude -> argument map. Geometric ops draw a
random sign; the output must match the oracle for exactly one of +arg and -arg.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

from data import augment  # noqa: E402

SIZE = 40
GREY = (128, 128, 128)


def _apply(name: str, image: np.ndarray, magnitude: float, seed: int = 0):
  """Today's ops (the 'corrected' set); the one place that calls the module under test."""
  out = augment.apply_op(
    name,
    tf.constant(image),
    magnitude,
    tf.constant([seed, 7], tf.int64),
    mode='corrected',
  )
  return out.numpy()


def _noise_image(seed: int = 0) -> np.ndarray:
  """Colourful noise with no pixel equal to the fill grey (Cutout finds its square)."""
  image = np.random.RandomState(seed).randint(0, 256, (SIZE, SIZE, 3))
  image[image == 128] = 127
  return image.astype(np.uint8)


def _block_image(seed: int = 0) -> np.ndarray:
  """4 x 4 px blocks: nearest-neighbour ties between conventions only move block edges."""
  small = np.random.RandomState(seed).randint(0, 256, (SIZE // 4, SIZE // 4, 3))
  small[small == 128] = 127
  return np.repeat(np.repeat(small, 4, 0), 4, 1).astype(np.uint8)


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image)


def _enhance_factor(magnitude: float) -> float:
  return magnitude / 10 * 1.8 + 0.1


# name -> (oracle(image, magnitude) -> expected uint8 array, max abs diff allowed).
# Colour conversions to grey round differently in PIL (integer luma) and TF (float).
_PIXEL_ORACLES = {
  'AutoContrast': (lambda im, m: ImageOps.autocontrast(_pil(im)), 1),
  'Equalize': (lambda im, m: ImageOps.equalize(_pil(im)), 0),
  'Solarize': (lambda im, m: ImageOps.solarize(_pil(im), int(m / 10 * 256)), 0),
  'Posterize': (
    lambda im, m: ImageOps.posterize(_pil(im), max(1, 8 - int(m / 10 * 4))),
    0,
  ),
  'Color': (
    lambda im, m: ImageEnhance.Color(_pil(im)).enhance(_enhance_factor(m)),
    3,
  ),
  'Contrast': (
    lambda im, m: ImageEnhance.Contrast(_pil(im)).enhance(_enhance_factor(m)),
    3,
  ),
  'Brightness': (
    lambda im, m: ImageEnhance.Brightness(_pil(im)).enhance(_enhance_factor(m)),
    1,
  ),
  'Sharpness': (
    lambda im, m: ImageEnhance.Sharpness(_pil(im)).enhance(_enhance_factor(m)),
    1,
  ),
  'SolarizeAdd': (
    lambda im, m: np.where(
      im < 128, np.clip(im.astype(int) + int(m / 10 * 110), 0, 255), im
    ),
    0,
  ),
}


@pytest.mark.parametrize('magnitude', [3, 7, 10])
@pytest.mark.parametrize('name', sorted(_PIXEL_ORACLES))
def test_pixel_op_matches_pil_numpy(name, magnitude):
  oracle, atol = _PIXEL_ORACLES[name]
  image = _noise_image(magnitude)
  if name == 'AutoContrast':  # a narrow range per channel, so the stretch shows
    image = (image // 4 + np.array([30, 90, 150])).astype(np.uint8)
  got = _apply(name, image, magnitude).astype(int)
  want = np.asarray(oracle(image, magnitude)).astype(int)
  assert got.shape == want.shape == image.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  if name not in ('AutoContrast', 'Equalize'):
    # The magnitude matters: a neighbouring magnitude's argument does not fit as well.
    other = np.asarray(oracle(image, magnitude - 3)).astype(int)
    assert np.abs(got - other).max() > atol


def _affine(image: np.ndarray, coeffs) -> np.ndarray:
  """Output pixel (x, y) samples input pixel (a x + b y + c, d x + e y + f), via PIL.

  The coefficients address pixels by index (as TF's projective transform does); PIL's AFFINE
  addresses pixel corners (pixel i spans [i, i + 1)), so the offsets shift by half a pixel.
  """
  a, b, c, d, e, f = coeffs
  coeffs = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
  return np.asarray(
    _pil(image).transform(
      image.shape[1::-1],
      Image.AFFINE,
      coeffs,
      resample=Image.NEAREST,
      fillcolor=GREY,
    )
  )


def _geometric_oracle(name: str, image: np.ndarray, arg: float) -> np.ndarray:
  if name == 'Rotate':  # PIL: counter-clockwise degrees about the image centre.
    return np.asarray(
      _pil(image).rotate(arg, resample=Image.NEAREST, fillcolor=GREY)
    )
  if name == 'ShearX':
    return _affine(image, (1, arg, 0, 0, 1, 0))
  if name == 'ShearY':
    return _affine(image, (1, 0, 0, arg, 1, 0))
  if name == 'TranslateX':
    return _affine(image, (1, 0, -arg, 0, 1, 0))
  return _affine(image, (1, 0, 0, 0, 1, -arg))  # TranslateY


def _geometric_arg(name: str, magnitude: float) -> float:
  frac = magnitude / 10
  return {
    'Rotate': 30 * frac,  # degrees
    'ShearX': 0.3 * frac,
    'ShearY': 0.3 * frac,
    # 0.45 of the side (100 px at 224 px in the original, scaled with the image).
    'TranslateX': 0.45 * SIZE * frac,
    'TranslateY': 0.45 * SIZE * frac,
  }[name]


def _mismatch(a: np.ndarray, b: np.ndarray) -> float:
  """Fraction of pixels that differ in any channel."""
  return float(np.mean(np.any(a != b, axis=-1)))


# Nearest-neighbour conventions (pixel centres vs corners) disagree on a few block edges.
_GEOMETRIC_TOLERANCE = 0.025


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
@pytest.mark.parametrize('magnitude', [5, 10])
@pytest.mark.parametrize('name', augment.GEOMETRIC_OPS)
def test_geometric_op_matches_pil_for_one_sign(name, magnitude, seed):
  image = _block_image(seed)
  got = _apply(name, image, magnitude, seed)
  arg = _geometric_arg(name, magnitude)
  fits = [
    _mismatch(got, _geometric_oracle(name, image, s * arg)) for s in (1, -1)
  ]
  assert min(fits) < _GEOMETRIC_TOLERANCE, fits
  assert max(fits) > 5 * _GEOMETRIC_TOLERANCE, fits
  # The full argument, not a fraction of it.
  for wrong in (0.5 * arg, 0.1 * arg):
    assert (
      min(
        _mismatch(got, _geometric_oracle(name, image, s * wrong))
        for s in (1, -1)
      )
      > 2 * min(fits) + _GEOMETRIC_TOLERANCE
    )


def test_geometric_signs_are_both_drawn():
  image = _block_image(0)
  arg = _geometric_arg('Rotate', 10)
  signs = set()
  for seed in range(12):
    got = _apply('Rotate', image, 10, seed)
    signs.add(
      min(
        (1, -1),
        key=lambda s: _mismatch(
          got, _geometric_oracle('Rotate', image, s * arg)
        ),
      )
    )
  assert signs == {1, -1}


@pytest.mark.parametrize('magnitude', [4, 10])
@pytest.mark.parametrize('seed', [0, 1, 2, 3, 4])
def test_cutout_is_a_grey_square_of_the_mapped_size(magnitude, seed):
  image = _noise_image(seed)
  got = _apply('Cutout', image, magnitude, seed)
  # 40 px at 224 px in the original, scaled with the image: half-side int(m/10 * 40/224 * S).
  pad = int(magnitude / 10 * 40 / 224 * SIZE)
  changed = np.any(got != image, axis=-1)
  assert np.all(got[changed] == 128)
  rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
  assert rows.size and cols.size
  # A full rectangle: every pixel between the extreme changed rows/columns changed.
  assert changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
  assert changed.sum() == rows.size * cols.size
  for lines in (rows, cols):
    # Side 2 * pad, or clipped where the square leaves the image.
    assert lines.size == 2 * pad or (
      lines.size < 2 * pad and (lines[0] == 0 or lines[-1] == SIZE - 1)
    )


def test_cutout_centres_cover_the_image_independently():
  # Uniform over every row and column, y and x drawn from separate streams.
  image = tf.zeros((6, 9, 3), tf.uint8)
  centres = np.array(
    [
      augment.cutout_centre(image, tf.constant([s, 3], tf.int64)).numpy()
      for s in range(150)
    ]
  )
  assert set(centres[:, 0]) == set(range(6))
  assert set(centres[:, 1]) == set(range(9))
  square = tf.zeros((9, 9, 3), tf.uint8)
  diagonal = [
    np.equal(*augment.cutout_centre(square, tf.constant([s, 3], tf.int64)))
    for s in range(40)
  ]
  assert sum(diagonal) < 20  # 1 in 9 expected; the same stream would give 40


def _equalize_cases():
  rng = np.random.RandomState(3)
  no_white = rng.randint(10, 201, (SIZE, SIZE, 3))  # the top level is absent
  constant = np.full((SIZE, SIZE, 3), 77)
  two_levels = np.where(rng.rand(SIZE, SIZE, 3) < 0.9, 60, 180)
  small = rng.randint(0, 256, (16, 16, 3))  # 256 pixels: step near 1
  return [x.astype(np.uint8) for x in (no_white, constant, two_levels, small)]


@pytest.mark.parametrize('case', range(4))
def test_equalize_matches_pil_on_edge_histograms(case):
  image = _equalize_cases()[case]
  want = np.asarray(ImageOps.equalize(_pil(image)))
  np.testing.assert_array_equal(_apply('Equalize', image, 5), want)


def test_posterize_bits_above_magnitude_10():
  image = _noise_image(1)
  # 'corrected': never fewer than 1 bit; 'official': never more than 8.
  for m in (20, 30):
    np.testing.assert_array_equal(
      _apply('Posterize', image, m),
      np.asarray(ImageOps.posterize(_pil(image), 1)),
    )
  out = augment.apply_op_with(
    'Posterize', tf.constant(image), 25, mode='official'
  ).numpy()
  np.testing.assert_array_equal(out, image)


def test_official_contrast_level_clips_at_255():
  # 256 x 256 px: H * W / 256 = 256, clipped to grey level 255.
  image = np.random.RandomState(4).randint(0, 256, (256, 256, 3))
  image = image.astype(np.uint8)
  # Magnitude 2: factor 0.46 (at magnitude 5 the factor is 1, the identity).
  factor = np.float32(2 / 10 * 1.8 + 0.1)
  level = np.float32(255)
  want = np.clip(level + factor * (image.astype(np.float32) - level), 0, 255)
  out = augment.apply_op_with(
    'Contrast', tf.constant(image), 2, mode='official'
  ).numpy()
  np.testing.assert_array_equal(out, want.astype(np.uint8))


def test_default_sign_is_the_official_argument():
  image = _block_image(2)
  for name in ('Rotate', 'ShearX', 'TranslateY'):
    default = augment.apply_op_with(
      name, tf.constant(image), 7, mode='corrected'
    )
    plus = augment.apply_op_with(
      name, tf.constant(image), 7, sign=1.0, mode='corrected'
    )
    np.testing.assert_array_equal(default, plus)


@pytest.mark.parametrize('shape', [(224, 224), (112, 224), (224, 112)])
def test_cutout_half_side_is_40_px_at_224_scaled_by_the_short_side(shape):
  image = np.full(shape + (3,), 7, np.uint8)
  centre = (shape[0] // 2, shape[1] // 2)
  out = augment.apply_op_with(
    'Cutout', tf.constant(image), 10, centre=centre, mode='corrected'
  ).numpy()
  pad = 40 * min(shape) // 224
  grey = np.all(out == 128, axis=-1)
  assert grey.sum() == (2 * pad) ** 2
  assert grey[
    centre[0] - pad : centre[0] + pad, centre[1] - pad : centre[1] + pad
  ].all()


def test_auto_contrast_edge_channels_match_pil():
  # Channel 0 has two adjacent levels (stretched to 0 and 255), channel 1 is
  # constant (unchanged), channel 2 is noise.
  rng = np.random.RandomState(5)
  image = np.stack(
    [
      rng.choice([100, 101], (SIZE, SIZE)),
      np.full((SIZE, SIZE), 90),
      rng.randint(0, 256, (SIZE, SIZE)),
    ],
    axis=-1,
  ).astype(np.uint8)
  want = np.asarray(ImageOps.autocontrast(_pil(image)))
  np.testing.assert_array_equal(_apply('AutoContrast', image, 5), want)


def test_solarize_add_at_magnitude_0_is_the_identity():
  image = _noise_image(6)
  image[:4] = 0
  np.testing.assert_array_equal(_apply('SolarizeAdd', image, 0), image)


def test_values_above_255_saturate_on_small_images_too():
  # TF's float -> uint8 cast wraps on short tensors (256 -> 0) and saturates on
  # vectorised ones, so the clip to 255 must come first everywhere.
  pixel = np.full((1, 1, 3), 200, np.uint8)
  np.testing.assert_array_equal(_apply('Brightness', pixel, 10), 255)
  hot = tf.constant(np.full((1, 1, 3), 300.0, np.float32))
  white = tf.constant(np.full((1, 1, 3), 255.0, np.float32))
  for i in range(8):
    seed = tf.constant([i, 9], tf.int64)
    np.testing.assert_array_equal(
      augment.randaugment(hot, seed, 1, 5, mode='official'),
      augment.randaugment(white, seed, 1, 5, mode='official'),
    )
