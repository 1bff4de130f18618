"""pgf: Progressive Gradient Flow for N:M structured-sparse training in JAX.

    recipe = pgf.Recipe(method="mdgf_exp", rules=((r".*/mlp/.*/kernel", "1:16"),),
                        total_steps=10_000)
    tx = pgf.optimizer(recipe, optax.adamw(1e-3))  # gradient_flow first, on raw gradients
    logits = model.apply({"params": pgf.sparsify(params, recipe, opt_state)}, x)
    deployed = pgf.finalize(params, recipe, opt_state)

The optimizer state is the one source of truth: sparsify and finalize read the step and the
stored masks from it and check at trace time that its gradient_flow comes first on raw
gradients and was built from the same recipe (docs/method.md, "The contract").
The core (masks, recipes, sparsify, transform) depends only on jax, numpy and optax.
"""

from pgf.masks import is_nm, nm_mask
from pgf.opt_state import GradientFlowMaskState, GradientFlowState, at_step
from pgf.recipes import METHODS, Recipe, Rule
from pgf.sparsify import (check_params, current_masks, finalize, fit_sdgf_k, match_leaves,
                          shapes_gradient, sparsify, target_masks)
from pgf.transform import gradient_flow, masks_from_state, optimizer, step_from_state

__version__ = "0.1.0"

__all__ = [
    "nm_mask", "is_nm", "Recipe", "Rule", "METHODS", "sparsify", "finalize", "target_masks",
    "check_params", "fit_sdgf_k", "current_masks", "match_leaves", "gradient_flow", "optimizer",
    "GradientFlowState", "GradientFlowMaskState", "masks_from_state", "step_from_state",
    "at_step", "shapes_gradient",
]
