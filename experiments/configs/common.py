"""Fields every experiment config shares, with the paper's ImageNet defaults."""

import ml_collections
from ml_collections import config_dict

from nfnets import optim


def base_config() -> ml_collections.ConfigDict:
  """ImageNet, batch 4096, 360 epochs, the paper's optimizer; models fill in the rest."""
  config = ml_collections.ConfigDict()
  config.name = ''  # a label for logs and checkpoints
  config.model = ''  # a registry name (nfnets.list_models())
  config.model_kwargs = (
    ml_collections.ConfigDict()
  )  # overrides of the model's arguments
  # Start a new run from a finished run's workdir (its newest checkpoint) or a weights file
  # (official F*_haiku.npz, our .npz, timm .safetensors/.pth) with a fresh optimizer and
  # schedule; the classifier is re-initialised when the class count differs
  # (experiments/init_from.py). '': random init. A resumed run ignores it.
  config.init_from = ''
  config.init_from_ema = (
    True  # from a workdir: its EMA params (False: the raw ones)
  )
  # The older name of init_from, still accepted.
  config.pretrained = config_dict.placeholder(str)
  # Data.
  config.dataset = 'imagenet2012'
  config.data_dir = config_dict.placeholder(
    str
  )  # TFDS data dir (None: the TFDS default)
  config.train_split = 'train'  # 'train_minus_valid' when tuning on 'valid'
  config.eval_split = 'test'  # ImageNet's 50,000 validation images
  config.train_imsize = config_dict.placeholder(
    int
  )  # None: the model's train resolution
  config.eval_imsize = config_dict.placeholder(
    int
  )  # None: the model's test resolution
  config.augment = config_dict.placeholder(str)
  # RandAugment ops: 'official' (as the official runs executed them, quirks included) or
  # 'corrected' (see docs/augment.md). The official code's default order is RandAugment
  # each image, then MixUp/CutMix; the NFNet configs set False (mix first).
  config.augment_mode = 'official'
  config.augment_before_mix = True
  config.eval_preproc = config_dict.placeholder(
    str
  )  # None: the dataset's default
  # Schedule.
  config.train_batch_size = 4096  # global, over all devices and hosts
  config.eval_batch_size = 400  # global; padded batches are masked
  config.num_epochs = 360.0
  config.num_train_steps = config_dict.placeholder(
    int
  )  # overrides num_epochs when set
  # Objective and numerics.
  config.label_smoothing = 0.1
  config.bfloat16 = True  # bf16 activations; params and optimizer stay float32
  # Evaluation compute dtype, 'float32' (the official code) or 'bfloat16'; None follows
  # `bfloat16`.
  config.eval_dtype = config_dict.placeholder(str)
  config.eval_dtype = 'float32'
  config.optimizer = optim.default_config()
  # SAM (nfnets/sam.py): radius rho of the weight perturbation, 0 = off; the ascent gradient
  # sees this fraction of each device's batch (the NFNet paper's 20%).
  config.optimizer.sam_rho = 0.0
  config.optimizer.sam_ascent_fraction = 0.2
  config.seed = 0
  # Bookkeeping (steps).
  config.log_every_steps = 100
  config.eval_every_steps = 5000  # 0: evaluate only at the end
  config.checkpoint_every_steps = 1000
  config.max_to_keep = 3
  return config
