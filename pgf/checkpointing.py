"""Orbax checkpoints that survive preemption and torn writes.

* Saves go through `ocp.CheckpointManager` with the args API (`ocp.args.StandardSave`), which
  writes each step into a temporary directory and renames it when complete (atomic on local
  disks and GCS), and keeps the last `keep` steps.
* Restores try the newest step first; a step that fails to restore (truncated or missing
  files) is moved aside to `<workdir>/checkpoints_corrupt/` with a warning, never deleted, and
  the next older step is tried. Moving it aside also stops keep-last-k from counting the torn
  step and deleting the good one, and lets the resumed run save that step number again.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


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
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore_latest(self, target: Any) -> tuple[Any, int | None]:
    """(state, step) from the newest complete checkpoint, or (None, None) if there is none.

    Args:
      target: a pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays describing the
        state; restored arrays get its shapes, dtypes and shardings.
    """
    for step in reversed(self.all_steps()):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        return state, step
      except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
        self._move_aside(step, e)
    return None, None

  def _move_aside(self, step: int, error: Exception) -> None:
    os.makedirs(self.corrupt_directory, exist_ok=True)
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.corrupt_directory, str(step))
    suffix = 0
    while os.path.exists(target):
      suffix += 1
      target = os.path.join(self.corrupt_directory, f"{step}.{suffix}")
    log.warning("Checkpoint at step %d could not be restored (%s: %s); moved it to %s and "
                "falling back to the previous one.", step, type(error).__name__,
                str(error).splitlines()[0][:200] if str(error) else "", target)
    if os.path.exists(source):
      shutil.move(source, target)
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
