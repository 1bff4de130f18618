"""Pytree level: which leaves a recipe sparsifies, the forward `sparsify`, and `finalize`.

Leaves are addressed by the "/"-joined key path of the params pytree (e.g.
`encoder/encoderblock_3/mlp/fc1/kernel`); the first matching rule wins and unmatched leaves
(biases, norms, embeddings, ...) pass through untouched.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from pgf.masks import normalize_axes, nm_mask
from pgf.recipes import Recipe, Rule

__all__ = ["sparsify", "finalize", "leaf_path", "match_leaves", "check_params",
           "current_masks", "straight_through"]

Masks = Mapping[str, jax.Array]


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_path(key_path) -> str:
  """"/"-joined names of a jax key path (dict keys, attributes, sequence indices)."""
  names = [_key_name(k) for k in key_path]
  # Flax NNX wraps arrays in Variables whose pytree child is called "value"; the user's rules
  # address the parameter, not the wrapper field.
  if len(names) > 1 and names[-1] == "value":
    names = names[:-1]
  return "/".join(names)


def match_leaves(params, recipe: Recipe) -> dict[str, tuple[int, tuple[int, ...]]]:
  """{path: (rule index, shape)} for every array leaf some rule matches."""
  matched = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = leaf_path(key_path)
    index = recipe.rule_for(path)
    if index is not None and hasattr(leaf, "shape"):
      matched[path] = (index, tuple(leaf.shape))
  return matched


def check_params(params, recipe: Recipe, allow_unmatched_rules: bool = False) -> dict:
  """Checks that the recipe fits the params before anything is compiled.

  Every rule must match at least one leaf (a rule that matches nothing is almost always a typo
  in the regex), and each matched leaf's grouped axis length must be divisible by the M of
  every stage the rule goes through. All problems are reported in one ValueError.

  Returns:
    {path: (rule index, shape)} of the matched leaves.
  """
  matched = match_leaves(params, recipe)
  problems = []
  used = {index for index, _ in matched.values()}
  if not allow_unmatched_rules:
    for i, rule in enumerate(recipe.rules):
      if i not in used:
        problems.append(f"rules[{i}] pattern {rule.pattern!r} matches no parameter (paths look "
                        f"like {_example_paths(params)})")
  for path, (index, shape) in matched.items():
    rule = recipe.rules[index]
    try:
      axes = normalize_axes(shape, rule.axis)
    except ValueError as e:
      problems.append(f"{path} (rules[{index}] {rule.pattern!r}): {e}")
      continue
    length = math.prod(shape[a] for a in axes)
    for n, m in recipe.stages(rule):
      if length % m:
        hint = " (lower sdgf_k)" if recipe.sdgf == "sdgf_geometric" and m != rule.m else ""
        problems.append(f"{path} shape {shape}: rules[{index}] '{n}:{m}' needs the length "
                        f"{length} of axis {rule.axis!r} to be divisible by {m}{hint}")
  if problems:
    raise ValueError("pgf recipe does not fit these params:\n  - " + "\n  - ".join(problems))
  return matched


def _example_paths(params, limit: int = 3) -> str:
  paths = [leaf_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return ", ".join(repr(p) for p in paths[:limit]) + (", ..." if len(paths) > limit else "")


def _stage_mask(w: jax.Array, recipe: Recipe, rule: Rule, stage) -> jax.Array:
  """nm_mask at the rule's stage `stage` (traced). One compiled branch per distinct m."""
  stages = recipe.stages(rule)
  ms = sorted({m for _, m in stages})
  ns = jnp.asarray([n for n, _ in stages], jnp.int32)
  n = ns[stage]
  if len(ms) == 1:
    return nm_mask(w, n, ms[0], rule.axis)
  branch = jnp.asarray([ms.index(m) for _, m in stages], jnp.int32)[stage]
  return jax.lax.switch(branch, [lambda w, n, m=m: nm_mask(w, n, m, rule.axis) for m in ms],
                        w, n)


def _pattern_changed(recipe: Recipe, rule: Rule, step) -> jax.Array:
  """True when the pattern in force differs from the previous step's (stage or phase edge)."""
  prev = step - 1
  stage_edge = recipe.stage_index(rule, step) != recipe.stage_index(rule, prev)
  phase_edge = (step == recipe.dense_steps) | (step == recipe.finetune_start)
  return stage_edge | phase_edge


def refresh_due(recipe: Recipe, rule: Rule, step) -> jax.Array:
  """Whether masks are recomputed from |W| at `step` (always, unless mask_update_every > 1)."""
  if recipe.mask_update_every == 1:
    return jnp.bool_(True)
  step = jnp.asarray(step, jnp.int32)
  return (step % recipe.mask_update_every == 0) | _pattern_changed(recipe, rule, step)


