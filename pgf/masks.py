"""N:M masks as pure functions on arrays.

`nm_mask(x, n, m, axis)` keeps the `n` largest-magnitude entries in every group of `m`
consecutive entries along `axis` (the contracting axis of a kernel). Nothing here knows about
pytrees, recipes or configs.

Speed matters because the mask is recomputed from |W| on every training step. Sorting each
group (the usual double-argsort) is two orders of magnitude slower than one elementwise pass on
CPU, so the mask is computed without sorting:

* magnitudes become integer keys (the IEEE bit pattern of |x| is ordered like |x|, and NaN
  sorts above +inf, so the order is total and NaNs cannot break the "exactly n" guarantee);
* the groups are addressed in place as a (pre, groups, m, post) view, so no transpose is
  needed for the common layouts, and the reduction runs across the group axis;
* the traced `n` picks one of a few branches at run time (`lax.switch`): n == 1 is an argmax,
  n == m - 1 drops one argmin, small min(n, m - n) selects iteratively, and everything else
  counts, for every element, how many group members beat it (a fused O(m) pass).

Every branch implements the same total order: larger |x| wins, and among equal |x| the lower
index wins, so all branches return identical masks.

Sharded weights. Under `jax.jit` with Auto mesh axes the computation above is sharding-agnostic:
XLA's partitioner keeps the groups exactly as on one device and adds whatever communication the
layout needs. Under Explicit mesh axes (sharding in types) a reshape that splits a sharded axis is
a type error, so the grouped view is built with an explicit output sharding: every merged range
(pre, groups, post) keeps the sharding of its leading axis, and the grouped axis stays sharded
only when every shard holds whole groups (shard length a multiple of m); otherwise it is gathered
for the mask computation and the bool mask is sliced back to the weight's sharding. So a
contracting axis that is unsharded, or sharded into pieces that are multiples of m, costs no
communication; M larger than a shard costs one all-gather of that weight.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["nm_mask", "is_nm", "normalize_axes", "grouped_length", "parse_nm", "stage_nm_mask"]

# Above this group size the all-pairs count (O(m) work per element) loses to selecting
# min(n, m - n) entries one at a time when that number is small.
_COUNT_MAX_M = 32
_ITERATIVE_RATIO = 8


def parse_nm(pattern: str | Sequence[int]) -> tuple[int, int]:
  """Parses "N:M" (or an (n, m) pair) into two ints, without range checks."""
  if isinstance(pattern, str):
    parts = pattern.split(":")
    if len(parts) != 2:
      raise ValueError(f"N:M pattern must look like '1:16', got {pattern!r}")
    try:
      return int(parts[0]), int(parts[1])
    except ValueError:
      raise ValueError(f"N:M pattern must look like '1:16', got {pattern!r}") from None
  n, m = pattern
  return int(n), int(m)


def normalize_axes(shape: Sequence[int], axis) -> tuple[int, ...]:
  """Returns `axis` (int or tuple of ints, negatives allowed) as a tuple of positive axes."""
  ndim = len(shape)
  if isinstance(axis, (int, np.integer)) and not isinstance(axis, (bool, np.bool_)):
    axes = (axis,)
  elif isinstance(axis, (tuple, list)):
    axes = tuple(axis)
  else:
    raise ValueError(f"axis must be an int or a tuple of ints, got {axis!r} "
                     f"({type(axis).__name__}) for shape {tuple(shape)}")
  if not axes:
    raise ValueError(f"axis must name at least one axis, got {axis!r} for shape {tuple(shape)}")
  out = []
  for a in axes:
    if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
      raise ValueError(f"axis entries must be ints, got {axis!r} for shape {tuple(shape)}")
    if not -ndim <= a < ndim:
      raise ValueError(f"axis {axis!r} is out of range for shape {tuple(shape)} "
                       f"(rank {ndim})")
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"axis {axis!r} repeats an axis (shape {tuple(shape)})")
  return tuple(out)


def grouped_length(shape: Sequence[int], axis) -> int:
  """Length of the flattened grouping axes (what `m` must divide)."""
  return math.prod(shape[a] for a in normalize_axes(shape, axis))


def _keys(x: jax.Array) -> jax.Array:
  """Integer keys ordered like |x| (NaN above inf), same width as x."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(jnp.abs(x), int_type)


