"""Orbax checkpoints of a whole TrainState, with the checks that keep saved work safe.

A checkpoint holds every leaf of the state (params, optimizer state, EMA params, model state,
step, rng) flattened in tree order, plus JSON metadata naming the model. Restoring:
- a directory whose checkpoints belong to another model raises a ValueError and changes nothing;
- a checkpoint that fails to load (partial copy, truncated file) is logged, moved aside to
  ``<dir>/corrupt/`` (not deleted) and the next older one is tried.
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact (and the temporary one is ignored).
"""

import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

FORMAT_VERSION = 1


def _leaf_key(i: int) -> str:
  return f'leaf_{i:05d}'


def describe(template: Any) -> list[list]:
  """[path, shape, dtype] of every leaf, in tree order (what a checkpoint must match)."""
  leaves = jax.tree_util.tree_flatten_with_path(template)[0]
  return [
    [
      jax.tree_util.keystr(path),
      list(np.shape(leaf)),
      str(np.asarray(leaf).dtype)
      if not hasattr(leaf, 'dtype')
      else str(leaf.dtype),
    ]
    for path, leaf in leaves
  ]


class Checkpointer:
  """Saves and restores TrainStates under ``directory``; every process makes the same calls."""

  def __init__(self, directory: str, *, max_to_keep: int, identity: dict):
    """``identity``: what makes checkpoints compatible (model name, kwargs, classes)."""
    self.directory = os.path.abspath(directory)
    self.identity = identity
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=('state', 'meta')
    )

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, state: Any, step: int) -> None:
    """Writes ``state`` (a host tree: numpy leaves) as checkpoint ``step``."""
    leaves = jax.tree_util.tree_leaves(state)
    flat = {_leaf_key(i): np.asarray(leaf) for i, leaf in enumerate(leaves)}
    meta = dict(
      self.identity,
      format_version=FORMAT_VERSION,
      step=int(step),
      leaves=describe(state),
    )
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
      ),
      force=True,
    )
    self.manager.wait_until_finished()
    logging.info('Saved checkpoint %d to %s.', step, self.directory)

  def _read_meta(self, step: int) -> dict:
    return self.manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )['meta']

  def check_identity(self, template: Any) -> None:
    """Raises ValueError if the newest readable checkpoint belongs to another model."""
    for step in reversed(self.all_steps()):
      try:
        meta = self._read_meta(step)
      except Exception:  # noqa: BLE001 - unreadable: restore() deals with it
        continue
      theirs = {k: meta.get(k) for k in self.identity}
      if theirs != self.identity or meta.get('leaves') != describe(template):
        diff = {
          k: (meta.get(k), v)
          for k, v in self.identity.items()
          if meta.get(k) != v
        }
        raise ValueError(
          f'Checkpoint directory {self.directory} holds checkpoints of another model '
          f'(step {step}: {theirs}); this run is {self.identity}. Differences '
          f'(saved, this run): {diff or "parameter/optimizer tree shapes"}. Use '
          'another --workdir; nothing was changed.'
        )
      return

  def restore(self, template: Any) -> Any | None:
    """Newest good checkpoint as a tree shaped like ``template``, or None if there is none.

    Unreadable checkpoints are logged and moved to ``<dir>/corrupt/``; older ones are tried.
    """
    self.check_identity(template)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    target = {
      _leaf_key(i): np.zeros(np.shape(leaf), np.asarray(leaf).dtype)
      for i, leaf in enumerate(leaves)
    }
    bad = []
    restored = None
    for step in reversed(self.all_steps()):
      try:
        meta = self._read_meta(step)
        if meta.get('leaves') != describe(template):
          raise ValueError('its metadata does not describe this state tree')
        flat = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )['state']
        values = [np.asarray(flat[_leaf_key(i)]) for i in range(len(leaves))]
        for value, leaf in zip(values, leaves):
          if value.shape != np.shape(leaf):
            raise ValueError(f'leaf shape {value.shape} != {np.shape(leaf)}')
        restored = jax.tree_util.tree_unflatten(treedef, values)
        logging.info('Restored checkpoint %d from %s.', step, self.directory)
        break
      except Exception as e:  # noqa: BLE001 - any failure to read means: try older
        logging.warning(
          'Checkpoint %d in %s is unreadable (%s: %s); falling back to '
          'an older one.',
          step,
          self.directory,
          type(e).__name__,
          e,
        )
        bad.append(step)
    if bad:
      self._move_aside(bad)
    return restored

  def restore_leaves(self) -> tuple[dict, dict[str, np.ndarray]] | None:
    """Newest readable checkpoint without a template: ``(meta, {leaf path: array})``.

    The leaf paths are ``jax.tree_util.keystr`` of the saved state (e.g.
    ``.ema_params['NFNet/~/linear']['w']``), so a tool that knows only the workdir (predict,
    ``init_from``) reads the params without rebuilding the optimizer. Read-only: an
    unreadable checkpoint is logged and skipped, never moved. None if none is readable.
    """
    for step in reversed(self.all_steps()):
      try:
        meta = self._read_meta(step)
        described = meta['leaves']
        target = {
          _leaf_key(i): np.zeros(shape, jax.numpy.dtype(dtype))
          for i, (_, shape, dtype) in enumerate(described)
        }
        flat = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )['state']
        leaves = {
          path: np.asarray(flat[_leaf_key(i)])
          for i, (path, _, _) in enumerate(described)
        }
        logging.info('Read checkpoint %d from %s.', step, self.directory)
        return meta, leaves
      except Exception as e:  # noqa: BLE001 - any failure to read means: try older
        logging.warning(
          'Checkpoint %d in %s is unreadable (%s: %s); trying an older one.',
          step,
          self.directory,
          type(e).__name__,
          e,
        )
    return None

  def _move_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      aside = os.path.join(self.directory, 'corrupt')
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(aside, f'{step}.{int(time.time())}')
        if os.path.exists(src):
          os.rename(src, dst)
          logging.warning('Moved unreadable checkpoint %s to %s.', src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('nfnets_checkpoint_move_aside')
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()
