"""What a run was trained on, recorded in its workdir so that later tools need no flags for it.

`WORKDIR/run_info.json` holds the dataset, its data dir, the class names (index = label) and
the run's config, so `python -m experiments.predict --workdir=W` and
`python -m experiments.eval --workdir=W` need nothing else; `WORKDIR/class_names.txt` holds the
names one per line, the format of `python -m experiments.predict --class_names=FILE`.
"""

import json
import os

import ml_collections

from data import pipeline

INFO_FILE = 'run_info.json'
NAMES_FILE = 'class_names.txt'


def write(
  workdir: str,
  dataset: str,
  data_dir: str | None,
  config: ml_collections.ConfigDict | None = None,
) -> dict:
  """Records `dataset`'s class names (from its prepared metadata) and `config` in `workdir`."""
  names = pipeline.class_names(dataset, data_dir)
  info = {
    'dataset': dataset,
    'data_dir': data_dir,
    'num_classes': len(names),
    'class_names': names,
  }
  if config is not None:
    info['config'] = json.loads(config.to_json_best_effort())
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, INFO_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(info, f, indent=1)
  os.replace(tmp, os.path.join(workdir, INFO_FILE))
  with open(os.path.join(workdir, NAMES_FILE), 'w') as f:
    f.write(''.join(f'{name}\n' for name in names))
  return info


def read(workdir: str) -> dict | None:
  """The recorded run info, or None for a workdir written before it was recorded."""
  path = os.path.join(workdir, INFO_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    info = json.load(f)
  if len(info['class_names']) != info['num_classes']:
    raise ValueError(
      f'{path} is inconsistent: num_classes != len(class_names).'
    )
  return info


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the run in `workdir` was trained with, as recorded by the trainer."""
  info = read(workdir)
  if info is None or 'config' not in info:
    raise ValueError(
      f'{workdir} records no config ({INFO_FILE} is missing or older than '
      "the config record): pass --config=NAME with the run's overrides."
    )
  return ml_collections.ConfigDict(info['config'])
