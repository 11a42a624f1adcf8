"""Eval crops against an independent PIL + NumPy implementation of the official recipe.

'resize_crop_32': bicubic resize to (S + 32) square, then the centred S x S window.
'crop_resize': the largest centred square leaving 32 px (scaled) of padding, resized to S.
The images have a distinct patch at the centre and different colours in each corner, so a
crop taken anywhere but the centre fails by hundreds of grey levels.
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import preprocess

PATCH = (255, 0, 0)
CORNERS = ((0, 0, 255), (0, 255, 0), (255, 255, 0), (255, 0, 255))


def _image(height: int, width: int) -> np.ndarray:
  """Noise, a red 6x6 patch on the exact centre and four differently coloured corners."""
  rng = np.random.RandomState(height * 1000 + width)
  image = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
  cy, cx = height // 2, width // 2
  image[cy - 3 : cy + 3, cx - 3 : cx + 3] = PATCH
  q = max(2, min(height, width) // 5)
  image[:q, :q], image[:q, -q:] = CORNERS[0], CORNERS[1]
  image[-q:, :q], image[-q:, -q:] = CORNERS[2], CORNERS[3]
  return image


def _pil_bicubic(image: np.ndarray, size: int) -> np.ndarray:
  """PIL's bicubic resize in float ('F' mode per channel: no uint8 rounding)."""
  channels = [
    np.asarray(
      Image.fromarray(image[..., c].astype(np.float32), 'F').resize(
        (size, size), Image.BICUBIC
      )
    )
    for c in range(image.shape[-1])
  ]
  return np.clip(np.stack(channels, axis=-1), 0, 255)


