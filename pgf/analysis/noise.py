"""Gradient-noise statistics of N:M training (paper §4, Fig. 3), as pure jit-friendly functions.

The paper explains the accuracy drop of SR-STE at high sparsity by noisier gradient magnitudes
and a noisier Adam second moment in the sparsified layers. These functions measure, pooled over
the sparsified kernels, the variance of |g| and of Adam's ν separately at kept and at pruned
positions of the mask Φ in force, and how many mask positions flipped between two measurements.

    stats, masks = noise_stats(params, grads, opt_state, recipe, step, prev_masks)

is what train.py calls every `config.noise_every` steps (inside the jitted step; the returned
masks are carried to the next measurement). `grads` are the raw gradients dL/dW~ that reach
the optimizer chain; `opt_state` is the state after the update, so ν includes this step.
`checkpoint_noise_stats(workdir)` gives the ν statistics of a saved run (gradients are not
checkpointed).

Every statistic is a float32 scalar (0-d array; `as_floats` turns a dict of them into Python
floats). Variances are population variances (ddof 0) over all selected entries of all kernels
together; a statistic over an empty set (e.g. no pruned positions) is NaN.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from pgf.recipes import Recipe
from pgf.sparsify import current_masks, leaf_path
from pgf.transform import GradientFlowMaskState, find_nodes

__all__ = ["noise_stats", "gradient_noise", "mask_flip_fraction", "masked_mean_var",
           "find_adam_states", "adam_nu", "checkpoint_noise_stats", "as_floats", "STAT_KEYS"]

STAT_KEYS = ("grad_abs_mean_kept", "grad_abs_mean_pruned", "grad_abs_var_kept",
             "grad_abs_var_pruned", "grad_abs_var_all", "nu_mean_kept", "nu_mean_pruned",
             "nu_var_kept", "nu_var_pruned", "nu_var_all", "kept_fraction",
             "mask_flip_fraction")


def _is_adam_state(node) -> bool:
  # A checkpoint restored without a target turns the NamedTuple into a dict.
  return isinstance(node, optax.ScaleByAdamState) or (
      isinstance(node, Mapping) and set(node) == {"count", "mu", "nu"})


def find_adam_states(opt_state) -> list:
  """Every `optax.ScaleByAdamState` (or its restored dict form) inside a nested opt_state."""
  return find_nodes(opt_state, _is_adam_state)


def adam_nu(opt_state):
  """The second-moment estimate ν (a params-like pytree) of the one Adam state in opt_state."""
  states = find_adam_states(opt_state)
  if len(states) != 1:
    raise ValueError(f"opt_state: expected exactly one optax ScaleByAdamState (adam / adamw "
                     f"inside a chain), found {len(states)}")
  state = states[0]
  return state["nu"] if isinstance(state, Mapping) else state.nu


def _by_path(tree) -> dict[str, Any]:
  return {leaf_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def masked_mean_var(arrays: Sequence[jax.Array], selects: Sequence[jax.Array]):
  """(mean, variance, count) of the entries of `arrays` where `selects` is True, pooled.

  Two passes (mean first, then squared deviations) so float32 keeps its precision for values
  like Adam's ν (~1e-8) whose squares are tiny. Empty selection: NaN mean and variance.
  """
  count = sum(jnp.sum(s, dtype=jnp.float32) for s in selects)
  total = sum(jnp.sum(jnp.where(s, x, 0.0), dtype=jnp.float32) for x, s in zip(arrays, selects))
  mean = total / jnp.maximum(count, 1.0)
  squares = sum(jnp.sum(jnp.where(s, jnp.square(x - mean), 0.0), dtype=jnp.float32)
                for x, s in zip(arrays, selects))
  nan = jnp.float32(jnp.nan)
  empty = count == 0
  return (jnp.where(empty, nan, mean), jnp.where(empty, nan, squares / jnp.maximum(count, 1.0)),
          count)


def gradient_noise(grads, nu, masks: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Noise statistics over the leaves named in `masks`.

  Args:
    grads: gradients, a pytree like the params, or None (then no grad_abs_* keys).
    nu: Adam's second moment, a pytree like the params (see `adam_nu`).
    masks: {leaf path: bool mask Φ} (from `pgf.current_masks`); True = kept.

  Returns:
    {grad_abs_{mean,var}_{kept,pruned}, grad_abs_var_all, nu_{mean,var}_{kept,pruned},
     nu_var_all, kept_fraction}: float32 scalars.
  """
  if not masks:
    raise ValueError("masks is empty: the recipe sparsifies no leaf, so there is nothing to "
                     "measure")
  grads_by_path = None if grads is None else _by_path(grads)
  nu_by_path = _by_path(nu)
  missing = [p for p in masks if (grads_by_path is not None and p not in grads_by_path)
             or not hasattr(nu_by_path.get(p), "shape")]
  if missing:
    raise ValueError(f"grads or nu lack the masked leaves {missing[:3]} (paths must match the "
                     "params; is Adam masked away from them?)")
  kept = [jnp.asarray(masks[p], bool) for p in masks]
  pruned = [~k for k in kept]
  everything = [jnp.ones_like(k) for k in kept]
  stats = {}
  measured = [("nu", [jnp.asarray(nu_by_path[p]).astype(jnp.float32) for p in masks])]
  if grads_by_path is not None:
    measured.insert(0, ("grad_abs", [jnp.abs(jnp.asarray(grads_by_path[p])).astype(jnp.float32)
                                     for p in masks]))
  for name, values in measured:
    for where, selects in (("kept", kept), ("pruned", pruned)):
      mean, var, _ = masked_mean_var(values, selects)
      stats[f"{name}_mean_{where}"] = mean
      stats[f"{name}_var_{where}"] = var
    stats[f"{name}_var_all"] = masked_mean_var(values, everything)[1]
  kept_count = sum(jnp.sum(k, dtype=jnp.float32) for k in kept)
  stats["kept_fraction"] = kept_count / sum(k.size for k in kept)
  return stats


