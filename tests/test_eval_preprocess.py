"""Eval crops against an independent PIL + NumPy implementation of the official recipe.

'resize_crop_32': bicubic resize to (S + 32) square, then the centred S x S window.
'crop_resize': the largest centred square leaving 32 px (scaled) of padding, resized to S.
The images have a distinct patch at the centre and different colours in each corner, so a
crop taken anywhere but the centre fails by hundreds of grey levels.
"""

import numpy as np
import pytest
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
