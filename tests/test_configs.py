"""Configs by name: every NFNet variant carries the paper's recipe; overrides fail clearly."""

import pytest

from experiments import config_lib

# Paper Table 3 and the official nfnet.py variant table: train/test resolution, dropout, RandAugment magnitude.
PAPER = {
  'F0': (192, 256, 0.2, 5),
  'F1': (224, 320, 0.3, 10),
  'F2': (256, 352, 0.4, 10),
  'F3': (320, 416, 0.4, 15),
  'F4': (384, 512, 0.5, 15),
  'F5': (416, 544, 0.5, 15),
  'F6': (448, 576, 0.5, 15),
  'F7': (480, 608, 0.5, 15),
}


@pytest.mark.parametrize('variant', sorted(PAPER))
@pytest.mark.parametrize('plus', [False, True])
def test_nfnet_names_carry_the_paper_recipe(variant, plus):
  name = f'nfnet_{variant.lower()}' + ('_plus' if plus else '')
  config = config_lib.get_config(name)
  train_res, test_res, drop, magnitude = PAPER[variant]
  assert config.model == name
  assert (config.train_imsize, config.eval_imsize) == (train_res, test_res)
  assert config.model_kwargs.drop_rate == drop
  assert config.augment == f'cutmix_mixup_randaugment_4{magnitude:02d}'
  assert config.train_batch_size == 4096 and config.num_epochs == 360
  assert config.label_smoothing == 0.1 and config.bfloat16
  opt = config.optimizer
  assert (opt.name, opt.lr_per_256, opt.momentum, opt.nesterov) == (
    'sgd',
    0.1,
    0.9,
    True,
  )
  assert (opt.weight_decay, opt.clipping, opt.warmup_epochs) == (
    2e-5,
    0.01,
    5.0,
  )
  assert (opt.schedule, opt.ema_decay, opt.use_ema) == ('cosine', 0.99999, True)
  assert config.model_kwargs.stochdepth_rate == 0.25
  assert config.dataset == 'imagenet2012' and config.eval_split == 'test'


def test_a_path_and_a_path_with_argument_work():
  path = config_lib.resolve('nfnet_f1').split(':')[0]
  assert config_lib.get_config(f'{path}:F2').model == 'nfnet_f2'
  assert config_lib.get_config(path).model == 'nfnet_f0'  # default argument
  assert config_lib.resolve('NFNet-F3+') == f'{path}:F3+'


def test_overrides_apply_with_types():
  config = config_lib.get_config(
    'nfnet_f0',
    [
      'train_batch_size=1024',
      'optimizer.lr_per_256=0.2',
      'data_dir=/data/tfds',
      'model_kwargs.drop_rate=0.1',
      'bfloat16=False',
    ],
  )
  assert config.train_batch_size == 1024 and config.optimizer.lr_per_256 == 0.2
  assert (
    config.data_dir == '/data/tfds' and config.model_kwargs.drop_rate == 0.1
  )
  assert config.bfloat16 is False


def test_argv_names_are_rewritten_to_files():
  argv = config_lib.resolve_argv(['prog', '--config=demo', '--config.seed=3'])
  assert (
    argv[1].endswith('experiments/configs/demo.py')
    and argv[2] == '--config.seed=3'
  )
  argv = config_lib.resolve_argv(['prog', '--config', 'nfnet_f4'])
  assert argv[2].endswith('nfnet.py:F4')


def test_unknown_name_lists_accepted_names():
  with pytest.raises(
    ValueError, match=r"Unknown config 'nfnet_f9'.*'nfnet_f0_plus'"
  ):
    config_lib.get_config('nfnet_f9')
  with pytest.raises(ValueError, match='does not exist'):
    config_lib.get_config('no/such/config.py')
  with pytest.raises(ValueError, match=r'Unknown NFNet variant'):
    config_lib.get_config(config_lib.resolve('nfnet_f0').split(':')[0] + ':F8')


@pytest.mark.parametrize(
  'override, pattern',
  [
    (
      'train_batchsize=8',
      r'no such field train_batchsize.*accepted fields: .*train_batch_size',
    ),
    (
      'optimizer.lr=0.1',
      r'no such field "?lr"?; accepted fields: .*optimizer.lr_per_256',
    ),
    (
      'train_batch_size=many',
      r'train_batch_size=many: invalid literal for int',
    ),
    ('train_batch_size', r'must look like field=value'),
  ],
)
def test_bad_overrides_fail_clearly(override, pattern):
  with pytest.raises(ValueError, match=pattern):
    config_lib.get_config('demo', [override])


def test_demo_config_is_small():
  config = config_lib.get_config('demo')
  assert config.dataset == 'embedded_mnist' and config.train_imsize == 32
  assert config.model_kwargs.width <= 0.25
