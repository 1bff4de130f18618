"""Reading what a training run left in its workdir (see pgf/train/loop.py).

    metrics.jsonl               one JSON object per line: {"step", "kind", ...metrics}
    config.json, recipe.json    the ConfigDict and the pgf.Recipe of the run
    checkpoints/<step>/         orbax checkpoints of {"step", "params", "opt_state", ...}

Everything here is read-only and tolerant of a run that is still going (a torn last line of
metrics.jsonl is skipped).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from pgf.recipes import Recipe

__all__ = ["read_metrics", "metric_series", "recipe_from_dict", "load_recipe", "load_config",
           "checkpoint_steps", "restore_checkpoint", "total_steps_from_config",
           "TRAIN_EXAMPLES"]

# Training-set sizes, to turn `total_epochs` into steps when a config gives epochs.
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "cifar10": 50_000, "digits": 1_497}
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _check_workdir(workdir: str) -> str:
  if not os.path.isdir(workdir):
    raise ValueError(f"workdir={workdir!r} is not a directory")
  return workdir


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl` (only those of `kind` if given), in file order.

  The metric writer stores NaN/inf as strings to keep the file valid JSON; they come back as
  floats here.
  """
  path = os.path.join(_check_workdir(workdir), "metrics.jsonl")
  if not os.path.exists(path):
    raise ValueError(f"workdir={workdir!r} has no metrics.jsonl (has the run started?)")
  records = []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line torn by a kill
      if kind is None or record.get("kind") == kind:
        records.append({k: _NON_FINITE.get(v, v) if isinstance(v, str) else v
                        for k, v in record.items()})
  return records


def metric_series(records, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the records that have a numeric `key`."""
  pairs = [(r["step"], float(r[key])) for r in records
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
  if not pairs:
    return np.zeros(0, np.int64), np.zeros(0)
  steps, values = zip(*pairs)
  return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
  """Inverse of `Recipe.to_dict()` (what train.py saves as recipe.json)."""
  return Recipe.from_dict(data)


def stored_masks(state: dict[str, Any], recipe: Recipe) -> dict[str, Any] | None:
  """The masks the gradient_flow state of a restored train state holds (runs with
  `mask_update_every > 1`), else None. Works on target-less restores, where the state's
  NamedTuple comes back as a {"count", "masks"} dict."""
  if recipe.mask_update_every <= 1:
    return None
  found = []

  def visit(node):
    if isinstance(node, dict):
      if set(node) == {"count", "masks"}:
        found.append(node["masks"])
        return
      children = node.values()
    elif isinstance(node, (list, tuple)):
      if hasattr(node, "masks") and hasattr(node, "count"):
        found.append(node.masks)
        return
      children = node
    else:
      return
    for child in children:
      visit(child)

  visit(state.get("opt_state"))
  if len(found) != 1:
    raise ValueError(f"expected one gradient_flow state with masks in the checkpoint, found "
                     f"{len(found)}")
  return found[0]


def load_recipe(workdir: str) -> Recipe:
  path = os.path.join(_check_workdir(workdir), "recipe.json")
  if not os.path.exists(path):
    raise ValueError(f"workdir={workdir!r} has no recipe.json (not a pgf training run?)")
  with open(path) as f:
    return recipe_from_dict(json.load(f))


def load_config(workdir: str):
  """The run's config (config.json) as a ConfigDict."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(_check_workdir(workdir), "config.json")
  if not os.path.exists(path):
    raise ValueError(f"workdir={workdir!r} has no config.json (not a pgf training run?)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(_check_workdir(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_checkpoint(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """(state, step): the saved train state of `step` (default: the newest) as NumPy arrays.

  No target structure is needed, so any run's checkpoint restores; NamedTuples in the optimizer
  state come back as plain containers (see `pgf.analysis.noise.find_adam_states`).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  steps = checkpoint_steps(workdir)
  if not steps:
    raise ValueError(f"workdir={workdir!r} has no checkpoints under checkpoints/")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"step={step}: no checkpoint for it in {workdir!r} (have {steps})")
  with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints")) as manager:
    state = manager.restore(step, args=ocp.args.StandardRestore())
  return dict(state), int(step)


def total_steps_from_config(config, steps: int | None = None) -> int:
  """Training steps of a config: `steps` if given, else config.total_steps, else epochs.

  Epochs become steps with the training-set size of a known dataset (`TRAIN_EXAMPLES`), the
  way train.py counts them (ceil(epochs * examples / batch)).
  """
  if steps is not None and steps > 0:
    return int(steps)
  total = config.get("total_steps", -1)
  if isinstance(total, int) and total > 0:
    return total
  epochs = config.get("total_epochs", 0.0) or 0.0
  dataset = config.get("data", {}).get("name")
  if epochs > 0 and dataset in TRAIN_EXAMPLES:
    return int(math.ceil(epochs * TRAIN_EXAMPLES[dataset] / config.batch_size))
  raise ValueError(f"config.total_steps={total!r}, config.total_epochs={epochs!r} with "
                   f"config.data.name={dataset!r}: cannot tell the number of training steps; "
                   "pass --steps")