def _oracle(image: np.ndarray, size: int, preproc: str, where: str):
  """The reference crop; ``where='corner'`` is the wrong (top-left) window, for contrast."""
  height, width = image.shape[:2]
  if preproc == 'resize_crop_32':
    big = _pil_bicubic(image, size + 32)
    off = 16 if where == 'centre' else 0
    return big[off : off + size, off : off + size]
  crop = int(min(height, width) / (size + 32) * size)
  top, left = (
    ((height - crop + 1) // 2, (width - crop + 1) // 2)
    if where == 'centre'
    else (0, 0)
  )
  return _pil_bicubic(image[top : top + crop, left : left + crop], size)


def _model_input_to_pixels(out: np.ndarray) -> np.ndarray:
  return out * np.array(preprocess.STDDEV_RGB) + np.array(preprocess.MEAN_RGB)


# Upsampling shapes only: PIL antialiases when shrinking and TF's eval resize does not.
@pytest.mark.parametrize('preproc', ['resize_crop_32', 'crop_resize'])
@pytest.mark.parametrize('shape', [(40, 40), (30, 50), (54, 36)])
def test_eval_crop_matches_pil_numpy(preproc, shape):
  image, size = _image(*shape), 24
  got = _model_input_to_pixels(preprocess.eval_image(image, size, preproc))
  want = _oracle(image, size, preproc, 'centre')
  assert got.shape == want.shape == (size, size, 3)
  np.testing.assert_allclose(got, want, atol=0.5)
  # The test tells windows apart: the top-left window is far off.
  assert np.abs(got - _oracle(image, size, preproc, 'corner')).max() > 100


@pytest.mark.parametrize('preproc', ['resize_crop_32', 'crop_resize'])
def test_unscaled_eval_crop_is_the_centre_window_exactly(preproc):
  # At (S + 32) px both recipes reduce to slicing the central S x S pixels (no resampling).
  size = 24
  image = _image(size + 32, size + 32)
  got = _model_input_to_pixels(preprocess.eval_image(image, size, preproc))
  np.testing.assert_allclose(
    got, image[16 : 16 + size, 16 : 16 + size], atol=1e-3
  )
  np.testing.assert_allclose(
    got[9:15, 9:15], np.broadcast_to(PATCH, (6, 6, 3)), atol=1e-3
  )
  assert not np.allclose(got[0, 0], CORNERS[0], atol=30)


def test_eval_batch_pipeline_uses_the_same_centre_crop():
  # The TF graph function the input pipeline maps (not only the NumPy wrapper).
  size = 24
  image = _image(size + 32, size + 32)
  got = preprocess.eval_image_tf(image, size, 'resize_crop_32').numpy()
  np.testing.assert_allclose(
    got, image[16 : 16 + size, 16 : 16 + size], atol=1e-3
  )


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize('preproc', ['resize_crop_32', 'crop_resize', 'resize'])
def test_jpeg_bytes_give_the_decoded_images_result(preproc):
  # The pipeline feeds encoded JPEGs (decoded lazily, cropping inside the
  # decoder); the same JPEG decoded first must give the same input.
  data = _jpeg(_image(40, 56))
  decoded = tf.io.decode_jpeg(data, channels=3)
  from_bytes = preprocess.eval_image_tf(tf.constant(data), 24, preproc)
  from_pixels = preprocess.eval_image_tf(tf.constant(decoded), 24, preproc)
  assert from_bytes.shape == (24, 24, 3)
  np.testing.assert_allclose(from_bytes, from_pixels, atol=1e-3)
  # And it is that image's crop, not a blank or wrong one.
  assert np.abs(from_bytes.numpy() - from_pixels.numpy()[::-1]).max() > 50


def test_resize_is_the_whole_image_resized():
  # Bicubic resize of the whole frame, no crop: PIL's on an upsampled image.
  image = _image(18, 20)
  got = _model_input_to_pixels(preprocess.eval_image(image, 24, 'resize'))
  np.testing.assert_allclose(got, _pil_bicubic(image, 24), atol=0.5)


def test_default_eval_preprocessing_is_the_official_resize_crop_32():
  image = _image(30, 50)
  np.testing.assert_array_equal(
    preprocess.eval_image(image, 24),
    preprocess.eval_image(image, 24, 'resize_crop_32'),
  )
  np.testing.assert_array_equal(
    preprocess.eval_image_tf(tf.constant(image), 24),
    preprocess.eval_image_tf(tf.constant(image), 24, 'resize_crop_32'),
  )


def test_grey_and_rgba_images_are_evaluated_as_rgb():
  rgb = _image(40, 40)
  grey = rgb[..., 0]
  want_grey = preprocess.eval_image(np.repeat(grey[..., None], 3, -1), 24)
  for image in (grey, grey[..., None]):
    got = preprocess.eval_image(image, 24)
    assert got.dtype == np.float32 and got.shape == (24, 24, 3)
    np.testing.assert_array_equal(got, want_grey)
  rgba = np.concatenate([rgb, np.full((40, 40, 1), 7, np.uint8)], -1)
  np.testing.assert_array_equal(
    preprocess.eval_image(rgba, 24), preprocess.eval_image(rgb, 24)
  )
  for shape in ((40, 40, 2), (40, 40, 5), (1, 40, 40, 3), (40,)):
    with pytest.raises(ValueError, match='eval_image expects'):
      preprocess.eval_image(np.zeros(shape, np.uint8), 24)
  with pytest.raises(ValueError, match='uint8'):
    preprocess.eval_image(rgb.astype(np.float32), 24)


@pytest.mark.parametrize(
  'preproc', ['resize_crop_32', 'resize_crop_0.875', 'crop_resize', 'resize']
)
def test_accepted_eval_preprocessings(preproc):
  preprocess.check_eval_preproc(preproc)


@pytest.mark.parametrize(
  'preproc',
  [
    'resize_crop_0',
    'resize_crop_-1',
    'resize_crop_',
    'resize_crop_abc',
    'RESIZE',
    'resize_',
    'crop',
  ],
)
def test_unknown_eval_preprocessing_is_refused(preproc):
  with pytest.raises(ValueError, match='Unknown eval_preproc'):
    preprocess.check_eval_preproc(preproc)


def test_fraction_resize_crop_is_the_central_fraction():
  # 'resize_crop_0.5': resize to S / 0.5, keep the central S x S.
  size = 24
  image = _image(48, 48)
  got = _model_input_to_pixels(
    preprocess.eval_image(image, size, 'resize_crop_0.5')
  )
  np.testing.assert_allclose(got, image[12:36, 12:36], atol=1e-3)


def test_one_pixel_image_crops_to_one_pixel():
  # The centre window never shrinks below one pixel (or grows past the image).
  image = np.full((1, 1, 3), 200, np.uint8)
  got = preprocess.eval_image_tf(tf.constant(image), 8, 'crop_resize')
  np.testing.assert_allclose(got, np.full((8, 8, 3), 200.0), atol=1e-3)


@pytest.mark.parametrize('preproc', ['resize_crop_32', 'crop_resize', 'resize'])
def test_greyscale_jpeg_bytes_give_three_channels(preproc):
  grey = _image(40, 56)[..., 1]
  buffer = io.BytesIO()
  Image.fromarray(grey, 'L').save(buffer, 'JPEG', quality=95)
  out = preprocess.eval_image_tf(tf.constant(buffer.getvalue()), 24, preproc)
  assert out.shape == (24, 24, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_resize_crop_threshold_between_fraction_and_pixels():
  # Up to 1: a fraction of the resized side ('resize_crop_1' = no crop);
  # above 1: pixels of padding ('resize_crop_2': resize to S + 2, drop 1 px).
  size = 24
  image = _image(size + 2, size + 2)
  one = preprocess.eval_image(image, size, 'resize_crop_1')
  np.testing.assert_array_equal(
    one, preprocess.eval_image(image, size, 'resize')
  )
  two = _model_input_to_pixels(
    preprocess.eval_image(image, size, 'resize_crop_2')
  )
  np.testing.assert_allclose(two, image[1 : 1 + size, 1 : 1 + size], atol=1e-3)
