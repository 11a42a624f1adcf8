"""RandAugment, MixUp and CutMix in plain TensorFlow with stateless randomness.

RandAugment follows the TPU `autoaugment.py` that the official NFNet code runs, with image
transforms done by core TF's `ImageProjectiveTransformV3` (the kernel behind tensorflow-addons'
`transform`, so no tensorflow-addons). Two modes:

- 'official' reproduces the ops and argument mappings that the official NFNet runs executed,
  quirks included, because the paper's accuracies were obtained with them: 16 ops including
  Invert; Solarize's threshold `int(m / 10 * 256)` compared with a uint8 image wraps modulo
  256 (m = 10 inverts every pixel, m = 15 solarizes at 128); Posterize keeps `int(m / 10 * 4)`
  bits; Contrast blends toward the constant H * W / 256 (the histogram's sum divided by 256,
  clipped to 255) instead of the mean; translations and Cutout are fixed 100 px and 40 px at
  m = 10 whatever the image size; Sharpness truncates its smoothed image to uint8.
- 'corrected' is this project's earlier variant, each change a fix of the above: 15 ops (no
  Invert); Solarize compares in int32; Posterize keeps `8 - int(4 m / 10)` bits (magnitude 0 is
  the identity); Contrast blends with the true mean grey level; translations and Cutout scale
  with the image (100 px and 40 px at 224 px); Sharpness rounds.

Both fill emptied pixels with grey 128, draw one op per layer uniformly and always apply it.

MixUp and CutMix follow the official NFNet pipeline: a batch of 2B stream examples gives B
outputs; the first half is mixed with the second half; 'labels' get weight `ratio` and
'mix_labels' weight `1 - ratio`. The official combined mode applies MixUp to one half of the
outputs and CutMix to the other.
"""

import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128
MODES = ('official', 'corrected')
# The official op list, in the official order (the drawn index selects from it).
OFFICIAL_OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Cutout',
  'SolarizeAdd',
)
# The 'corrected' op list (no Invert).
OPS = (
  'AutoContrast',
  'Equalize',
  'Rotate',
  'Solarize',
  'Color',
  'Posterize',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Cutout',
  'SolarizeAdd',
)
GEOMETRIC_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
SIGNED_OPS = GEOMETRIC_OPS
# Official translation and Cutout half-size at magnitude 10, in pixels, at any image size.
OFFICIAL_TRANSLATE_PX = 100
OFFICIAL_CUTOUT_PX = 40


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'Unknown augment mode {mode!r}; accepted: {MODES}.')


def ops(mode: str) -> tuple[str, ...]:
  """The op names RandAugment draws from in `mode`."""
  check_mode(mode)
  return OFFICIAL_OPS if mode == 'official' else OPS


def _fold(seed: tf.Tensor, tag: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, tag)


def blend(image1: tf.Tensor, image2: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """image1 + factor * (image2 - image1), clipped, uint8 (factor 0: image1, 1: image2)."""
  a, b = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
  return tf.cast(tf.clip_by_value(a + factor * (b - a), 0.0, 255.0), tf.uint8)


def _transform(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
  """Projective transform (output pixel -> input pixel), nearest neighbour, grey fill."""
  shape = tf.shape(image)
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]),
    output_shape=shape[:2],
    fill_value=float(FILL_VALUE),
    interpolation='NEAREST',
    fill_mode='CONSTANT',
  )
  return out[0]


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """Rotates about the image centre (the tfa `angles_to_projective_transforms` matrix)."""
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  h = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
  w = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_offset = (w - (cos * w - sin * h)) / 2.0
  y_offset = (h - (sin * w + cos * h)) / 2.0
  return _transform(
    image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
  )