def _group_iota(m: int) -> jax.Array:
  """Position within the group, shaped to broadcast against the (pre, groups, m, post) view.

  Broadcast rather than full-size so it takes the sharding of the array it meets (a full-size
  unsharded iota would clash with an Explicit-sharded view)."""
  return jax.lax.broadcasted_iota(jnp.int32, (1, 1, m, 1), 2)


def _first_max(keys: jax.Array, m: int) -> jax.Array:
  """n == 1: the first (lowest-index) maximum of each group."""
  idx = jnp.argmax(keys, axis=2, keepdims=True)
  return _group_iota(m) == idx


def _drop_last_min(keys: jax.Array, m: int) -> jax.Array:
  """n == m - 1: everything except the last (highest-index) minimum of each group."""
  idx_rev = jnp.argmin(jnp.flip(keys, axis=2), axis=2, keepdims=True)
  return _group_iota(m) != (m - 1 - idx_rev)


def _count_rank(keys: jax.Array, n: jax.Array, m: int) -> jax.Array:
  """Rank of every element in its group (number of members that beat it), kept if < n."""
  i = _group_iota(m)

  def add_member(j, rank):
    kj = jax.lax.dynamic_slice_in_dim(keys, j, 1, axis=2)
    # Member j beats i if it is larger, or equal and earlier (ties go to the lower index).
    return rank + jnp.where(i > j, kj >= keys, kj > keys).astype(jnp.int32)

  # *_like keeps the view's sharding type, which loop carries and switch branches must share.
  rank = jnp.zeros_like(keys, jnp.int32)
  if m <= _COUNT_MAX_M:
    # Unrolled, XLA fuses all m comparisons into one pass over the array.
    for j in range(m):
      rank = add_member(j, rank)
  else:
    # A loop keeps compile time flat for large groups (1:64, 1:128).
    rank = jax.lax.fori_loop(0, m, add_member, rank)
  return rank < n


def _iterative(keys: jax.Array, n: jax.Array, m: int) -> jax.Array:
  """Selects the winners one at a time when n or m - n is small (large m).

  Each round finds the extreme key and then its first (or last) position with two plain
  reductions: on CPU that is about twice as fast as one argmax/argmin, whose (value, index)
  reduction XLA does not vectorise across a strided group axis.
  """
  iota = _group_iota(m)
  low = jnp.iinfo(keys.dtype).min
  high = jnp.iinfo(keys.dtype).max

  def pick_best(_, chosen):
    cand = jnp.where(chosen, low, keys)
    best = jnp.max(cand, axis=2, keepdims=True)
    idx = jnp.min(jnp.where(cand == best, iota, m), axis=2, keepdims=True)
    return chosen | (iota == idx)

  def drop_worst(_, dropped):
    # The worst is the smallest key, and among equal keys the highest index.
    cand = jnp.where(dropped, high, keys)
    worst = jnp.min(cand, axis=2, keepdims=True)
    idx = jnp.max(jnp.where(cand == worst, iota, -1), axis=2, keepdims=True)
    return dropped | (iota == idx)

  none = jnp.zeros_like(keys, bool)
  return jax.lax.cond(
      2 * n <= m,
      lambda: jax.lax.fori_loop(0, n, pick_best, none),
      lambda: ~jax.lax.fori_loop(0, m - n, drop_worst, none))


def _grouped_mask(x: jax.Array, n: jax.Array, m: int) -> jax.Array:
  """Mask for x viewed as (pre, groups, m, post); `n` is a traced int32 scalar."""
  # Keys are computed inside each branch so XLA fuses them into the branch's first pass
  # instead of materialising a second copy of the array.
  branches = [
      lambda v: jnp.zeros_like(v, bool),  # n <= 0
      lambda v: jnp.ones_like(v, bool),  # n >= m
      lambda v: _first_max(_keys(v), m),  # n == 1
      lambda v: _drop_last_min(_keys(v), m),  # n == m - 1
      lambda v: _count_rank(_keys(v), n, m),
  ]
  branch = jnp.select(
      [n <= 0, n >= m, n == 1, n == m - 1],
      [0, 1, 2, 3], default=4).astype(jnp.int32)
  if m > _COUNT_MAX_M:
    branches.append(lambda v: _iterative(_keys(v), n, m))
    few = _ITERATIVE_RATIO * jnp.minimum(n, m - n) <= m
    branch = jnp.where((branch == 4) & few, 5, branch)
  return jax.lax.switch(branch, branches, x)


