"""Per-example image preprocessing shared by every dataset (TensorFlow, host side).

Follows the official NFNet input pipeline: a random-resized crop (area 0.08-1, aspect 3/4-4/3,
min object covered 0.1, centre-crop fallback) with bicubic resize and a random flip for training;
`resize_crop_32` (resize to S+32 square, centre crop S) or `crop_resize` (centre crop with 32 px
of padding, then resize) for evaluation; ImageNet mean/std normalisation.

All randomness is stateless: the caller passes a `[2]` int64 seed per example, so the same
example at the same stream position is preprocessed identically on every run and on resume.
Functions accept either encoded JPEG bytes (decoded lazily, cropping inside the decoder, which is
much faster for ImageNet) or an already-decoded uint8 `[H, W, 3]` image.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

EVAL_PREPROCS = (
  'resize_crop_32',
  'resize_crop_<pixels or fraction>',
  'crop_resize',
  'resize',
)

# Tags that derive independent stateless seeds from one per-example seed.
_CROP_TAG, _FLIP_TAG = 1, 2


def fold_in(seed: tf.Tensor, tag: int) -> tf.Tensor:
  """Derives an independent stateless seed `[2]` from `seed` and an integer tag."""
  return tf.random.experimental.stateless_fold_in(seed, tag)


def get_shape(image: tf.Tensor) -> tf.Tensor:
  """[H, W, C] of JPEG bytes (header only, no decode) or of a decoded image."""
  if image.dtype == tf.string:
    return tf.image.extract_jpeg_shape(image)
  return tf.shape(image)


def crop(image: tf.Tensor, window: Sequence[tf.Tensor]) -> tf.Tensor:
  """Crops [y, x, h, w] out of JPEG bytes (decoding only the window) or a decoded image."""
  if image.dtype == tf.string:
    return tf.image.decode_and_crop_jpeg(image, tf.stack(window), channels=3)
  return tf.image.crop_to_bounding_box(image, *window)


def _center_crop_window(
  shape: tf.Tensor, image_size: int, padding: int = 32
) -> list:
  """Largest centred crop with the output's aspect ratio, leaving `padding` px (scaled) free."""
  height, width = shape[0], shape[1]
  scale = tf.minimum(
    tf.cast(height, tf.float32) / (image_size + padding),
    tf.cast(width, tf.float32) / (image_size + padding),
  )
  crop_size = tf.maximum(tf.cast(scale * image_size, tf.int32), 1)
  offset_h = (height - crop_size + 1) // 2
  offset_w = (width - crop_size + 1) // 2
  return [offset_h, offset_w, crop_size, crop_size]


def random_resized_crop(
  image: tf.Tensor,
  seed: tf.Tensor,
  image_size: int,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
  """Inception-style crop (uint8, unresized); falls back to a centre crop like the official code."""
  shape = get_shape(image)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    seed=fold_in(seed, _CROP_TAG),
    min_object_covered=0.1,
    aspect_ratio_range=aspect_range,
    area_range=area_range,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  failed = tf.reduce_all(tf.equal(shape[:2], tf.stack([height, width])))
  window = tf.cond(
    failed,
    lambda: tf.stack(_center_crop_window(shape, image_size)),
    lambda: tf.stack([offset_y, offset_x, height, width]),
  )
  return crop(image, tf.unstack(window))


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bicubic resize to a square, clipped to [0, 255] (bicubic overshoots), float32."""
  image = tf.image.resize(
    image, [image_size, image_size], tf.image.ResizeMethod.BICUBIC
  )
  return tf.clip_by_value(image, 0.0, 255.0)


def train_image(
  image: tf.Tensor,
  seed: tf.Tensor,
  image_size: int,
  *,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
  flip: bool = True,
) -> tf.Tensor:
  """Train crop + bicubic resize + flip: float32 [S, S, 3] in [0, 255] (not normalised)."""
  image = random_resized_crop(image, seed, image_size, area_range, aspect_range)
  if flip:
    image = tf.image.stateless_random_flip_left_right(
      image, fold_in(seed, _FLIP_TAG)
    )
  image = resize(image, image_size)
  image.set_shape([image_size, image_size, 3])
  return image


def check_eval_preproc(eval_preproc: str) -> None:
  """Raises a ValueError naming the accepted values for an unknown eval preprocessing."""
  ok = eval_preproc in ('crop_resize', 'resize')
  if eval_preproc.startswith('resize_crop_'):
    try:
      ok = float(eval_preproc[len('resize_crop_') :]) > 0
    except ValueError:
      ok = False
  if not ok:
    raise ValueError(
      f'Unknown eval_preproc {eval_preproc!r}; accepted: {EVAL_PREPROCS}.'
    )


def eval_image_tf(
  image: tf.Tensor, image_size: int, eval_preproc: str = 'resize_crop_32'
) -> tf.Tensor:
  """Deterministic eval preprocessing: float32 [S, S, 3] in [0, 255] (not normalised)."""
  check_eval_preproc(eval_preproc)
  if eval_preproc == 'crop_resize':
    image = crop(image, _center_crop_window(get_shape(image), image_size))
    image = resize(image, image_size)
  elif eval_preproc == 'resize':
    if image.dtype == tf.string:
      image = tf.image.decode_jpeg(image, channels=3)
    image = resize(image, image_size)
  else:  # resize_crop_{pct}: > 1 means pixels of padding (official 'resize_crop_32').
    pct = float(eval_preproc[len('resize_crop_') :])
    scaled = int(image_size + pct) if pct > 1.0 else int(image_size / pct)
    if image.dtype == tf.string:
      image = tf.image.decode_jpeg(image, channels=3)
    image = resize(image, scaled)
    offset = (scaled - image_size + 1) // 2
    image = image[offset : offset + image_size, offset : offset + image_size]
  image.set_shape([image_size, image_size, 3])
  return image


def normalize(image: tf.Tensor) -> tf.Tensor:
  """ImageNet mean/std normalisation of a [0, 255] image."""
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def eval_image(
  image: np.ndarray, image_size: int, eval_preproc: str = 'resize_crop_32'
) -> np.ndarray:
  """Eval-preprocesses one decoded uint8 image ([H, W, 3] or [H, W] grey) to the model input.

  Returns normalised float32 [S, S, 3], exactly what the eval pipeline feeds the model.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(
      f'eval_image expects a uint8 image, got dtype {image.dtype}.'
    )
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(
      f'eval_image expects [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got '
      f'{image.shape}.'
    )
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  out = normalize(eval_image_tf(tf.constant(image), image_size, eval_preproc))
  return out.numpy().astype(np.float32)
