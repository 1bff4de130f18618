"""Rematerialisation of transformer blocks (`config.model.remat`), to trade compute for memory.

  "none"   keep every activation the backward pass needs (fastest, most memory).
  "dots"   keep only the blocks' matmul outputs without batch dimensions (the projections);
           recompute attention probabilities, norms and activations in the backward pass.
  "block"  keep only each block's input; recompute the whole block in the backward pass
           (about one extra forward per step, least memory).

Parameter names do not change (a checkpoint trained with one policy loads under another).
"""

from __future__ import annotations

import flax.linen as nn
import jax

POLICIES = ("none", "dots", "block")


def check(policy: str) -> str:
  if policy not in POLICIES:
    raise ValueError(f"config.model.remat={policy!r}: one of {POLICIES}")
  return policy


def wrap(block_cls, policy: str, static_argnums: tuple[int, ...]):
  """`block_cls`, rematerialised per `policy`; `static_argnums` count `self` as 0 (flax)."""
  check(policy)
  if policy == "none":
    return block_cls
  saveable = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots"
              else jax.checkpoint_policies.nothing_saveable)
  return nn.remat(block_cls, policy=saveable, static_argnums=static_argnums,
                  prevent_cse=True)