def _explicit_spec(x: jax.Array) -> tuple | None:
  """x's per-axis PartitionSpec entries if some axis is sharded over Explicit mesh axes."""
  spec = getattr(jax.typeof(x).sharding, "spec", None)
  if spec is None or all(entry is None for entry in spec):
    return None
  return tuple(spec) + (None,) * (x.ndim - len(spec))


def _shard_count(mesh, entry) -> int:
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh.shape[name] for name in names)


def _explicit_grouped_mask(x: jax.Array, spec: tuple, grouped: tuple[int, int], view, n,
                           m: int) -> jax.Array:
  """The mask of x (Explicit sharding `spec`) grouped over axes [grouped[0], grouped[1]).

  The axes before, inside and after the grouped range merge into the view's pre, groups and post
  axes. A merge keeps the sharding of its leading axis; sharded trailing axes, and a grouped axis
  whose shards would cut groups, are gathered first, and the mask is sliced back afterwards.
  """
  sharding = jax.typeof(x).sharding
  start, stop = grouped
  ranges = ((0, start), (start, stop), (stop, x.ndim))
  layout = [None] * x.ndim
  for lo, hi in ranges:
    if lo < hi:
      layout[lo] = spec[lo]
  if view[1] % _shard_count(sharding.mesh, layout[start]):
    layout[start] = None  # a shard would hold a partial group (m larger than the shard)
  view_spec = tuple(layout[lo] if lo < hi else None for lo, hi in ranges)
  view_spec = jax.sharding.PartitionSpec(view_spec[0], view_spec[1], None, view_spec[2])
  layout = jax.sharding.PartitionSpec(*layout)
  gathered = tuple(layout) != spec
  if gathered:
    x = jax.sharding.reshard(x, sharding.update(spec=layout))
  grouped_x = jax.lax.reshape(x, view, out_sharding=sharding.update(spec=view_spec))
  mask = jax.lax.reshape(_grouped_mask(grouped_x, n, m), x.shape,
                         out_sharding=sharding.update(spec=layout))
  return jax.sharding.reshard(mask, sharding) if gathered else mask


def _check_n(n, m: int, shape, axis) -> bool:
  """ValueError for a concrete n outside [0, m]; False if n is traced (checked at run time)."""
  try:
    n_value = int(n)  # python / numpy ints and concrete arrays
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
    return False
  if n_value < 0 or n_value > m:
    raise ValueError(f"nm_mask: need 0 <= n <= m, got n={n_value}, m={m} "
                     f"(shape {tuple(shape)}, axis {axis!r})")
  return True


def _check_traced_n(n, m: int, shape, axis) -> None:
  """A traced n outside [0, m] raises when the computation runs (a host callback in the taken
  branch only: no transfer while n is valid)."""
  def fail(n_value):
    bad = np.asarray(n_value)
    bad = bad[(bad < 0) | (bad > m)]  # under vmap the callback sees every lane
    if bad.size:
      raise ValueError(f"nm_mask: need 0 <= n <= m, got traced n={int(bad.flat[0])}, m={m} "
                       f"(shape {tuple(shape)}, axis {axis!r})")
  n = jnp.asarray(n)
  jax.lax.cond(jnp.any((n < 0) | (n > m)), lambda: jax.debug.callback(fail, n), lambda: None)