def leaf_mask(w: jax.Array, recipe: Recipe, rule: Rule, step, stored=None) -> jax.Array:
  """The mask Phi in force for one leaf at `step` (the stored one between refreshes)."""
  step = jnp.asarray(step, jnp.int32)
  compute = lambda: _stage_mask(jax.lax.stop_gradient(w), recipe, rule,
                                recipe.stage_index(rule, step))
  if stored is None or recipe.mask_update_every == 1:
    return compute()
  return jax.lax.cond(refresh_due(recipe, rule, step), compute, lambda: stored)


@jax.custom_vjp
def straight_through(w: jax.Array, scale: jax.Array) -> jax.Array:
  """w * scale forward; the cotangent passes to w unchanged (straight-through estimator)."""
  return w * scale


def _straight_through_fwd(w, scale):
  return w * scale, scale


def _straight_through_bwd(scale, g):
  return g, jnp.zeros_like(scale)


straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def _map_matched(fn, params, recipe: Recipe):
  """tree map applying fn(path, leaf, rule) to matched leaves, identity elsewhere."""
  def visit(key_path, leaf):
    if not hasattr(leaf, "shape"):
      return leaf
    path = leaf_path(key_path)
    index = recipe.rule_for(path)
    return leaf if index is None else fn(path, leaf, recipe.rules[index])
  return jax.tree_util.tree_map_with_path(visit, params)


def sparsify(params, recipe: Recipe, step, masks: Masks | None = None):
  """Forward weights W ⊙ (Phi + D(step)·(1 − Phi)) with a straight-through gradient to W.

  Args:
    params: any params pytree (Flax linen `variables["params"]`, an NNX `nnx.State`, a dict).
    recipe: the pgf.Recipe.
    step: the training step (Python int or traced int32 scalar: the step is data, so a jitted
      train step compiles once for the whole run).
    masks: required when `recipe.mask_update_every > 1`:
      `pgf.masks_from_state(opt_state)` gives the masks the optimizer state holds.

  Returns:
    A pytree like `params` whose matched leaves are the effective (sparsified) weights.
    `jax.grad` through it yields dL/dW~ for matched leaves, which `pgf.gradient_flow` turns into
    the method's gradient.
  """
  if recipe.method == "dense":
    return params
  if recipe.mask_update_every > 1 and masks is None:
    raise ValueError(
        f"Recipe.mask_update_every={recipe.mask_update_every} keeps masks in the optimizer "
        "state: call pgf.sparsify(params, recipe, step, masks=pgf.masks_from_state(opt_state))")
  check_params(params, recipe)
  decay = recipe.decay(step)

  def apply(path, w, rule):
    stored = None if masks is None else masks[path]
    phi = leaf_mask(w, recipe, rule, step, stored).astype(w.dtype)
    scale = phi + decay.astype(w.dtype) * (1 - phi)
    return straight_through(w, jax.lax.stop_gradient(scale))

  return _map_matched(apply, params, recipe)


def current_masks(params, recipe: Recipe, step, masks: Masks | None = None) -> dict[str, Any]:
  """{path: bool mask Phi} in force at `step` (for logging and analysis)."""
  out = {}

  def record(path, w, rule):
    stored = None if masks is None else masks[path]
    out[path] = leaf_mask(w, recipe, rule, step, stored)
    return w

  _map_matched(record, params, recipe)
  return out


def finalize(params, recipe: Recipe):
  """Hard N:M at every rule's target pattern: what you evaluate and deploy.

  Matched leaves become W ⊙ Phi_target (exact zeros elsewhere); everything else is unchanged.
  Applies to every method, including "dense" (a one-shot magnitude prune).
  """
  check_params(params, recipe)
  return _map_matched(
      lambda path, w, rule: jnp.where(nm_mask(w, rule.n, rule.m, rule.axis), w,
                                      jnp.zeros_like(w)),
      params, recipe)


def match_summary(params, recipe: Recipe) -> str:
  """One line per rule: how many leaves and weights it matched (for logs)."""
  matched = match_leaves(params, recipe)
  lines = []
  for i, rule in enumerate(recipe.rules):
    shapes = [shape for index, shape in matched.values() if index == i]
    lines.append(f"{rule.pattern!r} {rule.nm} axis={rule.axis}: {len(shapes)} leaves, "
                 f"{sum(math.prod(s) for s in shapes):,} weights")
  return "\n".join(lines)
