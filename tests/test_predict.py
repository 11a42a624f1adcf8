"""experiments/predict.py on real photographs that scikit-learn ships (china.jpg, flower.jpg)."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

import nfnets
from data import preprocess
from experiments import predict
from nfnets import weights

sklearn_datasets = pytest.importorskip('sklearn.datasets')
IMAGES = os.path.join(os.path.dirname(sklearn_datasets.__file__), 'images')
FIXTURE = os.path.join(
  os.path.dirname(__file__), 'fixtures', 'timm_nfnet_tiny.npz'
)
TINY = dict(width=0.0625, group_size=8)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """A tiny 1000-class NFNet in our format: the timm fixture's trunk, a fresh classifier."""
  with np.load(FIXTURE, allow_pickle=False) as data:
    params = weights.from_timm(
      {k[3:]: data[k] for k in data.files if k.startswith('sd/')}
    )
  params = weights.replace_classifier(
    params, 1000, jax.random.PRNGKey(0), stddev=0.05
  )
  path = tmp_path_factory.mktemp('ckpt') / 'tiny.npz'
  weights.save_npz(path, params)
  return path, params


def test_imagenet_class_ids_ship_with_tfds():
  ids = predict.imagenet_class_ids()
  assert len(ids) == len(set(ids)) == 1000
  assert (
    ids[0] == 'n01440764' and ids[-1] == 'n15075141'
  )  # tench ... toilet tissue
  names = predict.class_names(1000)
  # Readable names line up with the synsets (well-known ImageNet indices).
  assert names[0] == 'n01440764 tench, Tinca tinca'
  assert names[207].startswith('n02099601 golden retriever')
  assert names[999].startswith('n15075141 toilet tissue')


def test_predict_matches_calling_the_model_directly(
  checkpoint, tmp_path, capsys
):
  path, params = checkpoint
  china = os.path.join(IMAGES, 'china.jpg')
  flower_png = (
    tmp_path / 'flower.png'
  )  # a PNG too, from the other shipped photo
  Image.open(os.path.join(IMAGES, 'flower.jpg')).save(flower_png)
  results = predict.run(
    'nfnet_f0', str(path), [china, str(flower_png)], image_size=64, **TINY
  )
  # Directly: decode, eval-preprocess, apply the model, sort the logits.
  model = nfnets.create_model('nfnet_f0', num_classes=1000, **TINY)
  images = [
    np.asarray(Image.open(china).convert('RGB')),
    np.asarray(Image.open(flower_png).convert('RGB')),
  ]
  assert images[0].shape == (427, 640, 3)
  batch = np.stack([preprocess.eval_image(im, 64) for im in images])
  # (The compiled apply is shared with run() only to save a second compile on 2 cores.)
  out, _ = predict.jitted_apply(model)(
    params, {}, jax.random.PRNGKey(0), batch, False
  )
  logits = np.asarray(out['logits'])
  ids = predict.class_names(1000)
  for row, got in zip(logits, results):
    top5 = np.argsort(-row)[:5]
    assert [name for name, _ in got] == [ids[i] for i in top5]
    probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    np.testing.assert_allclose([p for _, p in got], probs[top5], rtol=1e-5)
  assert results[0] != results[1]  # the two photos are told apart
  printed = capsys.readouterr().out
  assert 'china.jpg' in printed and f'1. {results[0][0][0]}' in printed


def test_official_file_predicts_the_same(checkpoint, tmp_path):
  path, params = checkpoint
  official = tmp_path / 'F0_haiku.npz'
  weights.save_official(official, params)
  photos = [
    os.path.join(IMAGES, 'china.jpg'),
    os.path.join(IMAGES, 'flower.jpg'),
  ]
  a = predict.run('nfnet_f0', str(path), photos, image_size=64, **TINY)
  b = predict.run('nfnet_f0', str(official), photos, image_size=64, **TINY)
  assert a == b


def test_bad_inputs(checkpoint):
  path, _ = checkpoint
  with pytest.raises(ValueError, match='No image files given'):
    predict.run('nfnet_f0', str(path), [], **TINY)
  with pytest.raises(ValueError, match='does not fit the model'):
    predict.run(
      'nfnet_f0',
      str(path),
      [os.path.join(IMAGES, 'china.jpg')],
      width=0.125,
      group_size=8,
    )
