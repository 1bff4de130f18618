"""A recipe's schedules evaluated over many steps at once, as NumPy arrays.

`Recipe.decay` and `Recipe.stage_index` are elementwise jnp functions of the step, so a whole
run (10^5 steps) is evaluated in one vectorised call instead of a Python loop. FLOPs accounting
and the schedule plot both read these arrays, so they agree with what training does.
"""

from __future__ import annotations

import numpy as np

from pgf.recipes import Recipe

__all__ = ["schedule_arrays"]


def schedule_arrays(recipe: Recipe, steps=None) -> dict:
  """D(j) and the N:M pattern of every rule at each step.

  Args:
    recipe: a `pgf.Recipe`.
    steps: int array of steps (default: every step 0 .. total_steps - 1).

  Returns:
    {"steps": int64 array, "decay": float array D(j),
     "rules": a tuple aligned with `recipe.rules`, each a dict with
       "pattern" (the rule's regex), "target" ("N:M"),
       "n", "m" (int arrays: the pattern in force, as `Recipe.pattern`; M:M when dense),
       "kept" (n / m),
       "effective" (kept + D·(1 − kept): the share of the forward weight mass that flows, as
         in `Recipe.schedule`), and
       "compute" (share of the matmul a kernel must multiply: 1 while D > 0, since every
         weight is still non-zero in the forward pass, else kept)}.
  """
  steps = np.arange(recipe.total_steps) if steps is None else np.asarray(steps, np.int64)
  if steps.ndim != 1:
    raise ValueError(f"steps must be a 1-d array of ints, got shape {steps.shape}")
  decay = np.broadcast_to(np.asarray(recipe.decay(steps), np.float64), steps.shape)
  dense_phase = (steps < recipe.dense_steps) | (recipe.method == "dense")
  rules = []
  for rule in recipe.rules:
    stages = recipe.stages(rule)
    index = np.broadcast_to(np.asarray(recipe.stage_index(rule, steps)), steps.shape)
    # In the dense phase the pattern reads M:M with the rule's own M, as Recipe.pattern says.
    m = np.where(dense_phase, rule.m, np.asarray([s[1] for s in stages])[index])
    n = np.where(dense_phase, rule.m, np.asarray([s[0] for s in stages])[index])
    kept = n / m
    rules.append({
        "pattern": rule.pattern, "target": rule.nm, "n": n, "m": m, "kept": kept,
        "effective": kept + decay * (1.0 - kept),
        "compute": np.where(decay > 0, 1.0, kept),
    })
  return {"steps": steps, "decay": decay, "rules": tuple(rules)}
