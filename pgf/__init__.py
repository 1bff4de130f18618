"""pgf: Progressive Gradient Flow for N:M structured-sparse training in JAX.

    recipe = pgf.Recipe(method="mdgf_exp", rules=((r".*/mlp/.*/kernel", "1:16"),),
                        total_steps=10_000)
    tx = optax.chain(pgf.gradient_flow(recipe), optax.adamw(1e-3))
    logits = model.apply({"params": pgf.sparsify(params, recipe, step)}, x)
    deployed = pgf.finalize(params, recipe)

The core (masks, recipes, sparsify, transform) depends only on jax, numpy and optax.
"""

from pgf.masks import nm_mask
from pgf.recipes import METHODS, Recipe, Rule
from pgf.sparsify import check_params, current_masks, finalize, match_leaves, sparsify
from pgf.transform import (GradientFlowMaskState, GradientFlowState, gradient_flow,
                           masks_from_state, step_from_state)

__version__ = "0.1.0"

__all__ = [
    "nm_mask", "Recipe", "Rule", "METHODS", "sparsify", "finalize", "check_params",
    "current_masks", "match_leaves", "gradient_flow", "GradientFlowState",
    "GradientFlowMaskState", "masks_from_state", "step_from_state",
]
