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
`pgf.sparsify(params, recipe, opt_state)`, `pgf.finalize`, `step_from_state` and
`masks_from_state` refuse, at trace time, an optimizer state in which gradient_flow comes after a
transform with numeric state (Adam, momentum, a learning-rate schedule, ...) or that was built
from another recipe (pgf/opt_state.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from pgf import opt_state as state_lib
from pgf.opt_state import GradientFlowMaskState, GradientFlowState, find_nodes
from pgf.recipes import Recipe
from pgf.sparsify import check_params, check_recipe, leaf_mask, leaf_path, shapes_gradient

__all__ = ["gradient_flow", "optimizer", "GradientFlowState", "GradientFlowMaskState",
           "masks_from_state", "step_from_state", "find_nodes"]


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
  # The recipe is part of the state's type (its treedef): checked at trace time, free at run time.
  plain_state = state_lib.state_class(GradientFlowState, recipe)
  mask_state = state_lib.state_class(GradientFlowMaskState, recipe)

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    if recipe.method == "dense":
      return plain_state(count)
    matched = check_params(params, recipe)  # fail here, before anything is compiled
    if not keep_masks:
      return plain_state(count)
    masks = {}
    for key_path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
      path = leaf_path(key_path)
      if path in matched:
        rule = recipe.rules[matched[path][0]]
        masks[path] = leaf_mask(w, recipe, rule, count)
    return mask_state(count, masks)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "pgf.gradient_flow needs the params to compute N:M masks: call "
          "tx.update(grads, opt_state, params)")
    if not state_lib.is_gradient_flow_state(state):
      raise TypeError(f"pgf.gradient_flow: update got a {type(state).__name__} state, not the "
                      "one its init returned")
    if type(state).recipe is not None:  # a hand-built state records none
      state_lib.check_recipe(state, recipe, "gradient_flow (update)")
    if keep_masks != isinstance(state, GradientFlowMaskState):
      raise ValueError(
          f"pgf.gradient_flow: recipe.mask_update_every={recipe.mask_update_every} but the state "
          f"is a {type(state).__name__}: it was built for another recipe; init it with this "
          "transform")
    step = state.count
    new_count = optax.safe_int32_increment(step)
    if recipe.method == "dense":
      return updates, plain_state(new_count)
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
      if not shapes_gradient(recipe):
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
      return shaped, mask_state(new_count, new_masks)
    return shaped, plain_state(new_count)

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


def masks_from_state(opt_state, recipe: Recipe | None = None) -> dict[str, jax.Array]:
  """The masks held by the gradient_flow state inside an optimizer state.

  Accepts a chained optax state, one wrapped by `optax.MultiSteps`, `optax.inject_hyperparams`
  and the other optax wrappers, and Flax NNX's `nnx.Optimizer(...).opt_state` (its Variables are
  unwrapped to arrays). Checks at trace time that gradient_flow comes first, on raw gradients,
  and, given `recipe`, that the state was built from it. `pgf.sparsify(params, recipe,
  opt_state)` and `pgf.finalize(params, recipe, opt_state)` read the masks themselves.
  """
  state = state_lib.read_state(opt_state, recipe, "masks_from_state")
  if not isinstance(state, GradientFlowMaskState):
    raise ValueError("pgf.masks_from_state: this gradient_flow state holds no masks "
                     "(mask_update_every == 1): masks are recomputed from params; call "
                     "pgf.sparsify(params, recipe, opt_state)")
  return state.masks


def step_from_state(opt_state, recipe: Recipe | None = None) -> jax.Array:
  """The step count of the gradient_flow state (int32): what the recipe's schedules count.

  It counts the updates the transform has made. Under `optax.MultiSteps` that is real
  (accumulated) updates, never the micro-step counter, so give the recipe `total_steps` in real
  updates. Accepts the same states, and makes the same checks, as `masks_from_state`.
  `pgf.sparsify(params, recipe, opt_state)` reads the step itself.
  """
  return state_lib.read_state(opt_state, recipe, "step_from_state").count