def mask_flip_fraction(previous: Mapping[str, jax.Array],
                       current: Mapping[str, jax.Array]) -> jax.Array:
  """Fraction of all mask positions whose kept/pruned state differs (float32 scalar).

  Each flip of a kept weight is paired with one of a pruned weight in its group, so the
  fraction of kept weights replaced is this value / (2 · N/M).
  """
  if set(previous) != set(current):
    raise ValueError(f"mask dicts differ in leaves: only in previous "
                     f"{sorted(set(previous) - set(current))[:3]}, only in current "
                     f"{sorted(set(current) - set(previous))[:3]}")
  for path in current:
    if jnp.shape(previous[path]) != jnp.shape(current[path]):
      raise ValueError(f"masks[{path!r}]: shape {jnp.shape(previous[path])} vs "
                       f"{jnp.shape(current[path])}")
  flips = sum(jnp.sum(jnp.asarray(previous[p], bool) != jnp.asarray(current[p], bool),
                      dtype=jnp.float32) for p in current)
  return flips / max(sum(jnp.size(current[p]) for p in current), 1)


def noise_stats(params, grads, opt_state, recipe: Recipe, step,
                prev_masks: Mapping[str, jax.Array] | None = None):
  """All statistics at `step` and the masks they used (to pass as `prev_masks` next time).

  Args:
    params: the dense params W of this step (the masks Φ are those in force at `step`).
    grads: gradients of this step, a pytree like params.
    opt_state: an optimizer state holding one Adam state (e.g. the train loop's
      `optax.chain(pgf.gradient_flow(recipe), ..., optax.adamw(...))`); with
      `recipe.mask_update_every > 1` it also holds the masks.
    recipe: the run's `pgf.Recipe`.
    step: int or traced int32.
    prev_masks: the masks returned by the previous measurement; without them
      "mask_flip_fraction" is NaN.

  Returns:
    (stats, masks): stats has every key of `STAT_KEYS` (float32 scalars); masks is
    {leaf path: bool mask}.
  """
  stored = _stored_masks(opt_state) if recipe.mask_update_every > 1 else None
  masks = current_masks(params, recipe, step, masks=stored)
  stats = gradient_noise(grads, adam_nu(opt_state), masks)
  stats["mask_flip_fraction"] = (jnp.float32(jnp.nan) if prev_masks is None
                                 else mask_flip_fraction(prev_masks, masks))
  return stats, masks


def _stored_masks(opt_state):
  """The masks of a gradient_flow state kept between refreshes (live or restored form)."""
  found = []

  def visit(node):
    if isinstance(node, Mapping) and set(node) == {"count", "masks"}:
      found.append(node["masks"])
      return True
    if isinstance(node, GradientFlowMaskState):
      found.append(node.masks)
      return True
    return False

  jax.tree_util.tree_map(lambda _: None, opt_state, is_leaf=visit)
  if len(found) != 1:
    raise ValueError(f"opt_state: expected one gradient_flow state holding masks "
                     f"(mask_update_every > 1), found {len(found)}")
  return found[0]


def checkpoint_noise_stats(workdir: str, step: int | None = None) -> dict[str, float]:
  """The statistics a saved run's state allows, at a checkpoint (default: the newest).

  Gradients are not checkpointed, so this gives the nu_* keys and kept_fraction (Adam's ν as
  of that step, split by the masks in force there), plus mask_flip_fraction against the masks
  of the run's last in-training measurement when it logged noise (`config.noise_every`).
  """
  from pgf.analysis import runs  # pylint: disable=g-import-not-at-top
  recipe = runs.load_recipe(workdir)
  if not recipe.rules:
    raise ValueError(f"workdir={workdir!r}: its recipe has no rules, nothing to measure")
  state, saved_step = runs.restore_checkpoint(workdir, step)
  params, opt_state = state["params"], state["opt_state"]
  stored = _stored_masks(opt_state) if recipe.mask_update_every > 1 else None
  # The saved state is the one *after* `saved_step` updates: its masks are those of that step.
  masks = current_masks(params, recipe, saved_step, masks=stored)
  stats = gradient_noise(None, adam_nu(opt_state), masks)
  previous = state.get("noise_masks")
  stats["mask_flip_fraction"] = (jnp.float32(jnp.nan) if previous is None
                                 else mask_flip_fraction(previous, masks))
  return dict(as_floats(stats), step=float(saved_step))


def as_floats(stats: Mapping[str, Any]) -> dict[str, float]:
  """{key: Python float} from a dict of scalar arrays (after the jitted computation)."""
  return {k: float(v) for k, v in jax.device_get(dict(stats)).items()}
