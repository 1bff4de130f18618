"""The optimizer state as the one source of truth for the step, the stored masks and the recipe.

`pgf.gradient_flow(recipe)` keeps its step count (and, with `mask_update_every > 1`, the masks)
in the optimizer state. Its state types are recipe-specific subclasses of `GradientFlowState` /
`GradientFlowMaskState`: the recipe is a class attribute, so it lives in the pytree's static
structure (the treedef), costs nothing at run time, survives jit, vmap, scan and `nnx.Optimizer`,
and is compared at trace time by everything that reads the state (`pgf.sparsify`,
`pgf.finalize`, `pgf.target_masks`, `pgf.deploy.compress_params`, `step_from_state`,
`masks_from_state`).

`read_state(opt_state, recipe, fn)` finds the one gradient_flow state in a whole optimizer state
and checks, at trace time:

* there is exactly one;
* it was built from `recipe` (another N:M, method, total_steps, ... is an error naming the
  differing fields);
* gradient_flow sees raw gradients: no transform that keeps numeric state (moments, a step count
  driving a schedule, an accumulator) comes before it. Containers are recognised by structure
  (optax.chain's tuples, named_chain's ordered dicts, multi_transform's parallel branches, and
  any NamedTuple state that holds inner states: MultiSteps, inject_hyperparams, masked,
  apply_if_finite, lookahead, schedule_free, ...), and each transform before gradient_flow is
  classified by its state: stateless (the clipping family), or holding only booleans (e.g.
  zero_nans), passes; anything with numeric state is refused. No optimizer names are listed.

What a state cannot show: a stateless transform that rescales (constant-learning-rate
`optax.sgd`, `optax.scale`) looks exactly like clipping, which must stay allowed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
import optax

from pgf.recipes import Recipe

__all__ = ["GradientFlowState", "GradientFlowMaskState", "state_class", "find_nodes",
           "read_state", "is_gradient_flow_state", "unwrap_variables", "recipe_diff",
           "contains_gradient_flow_state", "check_recipe", "at_step"]


class GradientFlowState(NamedTuple):
  """Only the step count: masks are recomputed from params, so checkpoints and sharding stay
  identical to dense training. `type(state).recipe` is the recipe it was built from (None for a
  state constructed by hand)."""
  count: jax.Array  # int32 scalar: the step whose gradient the next update receives
  recipe = None


class GradientFlowMaskState(NamedTuple):
  """State when `mask_update_every > 1`: the masks in force between refreshes."""
  count: jax.Array
  masks: dict[str, jax.Array]  # {leaf path: bool mask}
  recipe = None


def _rebuild(base_name: str, recipe_dict, fields):
  base = {"GradientFlowState": GradientFlowState,
          "GradientFlowMaskState": GradientFlowMaskState}[base_name]
  return state_class(base, Recipe.from_dict(recipe_dict))(*fields)


_CLASSES: dict[tuple[type, str], type] = {}


def _fingerprint(recipe: Recipe) -> str:
  return json.dumps(recipe.to_dict(), sort_keys=True, default=repr)


def state_class(base: type, recipe: Recipe) -> type:
  """The subclass of `base` that records `recipe` in the pytree structure (one per recipe, so
  equal recipes give equal treedefs and jit caches, lax.cond and scan carries agree)."""
  key = (base, _fingerprint(recipe))
  if key not in _CLASSES:
    def __reduce__(self):  # picklable although the class is made at run time
      return _rebuild, (base.__name__, recipe.to_dict(), tuple(self))
    _CLASSES[key] = type(base.__name__, (base,), {
        "__slots__": (), "recipe": recipe, "__reduce__": __reduce__,
        "__module__": base.__module__, "__qualname__": base.__qualname__})
  return _CLASSES[key]


def is_gradient_flow_state(node) -> bool:
  return isinstance(node, (GradientFlowState, GradientFlowMaskState))


def find_nodes(tree: Any, predicate) -> list:
  """Every node of `tree` (outermost first) for which `predicate(node)` holds."""
  found = []

  def visit(node):
    if predicate(node):
      found.append(node)
      return True
    return False

  jax.tree_util.tree_map(lambda _: None, tree, is_leaf=visit)
  return found


def contains_gradient_flow_state(tree) -> bool:
  return bool(find_nodes(tree, is_gradient_flow_state))


def _is_nnx_variable(x) -> bool:
  # Duck-typed so that the core does not import flax.
  return any(c.__name__ == "Variable" and c.__module__.startswith("flax.")
             for c in type(x).__mro__)


def unwrap_variables(tree):
  """`tree` with Flax NNX Variables (e.g. `nnx.Optimizer`'s OptArray) replaced by their arrays."""
  return jax.tree.map(lambda x: x.get_value() if _is_nnx_variable(x) else x, tree,
                      is_leaf=_is_nnx_variable)


# ----------------------------------------------------------------------------- recipe check
def recipe_diff(a: Recipe, b: Recipe) -> str:
  """The fields in which two recipes differ, e.g. "total_steps 100 vs 400"."""
  da, db = a.to_dict(), b.to_dict()
  parts = []
  for field in dataclasses.fields(Recipe):
    name = field.name
    if da[name] == db[name]:
      continue
    if name == "rules" and len(da[name]) == len(db[name]):
      for i, (ra, rb) in enumerate(zip(da[name], db[name])):
        for key in ra:
          if ra[key] != rb[key]:
            parts.append(f"rules[{i}].{key} {ra[key]!r} vs {rb[key]!r}")
    else:
      parts.append(f"{name} {da[name]!r} vs {db[name]!r}")
  return "; ".join(parts)


def check_recipe(state, recipe: Recipe, fn: str) -> None:
  built = type(state).recipe
  if built is None:
    raise ValueError(
        f"pgf.{fn}: this {type(state).__name__} records no recipe (it was constructed by hand, "
        "or restored without a target); build it with tx.init(params) of "
        "pgf.optimizer(recipe, ...) / pgf.gradient_flow(recipe), and restore checkpoints with "
        "that state (or jax.eval_shape of it) as the target")
  if _fingerprint(built) != _fingerprint(recipe):
    raise ValueError(
        f"pgf.{fn}: the recipe differs from the one this optimizer state's gradient_flow was "
        f"built with ({recipe_diff(recipe, built)}; given vs built). The forward pass, "
        "gradient_flow and finalize must use one recipe: give pgf."
        f"{fn} the recipe you gave pgf.optimizer / pgf.gradient_flow (Recipe.from_dict reloads "
        "a saved recipe.json)")


# ----------------------------------------------------------------------------- order check
def _is_namedtuple(x) -> bool:
  return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _is_state_node(x) -> bool:
  return _is_namedtuple(x) and not isinstance(x, optax.MaskedNode)


def _holds_state(x) -> bool:
  """Whether `x` is or contains an optax state node (an inner state of a wrapper)."""
  return bool(find_nodes(x, _is_state_node))


def _arrays(tree) -> list:
  return [leaf for leaf in jax.tree.leaves(tree)
          if hasattr(leaf, "dtype") and hasattr(leaf, "shape")]


def _numeric(tree) -> list:
  return [a for a in _arrays(tree) if np.dtype(a.dtype) != np.bool_]


def _rescaler(node):
  """The state node (inside `node`, a transform applied before gradient_flow) that shows the
  transform does not pass raw gradients through unscaled, or None.

  Stateless transforms (the clipping family) and bool-only states (gating, e.g. zero_nans)
  pass. A wrapper (a NamedTuple holding inner states: MultiSteps, inject_hyperparams, masked,
  apply_if_finite, ...) is judged by its inner states, plus any per-parameter numeric state of
  its own (an accumulator); its scalar bookkeeping (counts, injected hyperparameters) passes.
  Any other numeric state (moments, a schedule's count, an estimate of the learning rate)
  rescales."""
  if not _numeric(node):
    return None
  if _is_namedtuple(node):
    inner = [v for v in node if _holds_state(v)]
    if not inner:
      return node
    for v in inner:
      found = _rescaler(v)
      if found is not None:
        return found
    own = [v for v in node if not _holds_state(v)]
    if any(np.ndim(a) > 0 and np.issubdtype(np.dtype(a.dtype), np.inexact)
           for a in _numeric(own)):
      return node
    return None
  if type(node) in (tuple, list) or isinstance(node, Mapping):
    for v in (node.values() if isinstance(node, Mapping) else node):
      found = _rescaler(v)
      if found is not None:
        return found
    return None
  return node


def _child(node, key):
  for attr, get in (("idx", lambda k: node[k.idx]), ("key", lambda k: node[k.key]),
                    ("name", lambda k: getattr(node, k.name))):
    if hasattr(key, attr):
      try:
        return get(key)
      except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise LookupError(key) from e
  raise LookupError(key)


def _predecessors(opt_state, key_path) -> list[tuple[str, Any]]:
  """(path, state) of every transform whose output reaches the node at `key_path`: earlier
  elements of an optax.chain tuple or a named_chain OrderedDict on the way down. Branches of
  multi_transform (a PartitionState's `inner_states`) run in parallel, not before, and a plain
  dict (e.g. a train state {"params", "opt_state"}) is no sequence."""
  out, node, field, where = [], opt_state, None, []
  for key in key_path:
    if type(node) in (tuple, list) and hasattr(key, "idx"):
      out += [(jax.tree_util.keystr(tuple(where) + (jax.tree_util.SequenceKey(i),)), node[i])
              for i in range(key.idx)]
    elif (isinstance(node, collections.OrderedDict) and hasattr(key, "key")
          and field != "inner_states"):  # named_chain (plain dicts are not sequences)
      for k in node:
        if k == key.key:
          break
        out.append((jax.tree_util.keystr(tuple(where) + (jax.tree_util.DictKey(k),)), node[k]))
    try:
      node = _child(node, key)
    except LookupError:
      break
    field = getattr(key, "name", None)
    where.append(key)
  return out


def _check_order(opt_state, key_path, fn: str) -> None:
  for where, pred in _predecessors(opt_state, key_path):
    culprit = _rescaler(pred)
    if culprit is not None:
      raise ValueError(
          f"pgf.{fn}: gradient_flow must be the first transform on the raw gradients, but in "
          f"this optimizer it comes after opt_state{where} ({type(culprit).__name__}), a "
          "transform with numeric state (moments, a schedule's step count, an accumulator), so "
          "it sees rescaled updates: SR-STE's and MDGF's gradient terms would act on them and "
          "SR-STE would make pruned weights grow. Build the optimizer as "
          "pgf.optimizer(recipe, <your transforms>), i.e. optax.chain(pgf.gradient_flow("
          "recipe), ...); only stateless clipping (optax.clip, optax.clip_by_global_norm, "
          "also under optax.inject_hyperparams) may come before it.")


# ----------------------------------------------------------------------------- reading
def _not_found(opt_state, fn: str) -> str:
  msg = (f"pgf.{fn}: found no pgf.gradient_flow state in the optimizer state "
         f"({type(opt_state).__name__}); pass the whole optimizer state of "
         "pgf.optimizer(recipe, ...) (or of a chain with pgf.gradient_flow(recipe) first)")
  from_flax = type(opt_state).__module__.startswith("flax.")
  if from_flax and isinstance(opt_state, Mapping) and "opt_state" in opt_state:
    msg += (": for Flax NNX pass `optimizer.opt_state` of the nnx.Optimizer, not "
            "nnx.state(optimizer), which turns optax's state types into plain dicts")
  elif find_nodes(opt_state, lambda n: isinstance(n, Mapping) and "count" in n
                  and set(n) <= {"count", "masks"}):
    msg += (": this looks like a checkpoint restored without a target (the state types "
            "became dicts); restore it with the state of tx.init (or jax.eval_shape of it) as "
            "the target")
  elif isinstance(opt_state, Mapping) and "opt_state" in opt_state:
    msg += ": pass its 'opt_state' entry, not the whole train state"
  return msg


def read_state(opt_state, recipe: Recipe | None, fn: str):
  """The one gradient_flow state inside `opt_state` (NNX Variables unwrapped), after the
  trace-time checks of the module docstring (`recipe` None skips the recipe check)."""
  opt_state = unwrap_variables(opt_state)
  flat = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_gradient_flow_state)[0]
  found = [(kp, node) for kp, node in flat if is_gradient_flow_state(node)]
  if not found:
    raise ValueError(_not_found(opt_state, fn))
  if len(found) > 1:
    where = ", ".join("opt_state" + jax.tree_util.keystr(kp) for kp, _ in found)
    raise ValueError(
        f"pgf.{fn}: found {len(found)} pgf.gradient_flow states ({where}); an optimizer needs "
        "exactly one: a second one shapes the gradient again (SR-STE's term twice, MDGF's "
        "decay squared) and counts its own steps. Use pgf.optimizer(recipe, <transforms>) "
        "once, with transforms that do not contain gradient_flow")
  key_path, state = found[0]
  _check_order(opt_state, key_path, fn)
  if recipe is not None:
    check_recipe(state, recipe, fn)
  return state


def at_step(opt_state, step):
  """`opt_state` with its gradient_flow count replaced by `step` (an int32 scalar): the state
  of the forward pass at another step, for analysis and logging (e.g. the step just trained,
  `count - 1`). Everything else, and every check the state allows, is unchanged."""
  from pgf.recipes import as_step  # pylint: disable=g-import-not-at-top
  step = as_step(step, scalar=True)
  return jax.tree.map(lambda node: node._replace(count=step) if is_gradient_flow_state(node)
                      else node, opt_state, is_leaf=is_gradient_flow_state)
