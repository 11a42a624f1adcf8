"""Shared pieces of the training tests: a tiny registered model and its config.

The tiny model is a real NFNet stem conv + one real NFBlock (grouped convs, SE, skip gain) +
the classifier named like NFNet's (so the optimizer's AGC exclusion applies): it compiles in
seconds on 2 CPU cores, which lets the loop tests run whole training runs.
"""

import os
import textwrap

import haiku as hk
import jax.numpy as jnp
import ml_collections

from experiments.configs import common
from nfnets import activations, layers, registry
from nfnets.nfnet import NFBlock

TINY = 'tiny_test_net'


class TinyNet(hk.Module):
  def __init__(
    self,
    num_classes: int,
    width: int = 16,
    drop_rate: float = 0.0,
    name: str = 'TinyNet',
  ):
    super().__init__(name=name)
    self.num_classes, self.width, self.drop_rate = num_classes, width, drop_rate

  def __call__(self, x, is_training: bool, return_metrics: bool = False):
    act = activations.get_activation('gelu')
    out = act(
      layers.WSConv2D(8, kernel_shape=3, stride=4, name='stem_conv0')(x)
    )
    out, _ = NFBlock(
      8, self.width, group_size=8, stride=2, activation=act, stochdepth_rate=0.0
    )(out, is_training=is_training)
    pool = jnp.mean(act(out), axis=(1, 2))
    if is_training and self.drop_rate:
      pool = hk.dropout(hk.next_rng_key(), self.drop_rate, pool)
    logits = layers.Linear(self.num_classes, name='linear')(pool)
    return {'logits': logits.astype(jnp.float32), 'pool': pool}


def register() -> None:
  if TINY not in registry.list_models():
    registry.register(
      TINY, lambda num_classes, **kw: TinyNet(num_classes, **kw)
    )


register()


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A few steps of the paper's recipe on the embedded digits with the tiny model."""
  config = common.base_config()
  config.name = 'tiny'
  config.model = TINY
  config.model_kwargs = ml_collections.ConfigDict(dict(width=16, drop_rate=0.0))
  config.dataset = 'embedded_mnist'
  config.train_imsize = 32
  config.eval_imsize = 32
  config.train_batch_size = 16
  config.eval_batch_size = 500
  config.num_train_steps = 6
  config.bfloat16 = False
  config.optimizer.warmup_epochs = 0.001
  config.optimizer.ema_decay = 0.9
  config.log_every_steps = 1
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 3
  config.max_to_keep = 5
  config.update_from_flattened_dict(overrides)
  return config


def write_config_file(directory: str, **overrides) -> str:
  """A config file (for --config=PATH in subprocesses) returning tiny_config(**overrides)."""
  path = os.path.join(directory, 'tiny_config.py')
  with open(path, 'w') as f:
    f.write(
      textwrap.dedent(f"""\
            from tests import test_train_fixtures


            def get_config(arg=None):
                return test_train_fixtures.tiny_config(**{overrides!r})
            """)
    )
  return path


def subprocess_env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONPATH'] = os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
  )
  return env
