"""Two processes on localhost (gloo collectives) train exactly like one process with 2 devices.

Each process of the multi-process run reads its own half of the data; the single-process
reference gets the same two halves stacked on its 2 fake devices, so both see the same global
batches and draw the same per-device dropout keys. Losses and final parameters must agree.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from tests import test_train_fixtures as fx

OVERRIDES = {
  'num_train_steps': 4,
  'checkpoint_every_steps': 2,
  'model_kwargs.drop_rate': 0.3,
}

_REFERENCE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from data import pipeline
    from experiments import train
    from tests import test_train_fixtures as fx

    config = fx.tiny_config(**%r)
    per_device = config.train_batch_size // 2

    def batches_fn(start):
        its = [pipeline.build_input(config.dataset, config.train_split, is_training=True,
                                    batch_dims=[1, per_device], image_size=32, seed=config.seed,
                                    start_step=start, process_index=i, process_count=2)
               for i in range(2)]
        while True:
            parts = [next(it) for it in its]
            yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    r = train.train_and_evaluate(config, sys.argv[1], batches_fn=batches_fn)
    leaves = [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(r['state'].params)]
    json.dump({'losses': [m['loss'] for _, m in r['history']], 'eval': r['eval'],
               'params': leaves}, open(sys.argv[2], 'w'))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
  config_path = fx.write_config_file(str(tmp_path), **OVERRIDES)
  port = _free_port()
  workdir = str(tmp_path / 'multi')
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'experiments.train',
        f'--config={config_path}',
        f'--workdir={workdir}',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      env=fx.subprocess_env(devices=1),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  ref_out = str(tmp_path / 'ref.json')
  ref = subprocess.run(
    [
      sys.executable,
      '-c',
      _REFERENCE % OVERRIDES,
      str(tmp_path / 'ref'),
      ref_out,
    ],
    env=fx.subprocess_env(devices=2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, out[-2000:] + err[-6000:]
  assert ref.returncode == 0, ref.stderr[-6000:]
  reference = json.load(open(ref_out))

  lines = [
    json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))
  ]
  multi_losses = [d['loss'] for d in lines if d['split'] == 'train']
  np.testing.assert_allclose(multi_losses, reference['losses'], rtol=1e-5)
  multi_eval = [d for d in lines if d['split'] == 'eval'][-1]
  assert multi_eval['count'] == reference['eval']['count'] == 1000
  assert multi_eval['top1'] == reference['eval']['top1']

  # The final checkpoint (written through orbax by both processes) holds the same params.
  from experiments import checkpointing, train

  config = fx.tiny_config(**OVERRIDES)
  setup = train.build_setup(config)
  template = train.init_state(setup.model, setup.optimizer, config, 32)
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'), max_to_keep=5, identity=setup.identity
  )
  state = ckpt.restore(template)
  ckpt.close()
  assert int(state.step) == 4
  import jax

  for a, b in zip(jax.tree_util.tree_leaves(state.params), reference['params']):
    np.testing.assert_allclose(
      a, np.asarray(b, np.float32), rtol=1e-4, atol=1e-6
    )
