"""A tiny NFNet on the embedded MNIST digits: what `./run.sh` trains on a 2-core CPU.

The recipe is the paper's (SGD-Nesterov, AGC, warmup + cosine, label smoothing, EMA) scaled to
4,000 training images: an F0-deep NFNet at 1/8 width with 16-channel groups at 32 px, float32
(bf16 is slow on CPU), no RandAugment/MixUp (the pipeline's mild random crop is enough here).
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = common.base_config()
  config.name = 'demo'
  config.model = 'nfnet_f0'
  config.model_kwargs = ml_collections.ConfigDict(
    dict(width=0.125, group_size=16, drop_rate=0.0, stochdepth_rate=0.0)
  )
  config.dataset = 'embedded_mnist'
  config.train_split = 'train'
  config.eval_split = 'test'  # the 1,000 held-out digits
  config.train_imsize = 32
  config.eval_imsize = 32
  config.augment = None
  config.train_batch_size = 64
  config.eval_batch_size = 200
  config.num_epochs = 16.0  # 1,000 steps; measured 97.5% test top-1
  config.label_smoothing = 0.1
  config.bfloat16 = False
  config.optimizer.lr_per_256 = 0.4
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.ema_decay = 0.99
  config.log_every_steps = 50
  config.eval_every_steps = 0  # evaluate once, at the end
  config.checkpoint_every_steps = 500
  config.max_to_keep = 2
  return config
