"""Config names: `--config=nfnet_f1` means experiments/configs/nfnet.py with argument 'F1'.

A name resolves to `<file>:<arg>`; a path to a config file (optionally `path:arg`) is used
as is. Field overrides (`--config.train_batch_size=1024`) are parsed by ml_collections'
config_flags, so their syntax and type checks are the standard ones.
"""

import os
import re
import sys
from collections.abc import Callable, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from nfnets import registry, variants

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def _names() -> dict[str, tuple[str, str | None]]:
  names: dict[str, tuple[str, str | None]] = {
    'demo': ('demo.py', None),
    'finetune': ('finetune.py', None),
    'finetune_sam': ('finetune.py', 'F0_sam'),
  }
  for v in variants.NFNET_BASE_VARIANTS:
    for arg in (v, v + '+'):
      names[registry.canonical_name('nfnet_' + arg)] = ('nfnet.py', arg)
  # The paper's SAM record runs (Table 3: F5+SAM 86.3%, F6+SAM 86.5%).
  for v in ('f5', 'f6'):
    names[f'nfnet_{v}_sam'] = ('nfnet.py', v.upper() + '_sam')
  return names


def list_names() -> list[str]:
  """Config names accepted by `--config=NAME`."""
  return sorted(_names())


def resolve(spec: str) -> str:
  """Returns the ml_collections config-file spec (`/abs/file.py[:arg]`) for a name or path."""
  spec = spec.strip()
  path = spec.split(':', 1)[0]
  if path.endswith('.py') or os.sep in path:
    if not os.path.isfile(path):
      raise ValueError(f'Config file {path!r} does not exist.')
    return spec
  key = registry.canonical_name(spec)
  names = _names()
  if key not in names:
    raise ValueError(
      f'Unknown config {spec!r}; accepted names: {list_names()}, or a path to '
      'a config file (path/to/config.py[:arg]).'
    )
  filename, arg = names[key]
  full = os.path.join(CONFIG_DIR, filename)
  return full if arg is None else f'{full}:{arg}'


def resolve_argv(argv: Sequence[str], flag: str = 'config') -> list[str]:
  """Rewrites `--config=NAME` / `--config NAME` in argv to the file spec it names."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f'--{flag}='):
      out[i] = f'--{flag}=' + resolve(arg.split('=', 1)[1])
    elif arg == f'--{flag}' and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


def run(main: Callable[[list[str]], None]) -> None:
  """``app.run(main)`` for an entry point with a ``--config`` flag.

  ``--config=NAME`` is rewritten to the config file it names before absl parses
  the flags, since the config flag itself takes a file.
  """
  sys.argv = resolve_argv(sys.argv)
  app.run(main)


def _flatten_keys(config, prefix: str = '') -> list[str]:
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += _flatten_keys(value, f'{prefix}{key}.')
    else:
      keys.append(prefix + key)
  return keys


def get_config(
  spec: str, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """Loads a config by name or path and applies `field=value` overrides (command-line syntax).

  Raises ValueError naming the offending override (unknown field, wrong type).
  """
  argv = ['prog', '--config=' + resolve(spec)]
  for override in overrides:
    if '=' not in override:
      raise ValueError(
        f'Override {override!r} must look like field=value, e.g. '
        'train_batch_size=256.'
      )
    argv.append(
      '--config.' + override.removeprefix('--').removeprefix('config.')
    )
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, flag_values=flag_values, lock_config=False, sys_argv=argv
  )
  try:
    flag_values(argv)
  except (
    KeyError,
    AttributeError,
  ) as e:  # config_flags wraps a missing field's KeyError
    missing = re.sub(r'\\+n|\n', '. ', str(e.args[0] if e.args else e))
    missing = missing.replace('\\', '').replace("'", '')
    fields = _flatten_keys(get_config(spec)) if overrides else []
    raise ValueError(
      f'Bad config override in {list(overrides)}: no such field '
      f'{missing}; accepted fields: {sorted(fields)}.'
    ) from e
  except (flags.Error, TypeError, ValueError) as e:
    raise ValueError(f'Bad config override in {list(overrides)}: {e}') from e
  return flag_values.config
