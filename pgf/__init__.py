"""pgf: Progressive Gradient Flow for N:M structured-sparse training in JAX.

    recipe = pgf.Recipe(method="mdgf_exp", rules=((r".*/mlp/.*/kernel", "1:16"),),
                        total_steps=10_000)
    tx = pgf.optimizer(recipe, optax.adamw(1e-3))  # gradient_flow first, on raw gradients
    step = pgf.step_from_state(opt_state)
    logits = model.apply({"params": pgf.sparsify(params, recipe, step)}, x)
    deployed = pgf.finalize(params, recipe)

The core (masks, recipes, sparsify, transform) depends only on jax, numpy and optax.
"""

from pgf.masks import is_nm, nm_mask
from pgf.recipes import METHODS, Recipe, Rule
from pgf.sparsify import (check_params, current_masks, finalize, fit_sdgf_k, match_leaves,
                          sparsify, target_masks)
from pgf.transform import (GradientFlowMaskState, GradientFlowState, gradient_flow,
                           masks_from_state, optimizer, step_from_state)

__version__ = "0.1.0"

__all__ = [
    "nm_mask", "is_nm", "Recipe", "Rule", "METHODS", "sparsify", "finalize", "target_masks",
    "check_params", "fit_sdgf_k", "current_masks", "match_leaves", "gradient_flow", "optimizer",
    "GradientFlowState", "GradientFlowMaskState", "masks_from_state", "step_from_state",
]
