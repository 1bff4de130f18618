"""Pytree level: which leaves a recipe sparsifies, the forward `sparsify`, and `finalize`.

Leaves are addressed by the "/"-joined key path of the params pytree (e.g.
`encoder/encoderblock_3/mlp/fc1/kernel`); the first matching rule wins and unmatched leaves
(biases, norms, embeddings, ...) pass through untouched.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pgf import opt_state as state_lib
from pgf.masks import is_nm, normalize_axes, nm_mask, stage_nm_mask
from pgf.opt_state import unwrap_variables
from pgf.recipes import Recipe, Rule, as_step

__all__ = ["sparsify", "finalize", "leaf_path", "match_leaves", "check_params",
           "current_masks", "target_masks", "straight_through", "unwrap_variables",
           "shapes_gradient"]

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


def check_recipe(recipe, fn: str, params=None) -> None:
  """TypeError unless `recipe` is a pgf.Recipe (names the swapped-arguments mistake)."""
  if isinstance(recipe, Recipe):
    return
  hint = (" (the params and the recipe are swapped: the params come first)"
          if isinstance(params, Recipe) else "")
  raise TypeError(f"pgf.{fn}(params, recipe, ...): `recipe` must be a pgf.Recipe, got "
                  f"{type(recipe).__name__}{hint}")


def rule_axis(rule: Rule, shape) -> int | tuple[int, ...]:
  """The grouping axis of `rule` for a leaf of `shape` (None resolves to 0 for rank <= 2).

  `check_params` has already refused the shapes where None is ambiguous (rank >= 3)."""
  return 0 if rule.axis is None else rule.axis


def match_leaves(params, recipe: Recipe) -> dict[str, tuple[int, tuple[int, ...]]]:
  """{path: (rule index, shape)} for every array leaf some rule matches."""
  check_recipe(recipe, "match_leaves", params)
  matched = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = leaf_path(key_path)
    index = recipe.rule_for(path)
    if index is not None and hasattr(leaf, "shape"):
      matched[path] = (index, tuple(leaf.shape))
  return matched


def _axis_choices(rank: int) -> str:
  """The usual grouping axes of a rank-`rank` kernel (>= 3), per layout."""
  stacked = rank - 2  # the input-feature axis of a Dense kernel under nn.scan / nn.remat_scan
  if rank == 3:
    return ("1 for a Dense kernel stacked by nn.scan (layers, in, out); 0 for attention "
            "Q/K/V (in, heads, head_dim); (0, 1) for attention out (heads, head_dim, out)")
  if rank == 4:
    return ("2 for a Dense kernel stacked twice, e.g. by nn.remat_scan (l1, l2, in, out); "
            "2 or (0, 1, 2) for a conv kernel HWIO; 1 for stacked attention Q/K/V (layers, in, "
            "heads, head_dim); (1, 2) for stacked attention out (layers, heads, head_dim, out)")
  return (f"{stacked} for a Dense kernel stacked {rank - 2} times by nn.scan / nn.remat_scan "
          f"({', '.join(f'l{i + 1}' for i in range(rank - 2))}, in, out): always its input-"
          "feature axis, never a layer axis")


def _rank_problem(path: str, index: int, rule: Rule, shape) -> str | None:
  where = f"{path} shape {shape}: rules[{index}] {rule.pattern!r}"
  if len(shape) == 0:
    return f"{where} matches a scalar, which has no axis to group; tighten the regex"
  if len(shape) == 1 and not rule.allow_1d:
    return (f"{where} matches a 1-D leaf (a bias or norm scale?), which would be pruned; "
            "tighten the regex (e.g. end it in /kernel) or opt in with "
            "(regex, 'N:M', {'allow_1d': True})")
  if len(shape) >= 3 and rule.axis is None:
    return (f"{where} matches a rank-{len(shape)} leaf, whose grouping axis is ambiguous: "
            f"give the rule the axis of the input features, e.g. (regex, '{rule.nm}', "
            f"{{'axis': {len(shape) - 2}}}) for a stacked Dense kernel; usual choices: "
            f"{_axis_choices(len(shape))}")
  return None


def check_params(params, recipe: Recipe, allow_unmatched_rules: bool = False) -> dict:
  """Checks that the recipe fits the params before anything is compiled.

  Every rule must match at least one leaf (a rule that matches nothing is almost always a typo
  in the regex) unless `allow_unmatched_rules` (e.g. sparsifying one subtree with a recipe for
  the whole model); a matched leaf must be a matrix or, with an explicit axis, a higher-rank
  kernel (1-D leaves only with `allow_1d`); and each matched leaf's grouped axis length must
  be divisible by the M of every stage the rule goes through. All problems are reported in one
  ValueError.

  Returns:
    {path: (rule index, shape)} of the matched leaves.
  """
  check_recipe(recipe, "check_params", params)
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
    problem = _rank_problem(path, index, rule, shape)
    if problem:
      problems.append(problem)
      continue
    axis = rule_axis(rule, shape)
    try:
      axes = normalize_axes(shape, axis)
    except ValueError as e:
      problems.append(f"{path} (rules[{index}] {rule.pattern!r}): {e}")
      continue
    length = math.prod(shape[a] for a in axes)
    for n, m in recipe.stages(rule):
      if length % m:
        hint = (" (lower sdgf_k, or let pgf.fit_sdgf_k(params, recipe) choose it per rule)"
                if recipe.sdgf == "sdgf_geometric" and m != rule.m else "")
        problems.append(f"{path} shape {shape}: rules[{index}] '{n}:{m}' needs the length "
                        f"{length} of axis {axis!r} to be divisible by {m}{hint}")
  if problems:
    raise ValueError("pgf recipe does not fit these params:\n  - " + "\n  - ".join(problems))
  return matched


def fit_sdgf_k(params, recipe: Recipe) -> tuple[Recipe, list[str]]:
  """The recipe with each rule's SDGF-geometric k lowered until every stage fits the params.

  Geometric stages run k*N:k*M, ..., 2N:2M, N:M, so the first stage needs every matched kernel's
  grouped axis to be divisible by k*M: ViT-B's 768-wide FF input cannot hold 8:1024 (1:128 at
  k = 8). For each rule without its own `sdgf_k`, this picks the largest power of two <= the
  recipe's `sdgf_k` whose k*M divides the grouped axis of every leaf the rule matches, and sets
  it on the rule. Rules that already fit, rules whose target M itself does not divide (left for
  `check_params` to report) and recipes without SDGF-geometric come back unchanged.

  Returns:
    (recipe, notes): the fitted recipe and one line per changed rule, for the log.
  """
  if recipe.sdgf != "sdgf_geometric":
    return recipe, []
  lengths: dict[int, set[int]] = {}
  for path, (index, shape) in match_leaves(params, recipe).items():
    rule = recipe.rules[index]
    if _rank_problem(path, index, rule, shape):
      continue
    try:
      axes = normalize_axes(shape, rule_axis(rule, shape))
    except ValueError:
      continue
    lengths.setdefault(index, set()).add(math.prod(shape[a] for a in axes))
  rules, notes = list(recipe.rules), []
  for index, found in sorted(lengths.items()):
    rule = rules[index]
    if rule.sdgf_k is not None or any(length % rule.m for length in found):
      continue
    k = recipe.sdgf_k
    while k > 1 and any(length % (k * rule.m) for length in found):
      k //= 2
    if k != recipe.sdgf_k:
      rules[index] = dataclasses.replace(rule, sdgf_k=k)
      stages = " -> ".join(f"{k // 2**i * rule.n}:{k // 2**i * rule.m}"
                           for i in range(k.bit_length()))
      notes.append(f"rules[{index}] {rule.pattern!r} {rule.nm}: sdgf_k {recipe.sdgf_k} -> {k} "
                   f"(grouped axis length {', '.join(map(str, sorted(found)))} is not divisible "
                   f"by {recipe.sdgf_k * rule.m}); geometric stages {stages}")
  if not notes:
    return recipe, []
  return dataclasses.replace(recipe, rules=tuple(rules)), notes


def _example_paths(params, limit: int = 3) -> str:
  paths = [leaf_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return ", ".join(repr(p) for p in paths[:limit]) + (", ..." if len(paths) > limit else "")


def _stage_mask(w: jax.Array, recipe: Recipe, rule: Rule, stage) -> jax.Array:
  """nm_mask at the rule's stage `stage` (traced). One compiled branch per distinct m."""
  stages = recipe.stages(rule)
  ms = sorted({m for _, m in stages})
  ns = jnp.asarray([n for n, _ in stages], jnp.int32)
  n = ns[stage]
  axis = rule_axis(rule, w.shape)
  if len(ms) == 1:
    return stage_nm_mask(w, n, ms[0], axis)
  branch = jnp.asarray([ms.index(m) for _, m in stages], jnp.int32)[stage]
  return jax.lax.switch(branch, [lambda w, n, m=m: stage_nm_mask(w, n, m, axis) for m in ms],
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
  step = as_step(step)
  return (step % recipe.mask_update_every == 0) | _pattern_changed(recipe, rule, step)


def leaf_mask(w: jax.Array, recipe: Recipe, rule: Rule, step, stored=None) -> jax.Array:
  """The mask Phi in force for one leaf at `step` (the stored one between refreshes)."""
  step = as_step(step)
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


def _checked_masks(masks, matched, fn: str, subtree: bool = False) -> dict | None:
  """The stored masks as a plain {path: array} dict, refusing ones that do not fit."""
  if masks is None:
    return None
  masks = unwrap_variables(masks)
  if not isinstance(masks, Mapping):
    raise TypeError(f"pgf.{fn}: masks must be the {{path: mask}} dict from "
                    f"pgf.masks_from_state(opt_state), got {type(masks).__name__}")
  missing = sorted(set(matched) - set(masks))
  extra = [] if subtree else sorted(set(masks) - set(matched))
  wrong = sorted(p for p in set(matched) & set(masks)
                 if tuple(getattr(masks[p], "shape", ())) != matched[p][1])
  if missing or extra or wrong:
    raise ValueError(
        f"pgf.{fn}: the masks do not belong to these params and this recipe (was "
        f"pgf.gradient_flow given a different recipe?): "
        + "; ".join(f"{what} {paths[:3]}{' ...' if len(paths) > 3 else ''}"
                    for what, paths in (("no mask for", missing), ("masks for unmatched", extra),
                                        ("wrong shape at", wrong)) if paths))
  return dict(masks)


def shapes_gradient(recipe: Recipe) -> bool:
  """Whether `pgf.gradient_flow(recipe)` changes the gradient (SR-STE's term, MDGF's decayed
  gradient); for every other method it only counts steps (and keeps stored masks)."""
  if recipe.method == "sr_ste":
    return True
  return recipe.mdgf is not None and recipe.gradient == "decayed"


def _is_step(x) -> bool:
  """An integer-step argument (or a mistaken float/bool/str one), as opposed to an optimizer
  state (a pytree)."""
  return isinstance(x, (int, float, str, bytes, np.generic)) or (
      hasattr(x, "dtype") and hasattr(x, "shape"))


def _integer_step_problem(recipe: Recipe) -> str | None:
  if recipe.mask_update_every > 1:
    return (f"recipe.mask_update_every={recipe.mask_update_every} keeps the masks in the "
            "optimizer state, and they hold only at the step its gradient_flow counts")
  if shapes_gradient(recipe):
    what = ("SR-STE's term" if recipe.method == "sr_ste"
            else f"MDGF's decayed gradient (method {recipe.method!r}, gradient='decayed')")
    return (f"pgf.gradient_flow adds {what} to the gradient, which is right only when it comes "
            "first on raw gradients, is built from this recipe and counts this step; only the "
            "optimizer state can show that")
  return None


def _state_or_step(opt_state, step, fn: str):
  if step is not None and opt_state is not None:
    raise TypeError(f"pgf.{fn}: give the optimizer state or step=, not both")
  if step is None and opt_state is None:
    raise TypeError(f"pgf.{fn}(params, recipe, opt_state): the optimizer state is missing "
                    "(it gives the step and the stored masks)")
  return step if opt_state is None else opt_state


def resolve(step_or_state, recipe: Recipe, masks, fn: str, *, allow_step: bool = False):
  """(step, masks) for `fn` from an optimizer state (checked at trace time: one gradient_flow,
  first on raw gradients, built from `recipe`) or, where that is safe, an integer step."""
  if _is_step(step_or_state):
    step = as_step(step_or_state, scalar=True)
    if not allow_step:
      problem = _integer_step_problem(recipe)
      if problem:
        raise TypeError(
            f"pgf.{fn}(params, recipe, step): an integer step is not enough here: {problem}. "
            f"Pass the optimizer state instead: pgf.{fn}(params, recipe, opt_state) (it reads "
            "the step and the stored masks from it). An integer step is accepted only where "
            "the model is a function of (recipe, step) alone: methods whose gradient_flow "
            "passes gradients unchanged (dense, ste, sdgf_*, mdgf_* with gradient='ste') and "
            "mask_update_every == 1.")
    return step, masks
  if masks is not None:
    raise TypeError(f"pgf.{fn}: give either the optimizer state or masks=, not both (the "
                    "state holds the masks)")
  state = state_lib.read_state(step_or_state, recipe, fn)
  stored = getattr(state, "masks", None)
  return state.count, stored


def sparsify(params, recipe: Recipe, opt_state=None, masks: Masks | None = None, *,
             step=None, allow_unmatched_rules: bool = False):
  """Forward weights W ⊙ (Phi + D(step)·(1 − Phi)) with a straight-through gradient to W.

  Args:
    params: any params pytree (Flax linen `variables["params"]`, an NNX `nnx.State`, a dict).
    recipe: the pgf.Recipe, the same one given to `pgf.gradient_flow` / `pgf.optimizer`.
    opt_state: the optimizer state of `pgf.optimizer(recipe, ...)` (whole, as `tx.update`
      returns it; `nnx.Optimizer(...).opt_state` for NNX). The step and, with
      `mask_update_every > 1`, the stored masks are read from its gradient_flow state, and at
      trace time (no run-time cost) it is checked that gradient_flow comes first on raw
      gradients and was built from `recipe`. An integer step (Python int or int scalar,
      possibly traced) is accepted instead only where the model is a function of (recipe, step)
      alone: methods whose gradient_flow leaves gradients unchanged (dense, ste, sdgf_*,
      mdgf_* with gradient="ste") with `mask_update_every == 1`; elsewhere it is a TypeError.
    masks: the old way to pass stored masks with an integer step; refused (pass the state).
    step: the old keyword for an integer step (same rules as a positional one).
    allow_unmatched_rules: sparsify a subtree with a recipe that also has rules for leaves
      outside it.

  Returns:
    A pytree like `params` whose matched leaves are the effective (sparsified) weights.
    `jax.grad` through it yields dL/dW~ for matched leaves, which `pgf.gradient_flow` turns into
    the method's gradient.
  """
  check_recipe(recipe, "sparsify", params)
  opt_state = _state_or_step(opt_state, step, "sparsify")
  if masks is not None and _is_step(opt_state):
    raise TypeError(
        "pgf.sparsify(params, recipe, step, masks): stored masks hold only at the step the "
        "optimizer state's gradient_flow counts, so pass the state instead: "
        "pgf.sparsify(params, recipe, opt_state) reads both the step and the masks from it")
  step, masks = resolve(opt_state, recipe, masks, "sparsify")
  if recipe.method == "dense":
    return params
  matched = check_params(params, recipe, allow_unmatched_rules)
  if recipe.mdgf is not None:
    ints = sorted(p for p, leaf in _matched_leaves(params, matched).items()
                  if not jnp.issubdtype(leaf.dtype, jnp.inexact))
    if ints:
      raise ValueError(
          f"pgf.sparsify: method {recipe.method!r} scales pruned weights by the fraction D(t), "
          f"which the non-float leaves {ints[:3]} cannot hold (it would truncate to 0); "
          "sparsify float params (quantize after pgf.finalize)")
  masks = _checked_masks(masks, matched, "sparsify", allow_unmatched_rules)
  decay = recipe.decay(step)

  def apply(path, w, rule):
    stored = None if masks is None else masks[path]
    phi = leaf_mask(w, recipe, rule, step, stored).astype(w.dtype)
    scale = phi + decay.astype(w.dtype) * (1 - phi)
    return straight_through(w, jax.lax.stop_gradient(scale))

  return _map_matched(apply, params, recipe)


def _matched_leaves(params, matched) -> dict[str, Any]:
  return {leaf_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if leaf_path(kp) in matched}


def current_masks(params, recipe: Recipe, opt_state=None, masks: Masks | None = None, *,
                  step=None, allow_unmatched_rules: bool = False) -> dict[str, Any]:
  """{path: bool mask Phi} in force (for logging and analysis): at the optimizer state's step
  with its stored masks, or at an integer step (with `masks` given explicitly)."""
  check_recipe(recipe, "current_masks", params)
  opt_state = _state_or_step(opt_state, step, "current_masks")
  step, masks = resolve(opt_state, recipe, masks, "current_masks", allow_step=True)
  matched = check_params(params, recipe, allow_unmatched_rules)
  masks = _checked_masks(masks, matched, "current_masks", allow_unmatched_rules)
  out = {}

  def record(path, w, rule):
    stored = None if masks is None else masks[path]
    out[path] = leaf_mask(w, recipe, rule, step, stored)
    return w

  _map_matched(record, params, recipe)
  return out


def _trained_masks(recipe: Recipe, source, fn: str):
  """The stored masks for finalize/target_masks from an optimizer state or a masks dict."""
  if source is not None and state_lib.contains_gradient_flow_state(unwrap_variables(source)):
    return getattr(state_lib.read_state(source, recipe, fn), "masks", None)
  if source is None and recipe.mask_update_every > 1:
    raise ValueError(
        f"pgf.{fn}: recipe.mask_update_every={recipe.mask_update_every} trains with masks kept "
        "in the optimizer state (between refreshes the optimizer has moved W, so masks "
        "recomputed from |W| are not the ones the model was trained with): pass it, "
        f"pgf.{fn}(params, recipe, opt_state), or the masks of a restored run "
        "(pgf.analysis.runs.stored_masks)")
  if source is not None and not isinstance(unwrap_variables(source), Mapping):
    raise TypeError(f"pgf.{fn}: the third argument must be the optimizer state (or the stored "
                    f"masks dict), got {type(source).__name__}")
  return source


def _source(opt_state, masks, fn: str):
  if opt_state is not None and masks is not None:
    raise TypeError(f"pgf.{fn}: give the optimizer state or masks=, not both")
  return masks if opt_state is None else opt_state


def target_masks(params, recipe: Recipe, opt_state=None, *, masks: Masks | None = None,
                 allow_unmatched_rules: bool = False) -> dict[str, jax.Array]:
  """{path: bool Phi_target}: the masks `finalize` applies (see there)."""
  check_recipe(recipe, "target_masks", params)
  masks = _trained_masks(recipe, _source(opt_state, masks, "target_masks"), "target_masks")
  matched = check_params(params, recipe, allow_unmatched_rules)
  masks = _checked_masks(masks, matched, "target_masks", allow_unmatched_rules)
  out = {}

  def record(path, w, rule):
    axis = rule_axis(rule, w.shape)
    fresh = nm_mask(jax.lax.stop_gradient(w), rule.n, rule.m, axis)
    if masks is None:
      out[path] = fresh
    else:
      stored = jnp.asarray(masks[path], bool)
      out[path] = jnp.where(is_nm(stored, rule.n, rule.m, axis), stored, fresh)
    return w

  _map_matched(record, params, recipe)
  return out


def finalize(params, recipe: Recipe, opt_state=None, *, masks: Masks | None = None,
             allow_unmatched_rules: bool = False):
  """Hard N:M at every rule's target pattern: what you evaluate and deploy.

  Matched leaves become W ⊙ Phi_target (exact zeros elsewhere); everything else is unchanged.
  Applies to every method, including "dense" (a one-shot magnitude prune).

  Args:
    params: the dense params W.
    recipe: the pgf.Recipe.
    opt_state: the optimizer state of the run (checked as in `sparsify`). Required when
      `recipe.mask_update_every > 1`: between refreshes the forward pass uses the stored
      masks, not the masks of the current |W| (the optimizer has moved W since the last
      refresh), so recomputing would deploy a model that was never trained. A stored mask is
      deployed as is when it is at the target N:M (the last refresh was at the target pattern,
      which holds from the fine-tune phase on, and in the last SDGF stage); a stored mask at an
      earlier, denser stage (finalize called mid-training) is replaced by the target mask of
      |W|. Without it (allowed when masks are refreshed every step) Phi_target is computed from
      |W|, which is then the forward's mask.
    masks: the stored masks dict (`pgf.masks_from_state(opt_state)`, or
      `pgf.analysis.runs.stored_masks` of a restored run) in place of the state.
    allow_unmatched_rules: as in `sparsify`.
  """
  check_recipe(recipe, "finalize", params)
  source = _source(opt_state, masks, "finalize")
  source = _trained_masks(recipe, source, "finalize")
  phis = target_masks(params, recipe, masks=source, allow_unmatched_rules=allow_unmatched_rules)
  return _map_matched(lambda path, w, rule: jnp.where(phis[path], w, jnp.zeros_like(w)),
                      params, recipe)


def match_summary(params, recipe: Recipe) -> str:
  """One line per rule: how many leaves and weights it matched (for logs)."""
  matched = match_leaves(params, recipe)
  lines = []
  for i, rule in enumerate(recipe.rules):
    shapes = [shape for index, shape in matched.values() if index == i]
    axis = "auto (0 for 2-D)" if rule.axis is None else rule.axis
    lines.append(f"{rule.pattern!r} {rule.nm} axis={axis}: {len(shapes)} leaves, "
                 f"{sum(math.prod(s) for s in shapes):,} weights")
  return "\n".join(lines)
