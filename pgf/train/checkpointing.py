"""Orbax checkpoints that survive preemption and torn writes.

* Saves go through `ocp.CheckpointManager` with the args API (`ocp.args.StandardSave`), which
  writes each step into a temporary directory and renames it when complete (atomic on local
  disks and GCS), and keeps the last `keep` steps.
* Restores try the newest step first; a step that fails to restore (truncated or missing
  files) is moved aside to `<workdir>/checkpoints_corrupt/` with a warning, never deleted, and
  the next older step is tried. Moving it aside also stops keep-last-k from counting the torn
  step and deleting the good one, and lets the resumed run save that step number again.
* With several processes (hosts), each reads its own shards, so a step torn on one host only
  restores on the others. Which step to try, whether it restored everywhere, and what is moved
  aside are agreed across processes (`pgf.train.multihost`) before any of them goes on: all resume
  from the same step, and process 0 alone moves a step aside in the shared directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import orbax.checkpoint as ocp
from etils import epath  # orbax's path type

from pgf.train import multihost

log = logging.getLogger(__name__)

ITEM = "default"  # the CheckpointManager's item directory of a single-item save


class Checkpointer:
  """Periodic and final checkpoints of one train state pytree under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.corrupt_directory = os.path.abspath(os.path.join(workdir, "checkpoints_corrupt"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(keep), 1), create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any) -> bool:
    """Saves `state` at `step` (no-op if that step is already saved)."""
    # Every process must take the same branch: a save is a collective in orbax.
    if multihost.agree_max(step in self.manager.all_steps(), "checkpoint already saved", step):
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore_latest(self, target: Any) -> tuple[Any, int | None]:
    """(state, step) from the newest complete checkpoint, or (None, None) if there is none.

    Every process returns the same step. A step that does not restore on some process is
    moved aside (by process 0) and the next older one is tried, by all processes together.

    Args:
      target: a pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays describing the
        state; restored arrays get its shapes, dtypes and shardings.
    """
    below = None
    while True:
      step = agreed_newest_step(self.all_steps(), below, "newest checkpoint to restore")
      if step is None:
        return None, None
      state, error = None, None
      try:
        state = self._restore_here(step, target)
      except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
        error = e
      # Doubles as the barrier after a restore.
      if multihost.agree_min(error is None, "checkpoint restored everywhere", step):
        return state, step
      self._move_aside(step, error)
      below = step

  def _restore_here(self, step: int, target: Any) -> Any:
    """This process's shards of `step`, read by orbax's handler directly.

    `CheckpointManager.restore` ends in a barrier across processes; a process whose read
    fails skips it, and the others would wait there forever. Reading through the handler has
    no barrier, and `restore_latest`'s agreement on the outcome takes its place.
    """
    handler = ocp.StandardCheckpointHandler()
    try:
      return handler.restore(epath.Path(self.directory) / str(step) / ITEM,
                             args=ocp.args.StandardRestore(target))
    finally:
      handler.close()

  def _move_aside(self, step: int, error: Exception | None) -> None:
    """Moves `step` to the corrupt directory (process 0, once); every process waits for it."""
    why = (f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
           if error is not None else "it did not restore on another process")
    if multihost.is_main():
      os.makedirs(self.corrupt_directory, exist_ok=True)
      source = os.path.join(self.directory, str(step))
      target = os.path.join(self.corrupt_directory, str(step))
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(self.corrupt_directory, f"{step}.{suffix}")
      if os.path.exists(source):
        shutil.move(source, target)
      where = f"moved it to {target}"
    else:
      where = "process 0 moves it aside"
    log.warning("Checkpoint at step %d could not be restored (%s); %s and falling back to "
                "the previous one.", step, why, where)
    multihost.barrier(f"pgf_checkpoint_moved_aside_{step}")
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def agreed_newest_step(steps: list[int], below: int | None = None,
                       name: str = "newest checkpoint to restore") -> int | None:
  """The newest of `steps` (below `below`, if given) that every process sees, or None.

  Each process proposes its newest step and all take the smallest proposal, so a step that
  some process cannot see yet (a shared filesystem lagging on one host) is never chosen.
  """
  local = [s for s in steps if below is None or s < below]
  step = multihost.agree_min(local[-1] if local else -1, name, -1 if below is None else below)
  return None if step < 0 else step
