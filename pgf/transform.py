"""`gradient_flow(recipe)`: the optax transform that shapes the gradient reaching W.

`pgf.sparsify` gives the model W~ = W ⊙ (Phi + D(1 − Phi)) with a straight-through backward,
so `jax.grad` yields g = dL/dW~ for every sparsified leaf. This transform turns g into the
method's gradient (docs/method.md has the full table per method and phase):

  dense phase, method "dense"     g
  ste, sdgf_*                     g                              (straight-through)
  sr_ste                          g + lambda_W (1 − Phi) ⊙ W
  mdgf_* with gradient="decayed"  g ⊙ (Phi + D (1 − Phi))        (D = 0 in fine-tuning)
  mdgf_* with gradient="ste"      g

It must see raw gradients: SR-STE's term is a gradient term, so after Adam (which has already
scaled and negated the update) it would make pruned weights grow instead of decay.
`pgf.optimizer(recipe, optax.adamw(...))` builds the chain in the right order;
`step_from_state` / `masks_from_state` refuse an optimizer state in which gradient_flow comes
after a rescaling transform (Adam, momentum, a learning-rate schedule, ...).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pgf.recipes import Recipe
from pgf.sparsify import check_params, check_recipe, leaf_mask, leaf_path, unwrap_variables

__all__ = ["gradient_flow", "optimizer", "GradientFlowState", "GradientFlowMaskState",
           "masks_from_state", "step_from_state"]


class GradientFlowState(NamedTuple):
  """Only the step count: masks are recomputed from params, so checkpoints and sharding stay
  identical to dense training."""
  count: jax.Array  # int32 scalar: the step whose gradient the next update receives


class GradientFlowMaskState(NamedTuple):
  """State when `mask_update_every > 1`: the masks in force between refreshes."""
  count: jax.Array
  masks: dict[str, jax.Array]  # {leaf path: bool mask}


def _needs_mask(recipe: Recipe) -> bool:
  if recipe.method == "sr_ste":
    return True
  return recipe.mdgf is not None and recipe.gradient == "decayed"


def gradient_flow(recipe: Recipe) -> optax.GradientTransformation:
  """Progressive Gradient Flow as an optax gradient transformation.

  Args:
    recipe: a `pgf.Recipe` (method, rules, schedule). The same recipe must be given to
      `pgf.sparsify` in the forward pass.

  Returns:
    An `optax.GradientTransformation`. `update(grads, state, params)` requires `params`
    (the dense weights W, from which the masks are computed). Its state is a step count
    (`GradientFlowState`), plus the masks when `recipe.mask_update_every > 1`
    (`GradientFlowMaskState`). The count must equal the `step` given to `pgf.sparsify`;
    `pgf.step_from_state(opt_state)` returns it.

  References:
    Bambhaniya et al., "Progressive Gradient Flow for Robust N:M Sparsity Training in
    Transformers", arXiv 2402.04744 (CPAL 2025).
    Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"
    (SR-STE), ICLR 2021.

  Example:
    >>> recipe = pgf.Recipe(method="mdgf_exp", rules=((r".*/mlp/.*/kernel", "1:16"),),
    ...                     total_steps=10_000)
    >>> tx = pgf.optimizer(recipe, optax.adamw(1e-3))  # = chain(gradient_flow, adamw)
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
  """
  check_recipe(recipe, "gradient_flow")
  keep_masks = recipe.mask_update_every > 1

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    if recipe.method == "dense":
      return GradientFlowState(count)
    matched = check_params(params, recipe)  # fail here, before anything is compiled
    if not keep_masks:
      return GradientFlowState(count)
    masks = {}
    for key_path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
      path = leaf_path(key_path)
      if path in matched:
        rule = recipe.rules[matched[path][0]]
        masks[path] = leaf_mask(w, recipe, rule, count)
    return GradientFlowMaskState(count, masks)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "pgf.gradient_flow needs the params to compute N:M masks: call "
          "tx.update(grads, opt_state, params)")
    step = state.count
    new_count = optax.safe_int32_increment(step)
    if recipe.method == "dense":
      return updates, GradientFlowState(new_count)
    decay = recipe.decay(step)
    in_dense_phase = step < recipe.dense_steps
    new_masks = {}

    def shape_gradient(key_path, g, w):
      if g is None or not hasattr(g, "shape"):
        return g
      path = leaf_path(key_path)
      index = recipe.rule_for(path)
      if index is None:
        return g
      rule = recipe.rules[index]
      phi = None
      if keep_masks:
        phi = leaf_mask(w, recipe, rule, step, state.masks[path])
        new_masks[path] = phi
      if not _needs_mask(recipe):
        return g
      if phi is None:
        phi = leaf_mask(w, recipe, rule, step)
      phi = phi.astype(g.dtype)
      if recipe.method == "sr_ste":
        shaped = g + recipe.sr_ste_lambda * (1 - phi) * w.astype(g.dtype)
      else:  # MDGF, decayed gradient
        shaped = g * (phi + decay.astype(g.dtype) * (1 - phi))
      return jnp.where(in_dense_phase, g, shaped)

    shaped = jax.tree_util.tree_map_with_path(shape_gradient, updates, params)
    if keep_masks:
      return shaped, GradientFlowMaskState(new_count, new_masks)
    return shaped, GradientFlowState(new_count)

  return optax.GradientTransformation(init_fn, update_fn)


def optimizer(recipe: Recipe, *inner: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """`optax.chain(pgf.gradient_flow(recipe), *inner)`: the method first, on raw gradients.

  Args:
    recipe: the pgf.Recipe (give the same one to `pgf.sparsify`).
    *inner: the transforms that follow, e.g. `optax.clip_by_global_norm(1.0)`,
      `optax.adamw(schedule)`. At least one.

  Returns:
    The chained transformation; its state is `(GradientFlowState, *inner states)`, so
    `pgf.step_from_state` and `pgf.masks_from_state` find the method's state in it.
  """
  check_recipe(recipe, "optimizer")
  if not inner:
    raise TypeError("pgf.optimizer(recipe, *inner): give the optimizer that follows, e.g. "
                    "pgf.optimizer(recipe, optax.adamw(1e-3))")
  for i, tx in enumerate(inner):
    if not isinstance(tx, optax.GradientTransformation):
      raise TypeError(f"pgf.optimizer: inner[{i}] must be an optax.GradientTransformation, got "
                      f"{type(tx).__name__}")
  return optax.chain(gradient_flow(recipe), *inner)


# optax states of transforms that rescale, accumulate or negate the gradient: gradient_flow
# after one of them in a chain no longer sees raw gradients. Stateless transforms (constant
# learning-rate SGD, optax.scale) leave no trace in the state and cannot be detected.
_RESCALING_STATE_PREFIXES = ("ScaleBy",)
_RESCALING_STATES = frozenset({"TraceState", "EmaState", "FactoredState",
                               "InjectHyperparamsState", "InjectStatefulHyperparamsState"})


def _is_rescaling_state(node) -> bool:
  name = type(node).__name__
  return isinstance(node, tuple) and (name in _RESCALING_STATES
                                      or name.startswith(_RESCALING_STATE_PREFIXES))


def _child(node, key):
  """The child of `node` under one jax key-path entry, or raise LookupError."""
  for attr, get in (("idx", lambda k: node[k.idx]), ("key", lambda k: node[k.key]),
                    ("name", lambda k: getattr(node, k.name))):
    if hasattr(key, attr):
      try:
        return get(key)
      except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise LookupError(key) from e
  raise LookupError(key)


def _check_chain_order(opt_state, is_state) -> None:
  """ValueError if, in some optax.chain (a plain tuple of states), gradient_flow's state comes
  after the state of a rescaling transform."""
  flat, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_state)
  for key_path, node in flat:
    if not is_state(node):
      continue
    parent = opt_state
    for key in key_path:
      if type(parent) is tuple and hasattr(key, "idx"):  # pylint: disable=unidiomatic-typecheck
        before = find_nodes(parent[:key.idx], _is_rescaling_state)
        if before:
          raise ValueError(
              "pgf.gradient_flow must come first in the chain, on raw gradients, but it "
              f"follows {type(before[0]).__name__} (Adam, momentum, a schedule, ...): "
              "SR-STE's and MDGF's terms would act on already scaled updates, and SR-STE "
              "would make pruned weights grow. Build the optimizer with "
              "pgf.optimizer(recipe, optax.adamw(...)), i.e. "
              "optax.chain(pgf.gradient_flow(recipe), optax.adamw(...)).")
      try:
        parent = _child(parent, key)
      except LookupError:
        break


def find_nodes(tree: Any, predicate) -> list:
  """Every node of `tree` (outermost first) for which `predicate(node)` holds, e.g. the
  states of one transform inside a chained optimizer state."""
  found = []

  def visit(node):
    if predicate(node):
      found.append(node)
      return True
    return False

  jax.tree_util.tree_map(lambda _: None, tree, is_leaf=visit)
  return found


def _find_states(state: Any) -> list:
  return find_nodes(state, lambda node: isinstance(
      node, (GradientFlowState, GradientFlowMaskState)))


def _single_state(opt_state):
  states = _find_states(opt_state)
  if len(states) != 1:
    raise ValueError(f"expected exactly one pgf.gradient_flow state in the optimizer state, "
                     f"found {len(states)}")
  _check_chain_order(opt_state, lambda node: isinstance(
      node, (GradientFlowState, GradientFlowMaskState)))
  return unwrap_variables(states[0])


def masks_from_state(opt_state) -> dict[str, jax.Array]:
  """The masks held by the gradient_flow state inside an optimizer state.

  Accepts a chained optax state, one wrapped by `optax.MultiSteps` or
  `optax.inject_hyperparams`, and Flax NNX's `nnx.Optimizer(...).opt_state` (its Variables are
  unwrapped to arrays).
  """
  state = _single_state(opt_state)
  if not isinstance(state, GradientFlowMaskState):
    raise ValueError("this gradient_flow state holds no masks (mask_update_every == 1): "
                     "masks are recomputed from params; call pgf.sparsify without masks")
  return state.masks


def step_from_state(opt_state) -> jax.Array:
  """The step count of the gradient_flow state: the `step` to give `pgf.sparsify`.

  It counts the updates the transform has made, which is what the recipe's schedules count.
  Under `optax.MultiSteps` that is real (accumulated) updates, not micro-steps, so give the
  recipe `total_steps` in real updates. Accepts the same states as `masks_from_state`.
  """
  return _single_state(opt_state).count
