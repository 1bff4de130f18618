"""Metrics to `metrics.jsonl` and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import math
import os
from typing import Any


def _plain(value: Any):
  """JSON-safe scalars (NaN/inf become strings so the file stays valid JSON)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends one JSON object per (step, kind) line; mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # optional dependency
        self._tb = None

  def truncate_after(self, step: int) -> None:
    """On (re)start: drop lines logged after the step the run starts from (they will be
    logged again); 0 when it starts from scratch."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line)
      except json.JSONDecodeError:
        continue  # a line torn by a kill
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key not in ("step", "kind") and isinstance(value, (int, float)):
          self._tb.add_scalar(f"{kind}/{key}", value, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
