"""The commands in README.md and docs/ name modules, flags and config fields that exist.

A renamed flag or a moved module leaves the docs wrong while every other test passes;
this reads each ``python -m MODULE --flag ...`` of the docs and checks the module's own
flags (defined by it and what it imports) and, for ``--config=NAME --config.FIELD=...``,
that the config has the field. It does not run the commands (most need ImageNet or a GPU).
"""

import functools
import json
import pathlib
import re
import subprocess
import sys

from experiments import config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]

# Collects, for each entry point, the flags that exist after importing it: the flags
# of the entry points imported before are removed (and those modules re-imported
# where it imports them), so a flag of another entry point does not count.
_FLAG_PROBE = """
import importlib, json, sys
from absl import flags
entries = sys.argv[1:]
out = {}
for name in entries:
  by_module = flags.FLAGS.flags_by_module_dict()
  for module in entries:
    for flag in list(by_module.get(module, ())):  # deleting edits the list
      if flag.name in flags.FLAGS:
        delattr(flags.FLAGS, flag.name)
    if sys.modules.pop(module, None):  # and from-imports find it anew
      parent, _, child = module.rpartition('.')
      if hasattr(sys.modules.get(parent), child):
        delattr(sys.modules[parent], child)
  module = importlib.import_module(name)
  # Entry points that share a flag name with a library define theirs when run.
  for define in ('define_flags', '_define_flags'):
    if hasattr(module, define):
      getattr(module, define)()
  out[name] = sorted(flags.FLAGS)
print('FLAGS ' + json.dumps(out))
"""


def doc_commands() -> list[tuple[str, str, list[str]]]:
  """(doc file, module, args) for every ``python -m`` command in the docs."""
  commands = []
  for path in DOCS:
    text = path.read_text().replace('\\\n', ' ')
    # An inline `code span` that the prose wraps over two lines is one command.
    text = re.sub(
      r'(?<!`)`(?!`)[^`]+`', lambda m: m.group(0).replace('\n', ' '), text
    )
    for line in text.splitlines():
      for match in re.finditer(r'python -m ([a-z_][a-z0-9_.]*)([^`]*)', line):
        args = match.group(2).replace('[', ' ').replace(']', ' ').split()
        commands.append((path.name, match.group(1), args))
  return commands


def _flag_name(arg: str) -> str:
  return arg[2:].split('=', 1)[0]


def test_the_docs_have_commands_to_check():
  modules = {module for _, module, _ in doc_commands()}
  # The two README commands' entry points and the paper reproductions at their paths.
  assert {'experiments.train', 'experiments.eval', 'data.prepare'} <= modules
  assert 'experiments.paper.latency' in modules
  assert len(doc_commands()) >= 40


@functools.cache
def flags_of(modules: tuple[str, ...]) -> dict[str, list[str]]:
  """Each module's flags, from a fresh interpreter that imports them one by one."""
  result = subprocess.run(
    [sys.executable, '-c', _FLAG_PROBE, *modules],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  line = [x for x in result.stdout.splitlines() if x.startswith('FLAGS ')]
  return json.loads(line[-1][len('FLAGS ') :])


def problems(commands, known: dict[str, list[str]]) -> list[str]:
  """What in ``commands`` names a flag or a config field that does not exist."""
  found = []
  for doc, module, args in commands:
    flag_args = [a for a in args if a.startswith('--')]
    config = None
    for arg in flag_args:
      name = _flag_name(arg)
      if name.startswith('config.'):
        continue
      if name not in known[module]:
        found.append(f'{doc}: {module} has no flag --{name}')
      elif name == 'config':
        config = config_lib.get_config(arg.split('=', 1)[1])
    for arg in flag_args:
      name = _flag_name(arg)
      if not name.startswith('config.'):
        continue
      if config is None:
        found.append(f'{doc}: {module} --{name} without --config=NAME')
        continue
      node = config
      for part in name.split('.')[1:]:
        if part not in node:
          found.append(f'{doc}: {module} {args[0]} has no field {name}')
          break
        node = node[part]
  return found


def _entry_commands():
  commands = [c for c in doc_commands() if c[1] != 'pytest']
  return commands, flags_of(tuple(sorted({c[1] for c in commands})))


def test_every_docs_command_names_existing_flags_and_config_fields():
  commands, known = _entry_commands()
  found = problems(commands, known)
  assert not found, '\n'.join(found)


def test_the_check_sees_a_wrong_flag_and_a_wrong_field():
  """The check above is not vacuous: a misspelt flag and config field are reported."""
  _, known = _entry_commands()
  planted = [
    ('X.md', 'experiments.train', ['--config=demo', '--work_dir=/tmp']),
    ('X.md', 'experiments.train', ['--config=demo', '--config.datadir=/d']),
    ('X.md', 'experiments.eval', ['--workdir=/w', '--split=test']),
  ]
  assert problems(planted, known) == [
    'X.md: experiments.train has no flag --work_dir',
    'X.md: experiments.train --config=demo has no field config.datadir',
  ]
