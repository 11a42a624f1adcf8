"""Fine-tune published NFNet weights or a finished run on another dataset (default: the digits).

    python -m experiments.train --config=finetune --workdir=/tmp/ft \
        --config.init_from=F0_haiku.npz [--config.model=nfnet_f1 --config.init_from=F1_haiku.npz]

Every tensor but the classifier comes from `init_from` (experiments/init_from.py: a run's
workdir, or an official pickle, our .npz, timm .safetensors/.pth; names and shapes are checked
against the model); the classifier is kept when the class count matches and otherwise
re-initialised N(0, 0.01) for the dataset's class count. `--config.pretrained=FILE`, the older
name, still works. The recipe is the paper's optimizer at
a fine-tuning learning rate: short warmup, cosine, AGC 0.01 (the new classifier is excluded as
always), no RandAugment/MixUp/CutMix, dropout 0.2.

SAM option (`--config=finetune_sam`, or `finetune.py:F1_sam`): the paper's fine-tuning values
(its appendix, fine-tuning after JFT pre-training): SAM rho 0.05 with the ascent on 20% of the
batch, weight decay 1e-5, dropout 0.25, stochastic depth 0.1.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = (arg or 'F0').strip()
  use_sam = arg.lower() == 'sam' or arg.lower().endswith('_sam')
  if use_sam:
    arg = arg[: -len('sam')].rstrip('_') or 'F0'
  config = common.base_config()
  config.name = 'finetune'
  config.model = f'nfnet_{arg.lower()}'
  config.model_kwargs = ml_collections.ConfigDict(
    dict(drop_rate=0.2, stochdepth_rate=0.1)
  )
  # Required (config.init_from=PATH): the run refuses to start from random weights by accident.
  config.require_init_from = True
  config.dataset = 'embedded_mnist'
  config.train_split = 'train'
  config.eval_split = 'test'
  config.train_imsize = 64
  config.eval_imsize = 64
  config.augment = None
  config.train_batch_size = 32
  config.eval_batch_size = 100
  config.num_epochs = 2.0
  config.label_smoothing = 0.1
  config.bfloat16 = False
  config.optimizer.lr_per_256 = 0.05
  config.optimizer.warmup_epochs = 0.1
  config.optimizer.ema_decay = 0.99
  config.log_every_steps = 10
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 100
  config.max_to_keep = 2
  if use_sam:
    config.name = 'finetune_sam'
    config.optimizer.sam_rho = 0.05
    config.optimizer.sam_ascent_fraction = 0.2
    config.optimizer.weight_decay = 1e-5
    config.model_kwargs.drop_rate = 0.25
    config.model_kwargs.stochdepth_rate = 0.1
  return config