def nm_mask(x: jax.Array, n, m: int, axis=0) -> jax.Array:
  """Boolean N:M mask: exactly `n` True in every group of `m` consecutive entries along `axis`.

  Args:
    x: array of rank >= 1 (float32, bfloat16, float16, ...). Only |x| matters.
    n: number kept per group. A Python int or an integer array, which may be traced, so a
      schedule that changes n (SDGF) never recompiles. Traced values are clamped to [0, m].
    m: group size, a static Python int >= 1.
    axis: the axis along which groups are formed (the contracting axis of a kernel), or a
      tuple of axes that are flattened in the given order first, e.g. (0, 1) for an attention
      output kernel (heads, head_dim, out) or (0, 1, 2) for a conv kernel HWIO.

  Returns:
    A bool array of x's shape. Every group along the (flattened) axis has exactly n True; all
    other positions are independent. Ties in |x| go to the lower index; NaN counts as largest.

  Raises:
    ValueError: if n > m, n < 0, m < 1, the axis is out of range, or the grouped length is not
      divisible by m. The message gives the shape, axis and values. A traced n outside [0, m]
      raises when the computation runs (the error wraps this ValueError).

  Example:
    >>> mask = nm_mask(w, n=1, m=16, axis=0)   # 1:16 along the input features of a kernel
  """
  x = jnp.asarray(x)
  shape = x.shape
  if x.ndim < 1:
    raise ValueError(f"nm_mask needs an array of rank >= 1, got shape {shape}")
  if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
    raise ValueError(f"nm_mask: m must be a static Python int, got {m!r} "
                     f"(shape {tuple(shape)}, axis {axis!r})")
  m = int(m)
  if m < 1:
    raise ValueError(f"nm_mask: need m >= 1, got m={m} (shape {tuple(shape)}, axis {axis!r})")
  axes = normalize_axes(shape, axis)
  length = math.prod(shape[a] for a in axes)
  if length % m:
    raise ValueError(
        f"nm_mask: the grouped length {length} (shape {tuple(shape)}, axis {axis!r}) is not "
        f"divisible by m={m}")
  if not _check_n(n, m, shape, axis):
    _check_traced_n(n, m, shape, axis)
  return _nm_mask(x, n, m, axes)


def _nm_mask(x: jax.Array, n, m: int, axes: tuple[int, ...]) -> jax.Array:
  """nm_mask after validation (`axes` normalized; a traced n is clamped to [0, m])."""
  shape = x.shape
  length = math.prod(shape[a] for a in axes)
  n = jnp.clip(jnp.asarray(n, jnp.int32), 0, m)

  contiguous = axes == tuple(range(axes[0], axes[0] + len(axes)))
  if contiguous:
    perm = None
    pre = math.prod(shape[:axes[0]])
    post = math.prod(shape[axes[-1] + 1:])
    xt = x
  else:
    rest = tuple(a for a in range(x.ndim) if a not in axes)
    perm = axes + rest
    xt = jnp.transpose(x, perm)
    pre, post = 1, math.prod(shape[a] for a in rest)
  view = (pre, length // m, m, post)
  first = axes[0] if contiguous else 0
  spec = _explicit_spec(xt)
  if spec is None:  # one device, Auto axes, shard_map: no sharding in the types
    mask = _grouped_mask(xt.reshape(view), n, m).reshape(xt.shape)
  else:
    mask = _explicit_grouped_mask(xt, spec, (first, first + len(axes)), view, n, m)
  if perm is not None:
    mask = jnp.transpose(mask, np.argsort(perm))
  return mask


def is_nm(mask: jax.Array, n: int, m: int, axis=0) -> jax.Array:
  """Whether a bool `mask` keeps exactly `n` in every group of `m` along `axis` (bool scalar,
  traceable): the check that a stored or exported mask is at the pattern n:m."""
  mask = jnp.asarray(mask)
  axes = normalize_axes(mask.shape, axis)
  length = math.prod(mask.shape[a] for a in axes)
  if length % m:
    return jnp.bool_(False)
  rest = tuple(a for a in range(mask.ndim) if a not in axes)
  grouped = jnp.transpose(mask, axes + rest).reshape(length // m, m, -1)
  return jnp.all(jnp.sum(grouped.astype(jnp.int32), axis=1) == n)


def stage_nm_mask(x: jax.Array, n, m: int, axis) -> jax.Array:
  """nm_mask for pgf's own schedules, whose traced n is valid by construction (the recipe's
  validated stages): no run-time check."""
  x = jnp.asarray(x)
  return _nm_mask(x, n, int(m), normalize_axes(x.shape, axis))