def shear_x(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
  return _transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
  return _transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  return _transform(
    image, tf.stack([1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])
  )


def translate_y(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  return _transform(
    image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])
  )


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Inverts pixels at or above the threshold."""
  return tf.where(
    tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, 255 - image
  )


def solarize_wrapped(image: tf.Tensor, threshold: int) -> tf.Tensor:
  """Official Solarize: the Python-int threshold becomes a uint8 constant, so it wraps
  modulo 256 (256 -> 0: every pixel inverted; 384 -> 128)."""
  return solarize(image, int(threshold) % 256)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def solarize_add(
  image: tf.Tensor, addition: tf.Tensor, threshold: int = 128
) -> tf.Tensor:
  added = tf.clip_by_value(
    tf.cast(image, tf.int32) + tf.cast(addition, tf.int32), 0, 255
  )
  return tf.where(
    tf.cast(image, tf.int32) < threshold, tf.cast(added, tf.uint8), image
  )


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return blend(grey, image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def contrast_official(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Official Contrast: its 'mean' is the grey histogram's sum over 256 bins, i.e. H * W / 256
  (clipped to 255, truncated to uint8), not the mean grey level."""
  h, w = image.shape[0], image.shape[1]
  level = math.floor(min(h * w / 256.0, 255.0))
  return blend(
    tf.fill(tf.shape(image), tf.constant(level, tf.uint8)), image, factor
  )


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return blend(tf.zeros_like(image), image, factor)


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  shift = tf.cast(8 - tf.cast(bits, tf.int32), tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def sharpness(
  image: tf.Tensor, factor: tf.Tensor, *, round_smooth: bool = True
) -> tf.Tensor:
  """Blends with a 3x3-smoothed copy (PIL's SMOOTH kernel); border pixels stay unsmoothed.

  round_smooth: round the smoothed copy to uint8 (PIL); False truncates (official code).
  """
  # The official op's own float computation (weights w / 13 in one depthwise
  # convolution), so that both give the same result on the same CPU: where the
  # weighted sum is a multiple of 13, the truncated value depends on the
  # convolution's summation order (oneDNN's or Eigen's).
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID')
  smooth = smooth[0]
  if round_smooth:
    smooth = tf.round(smooth)
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  border = tf.pad(
    tf.zeros_like(smooth, tf.bool),
    [[1, 1], [1, 1], [0, 0]],
    constant_values=True,
  )
  degenerate = tf.where(border, image, padded)
  return blend(degenerate, image, factor)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel to the full [0, 255] range."""

  def channel(c):
    c = tf.cast(c, tf.float32)
    lo, hi = tf.reduce_min(c), tf.reduce_max(c)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.where(
      hi > lo, tf.clip_by_value(c * scale - lo * scale, 0.0, 255.0), c
    )
    return tf.cast(out, tf.uint8)

  return tf.stack([channel(image[..., i]) for i in range(3)], axis=-1)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Per-channel histogram equalisation (PIL's ImageOps.equalize algorithm)."""

  def channel(c):
    c = tf.cast(c, tf.int32)
    histo = tf.histogram_fixed_width(c, [0, 255], nbins=256)
    nonzero = tf.gather(histo, tf.reshape(tf.where(histo > 0), [-1]))
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(histo) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cast(tf.where(step > 0, tf.gather(lut, c), c), tf.uint8)

  return tf.stack([channel(image[..., i]) for i in range(3)], axis=-1)


def cutout_centre(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Cutout's centre (y, x) drawn uniformly over the image, int32 [2]."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  cy = tf.random.stateless_uniform([], _fold(seed, 0), 0, h, tf.int32)
  cx = tf.random.stateless_uniform([], _fold(seed, 1), 0, w, tf.int32)
  return tf.stack([cy, cx])


def cutout(image: tf.Tensor, pad_size, centre: tf.Tensor) -> tf.Tensor:
  """Grey square of side up to 2 * pad_size at `centre` (y, x), clipped at the borders."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  cy, cx = centre[0], centre[1]
  ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
  inside = (
    (ys >= cy - pad_size)
    & (ys < cy + pad_size)
    & (xs >= cx - pad_size)
    & (xs < cx + pad_size)
  )
  return tf.where(inside[..., None], tf.cast(FILL_VALUE, image.dtype), image)


def op_sign(seed: tf.Tensor) -> tf.Tensor:
  """The random sign of the signed ops' arguments: -1.0 or 1.0 with equal odds."""
  u = tf.random.stateless_uniform([], _fold(seed, 0))
  return tf.where(u < 0.5, -1.0, 1.0)


def apply_op(
  name: str, image: tf.Tensor, magnitude: float, seed: tf.Tensor, *, mode: str
) -> tf.Tensor:
  """Applies one RandAugment op at `magnitude` (0-10 nominal) to a uint8 [H, W, 3] image.

  The op's randomness (sign of geometric ops, Cutout's centre) comes from `seed`.
  """
  check_op(name, mode)
  centre = cutout_centre(image, _fold(seed, 1)) if name == 'Cutout' else None
  return apply_op_with(
    name, image, magnitude, sign=op_sign(seed), centre=centre, mode=mode
  )


def check_op(name: str, mode: str) -> None:
  if name not in ops(mode):
    raise ValueError(
      f'Unknown RandAugment op {name!r} in mode {mode!r}; accepted: '
      f'{ops(mode)}.'
    )


def apply_op_with(
  name: str,
  image: tf.Tensor,
  magnitude: float,
  *,
  sign=1.0,
  centre=None,
  mode: str,
) -> tf.Tensor:
  """`apply_op` with its random draws given: `sign` (+-1) for Rotate, Shear and Translate,
  `centre` (y, x) for Cutout. Signs follow the official code: +1 keeps the official argument
  (official TranslateX(+p) moves the content p px left)."""
  check_op(name, mode)
  official = mode == 'official'
  frac = magnitude / MAX_LEVEL
  size = float(min(image.shape[0], image.shape[1]))
  enhance = frac * 1.8 + 0.1
  if name == 'AutoContrast':
    return auto_contrast(image)
  if name == 'Equalize':
    return equalize(image)
  if name == 'Invert':
    return invert(image)
  if name == 'Rotate':
    return rotate(image, sign * frac * 30.0)
  if name == 'Solarize':
    if official:
      return solarize_wrapped(image, int(frac * 256))
    return solarize(image, int(frac * 256))
  if name == 'Color':
    return color(image, enhance)
  if name == 'Posterize':
    if official:
      # Official bits; magnitudes above 20 (no config uses them) would need a negative
      # shift, which the official code cannot run: keep all 8 bits there.
      return posterize(image, min(int(frac * 4), 8))
    return posterize(image, max(1, 8 - int(frac * 4)))
  if name == 'Contrast':
    if official:
      return contrast_official(image, enhance)
    return contrast(image, enhance)
  if name == 'Brightness':
    return brightness(image, enhance)
  if name == 'Sharpness':
    return sharpness(image, enhance, round_smooth=not official)
  if name == 'ShearX':
    return shear_x(image, sign * frac * 0.3)
  if name == 'ShearY':
    return shear_y(image, sign * frac * 0.3)
  if name in ('TranslateX', 'TranslateY'):
    op = translate_x if name == 'TranslateX' else translate_y
    if official:
      return op(image, -sign * frac * OFFICIAL_TRANSLATE_PX)
    return op(image, sign * frac * 0.45 * size)
  if name == 'Cutout':
    if centre is None:
      raise ValueError('Cutout needs a centre (y, x).')
    if official:
      pad = int(frac * OFFICIAL_CUTOUT_PX)
    else:
      pad = int(frac * (40 / 224) * size)
    return cutout(image, pad, tf.convert_to_tensor(centre, tf.int32))
  if name == 'SolarizeAdd':
    return solarize_add(image, int(frac * 110))
  raise AssertionError(name)  # check_op accepted a name not handled here.


def randaugment(
  image: tf.Tensor,
  seed: tf.Tensor,
  num_layers: int,
  magnitude: float,
  *,
  mode: str,
) -> tf.Tensor:
  """RandAugment on a float [S, S, 3] image (static shape): `num_layers` ops drawn uniformly
  from `ops(mode)`, each at `magnitude`. Like the official code, clips to [0, 255], casts to
  uint8 (truncating), applies the ops and returns float32."""
  names = ops(mode)
  image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
  for layer in range(num_layers):
    layer_seed = _fold(seed, layer)
    index = tf.random.stateless_uniform(
      [], _fold(layer_seed, 0), 0, len(names), tf.int32
    )
    op_seed = _fold(layer_seed, 1)
    branches = [
      lambda n=name, x=image, s=op_seed: apply_op(n, x, magnitude, s, mode=mode)
      for name in names
    ]
    image = tf.switch_case(index, branches)
  return tf.cast(image, tf.float32)


def sample_beta(shape, seed: tf.Tensor, alpha: float) -> tf.Tensor:
  """Beta(alpha, alpha) from two stateless Gammas (0.5 if both underflow)."""
  g1 = tf.random.stateless_gamma(shape, _fold(seed, 0), alpha)
  g2 = tf.random.stateless_gamma(shape, _fold(seed, 1), alpha)
  total = g1 + g2
  return tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 0.5)


def mixup(images_a, images_b, seed: tf.Tensor, alpha: float = 0.2):
  """Per-example ratio ~ Beta(alpha, alpha); images = ratio * a + (1 - ratio) * b."""
  n = tf.shape(images_a)[0]
  ratio = sample_beta([n], seed, alpha)
  r = ratio[:, None, None, None]
  return r * images_a + (1.0 - r) * images_b, ratio


def cutmix_masks(n, height: int, width: int, seed: tf.Tensor) -> tf.Tensor:
  """Per-example boxes (official `cutmix_padding`): centre uniform, side sqrt(1 - U(0, 1)) of
  the image, clipped at the borders. Returns float32 [n, H, W, 1], 1 inside the box."""
  cx = tf.random.stateless_uniform([n], _fold(seed, 0), 0, width, tf.int32)
  cy = tf.random.stateless_uniform([n], _fold(seed, 1), 0, height, tf.int32)
  proportion = tf.random.stateless_uniform([n], _fold(seed, 2))
  cut = tf.sqrt(1.0 - proportion)
  half_w = tf.cast(cut * width, tf.int32) // 2
  half_h = tf.cast(cut * height, tf.int32) // 2
  x1, x2 = (
    tf.clip_by_value(cx - half_w, 0, width),
    tf.clip_by_value(cx + half_w, 0, width),
  )
  y1, y2 = (
    tf.clip_by_value(cy - half_h, 0, height),
    tf.clip_by_value(cy + half_h, 0, height),
  )
  ys = tf.range(height)[None, :, None]
  xs = tf.range(width)[None, None, :]
  inside = (
    (ys >= y1[:, None, None])
    & (ys < y2[:, None, None])
    & (xs >= x1[:, None, None])
    & (xs < x2[:, None, None])
  )
  return tf.cast(inside, tf.float32)[..., None]


def cutmix(images_a, images_b, seed: tf.Tensor):
  """Box from `a`, the rest from `b`; ratio = the box's area fraction (weight of a's label)."""
  shape = images_a.shape
  mask = cutmix_masks(tf.shape(images_a)[0], shape[1], shape[2], seed)
  ratio = tf.reduce_mean(mask, axis=[1, 2, 3])
  return mask * images_a + (1.0 - mask) * images_b, ratio


def mix_batch(
  batch: dict,
  seed: tf.Tensor,
  *,
  use_mixup: bool,
  use_cutmix: bool,
  mixup_alpha: float = 0.2,
) -> dict:
  """2B examples -> B mixed outputs with 'labels', 'mix_labels' and 'ratio' (see module doc)."""
  images, labels, position = batch['images'], batch['labels'], batch['position']
  n = tf.shape(images)[0]
  if use_mixup and use_cutmix:
    q = n // 4
    mixed_a, ratio_a = mixup(
      images[:q], images[q : 2 * q], _fold(seed, 0), mixup_alpha
    )
    mixed_b, ratio_b = cutmix(
      images[2 * q : 3 * q], images[3 * q :], _fold(seed, 1)
    )
    return {
      'images': tf.concat([mixed_a, mixed_b], 0),
      'labels': tf.concat([labels[:q], labels[2 * q : 3 * q]], 0),
      'mix_labels': tf.concat([labels[q : 2 * q], labels[3 * q :]], 0),
      'ratio': tf.concat([ratio_a, ratio_b], 0),
      'position': tf.concat([position[:q], position[2 * q : 3 * q]], 0),
    }
  h = n // 2
  if use_mixup:
    mixed, ratio = mixup(images[:h], images[h:], _fold(seed, 0), mixup_alpha)
  elif use_cutmix:
    mixed, ratio = cutmix(images[:h], images[h:], _fold(seed, 1))
  else:
    raise ValueError('mix_batch needs mixup=True or cutmix=True.')
  return {
    'images': mixed,
    'labels': labels[:h],
    'mix_labels': labels[h:],
    'ratio': ratio,
    'position': position[:h],
  }
