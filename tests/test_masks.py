"""nm_mask against a brute-force NumPy reference, with deliberate ties."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgf import nm_mask


def reference_mask(x, n, m, axis):
  """Stable-sort every group by -|x| (ties keep index order) and keep the first n."""
  x = np.abs(np.asarray(x, np.float64))
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  axes = tuple(a % x.ndim for a in axes)
  rest = tuple(a for a in range(x.ndim) if a not in axes)
  xt = np.transpose(x, axes + rest)
  length = int(np.prod([x.shape[a] for a in axes]))
  groups = xt.reshape(length // m, m, -1)
  order = np.argsort(-groups, axis=1, kind="stable")
  keep = np.zeros(groups.shape, bool)
  np.put_along_axis(keep, order[:, :n], True, axis=1)
  return np.transpose(keep.reshape(xt.shape), np.argsort(axes + rest))


def tied_values(rng, shape, dtype):
  """Small integers, so most groups contain exact ties (and signs differ: |x| matters)."""
  return jnp.asarray(rng.integers(-3, 4, size=shape), dtype)


CASES = [
    # (shape, axis, m, ns)
    ((16, 5), 0, 4, (1, 2, 3)),
    ((6, 16), 1, 8, (1, 4, 7)),
    ((6, 16), -1, 16, (1, 2, 15)),
    ((256, 3), 0, 128, (1, 2, 16, 64, 120, 127)),  # 120: drops the 8 worst one by one
    ((2, 128), 1, 64, (1, 3, 32, 60, 63)),
    ((32,), 0, 32, (1, 5, 31)),
    ((4, 3, 8), (0, 1), 4, (1, 3)),  # attention out kernel (heads, head_dim, out)
    ((3, 2, 4, 5), (0, 1, 2), 8, (1, 2, 7)),  # conv HWIO, contracting over H, W, I
    ((4, 6, 5), (2, 0), 4, (1, 2)),  # non-contiguous axes, flattened in the given order
    ((2, 8, 3, 4), 1, 8, (1, 4)),
]


@pytest.mark.parametrize("shape,axis,m,ns", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_reference_with_ties(shape, axis, m, ns, dtype):
  rng = np.random.default_rng(hash((shape, m)) % 2**32)
  x = tied_values(rng, shape, dtype)
  jitted = jax.jit(lambda x, n: nm_mask(x, n, m, axis))
  for n in ns:
    want = reference_mask(np.asarray(x, np.float32), n, m, axis)
    got = np.asarray(nm_mask(x, n, m, axis))
    assert got.dtype == bool and got.shape == x.shape
    np.testing.assert_array_equal(got, want, err_msg=f"n={n} m={m} axis={axis}")
    # Traced n goes through the same branches at run time.
    np.testing.assert_array_equal(np.asarray(jitted(x, jnp.int32(n))), want)


@pytest.mark.parametrize("n,m", [(1, 128), (1, 32), (1, 16), (1, 8), (2, 4), (1, 4), (3, 8),
                                 (5, 8), (7, 8), (4, 16), (15, 16), (64, 128)])
def test_exactly_n_per_group_random(n, m):
  x = jax.random.normal(jax.random.key(n * 1000 + m), (2 * m, 24))
  mask = np.asarray(nm_mask(x, n, m, axis=0))
  counts = mask.reshape(2, m, 24).sum(axis=1)
  assert (counts == n).all()
  # The kept entries are the largest: min kept >= max pruned in every group.
  ax = np.abs(np.asarray(x)).reshape(2, m, 24)
  kept = np.where(mask.reshape(2, m, 24), ax, np.inf).min(axis=1)
  pruned = np.where(mask.reshape(2, m, 24), -np.inf, ax).max(axis=1)
  assert (kept >= pruned).all()
  np.testing.assert_array_equal(mask, reference_mask(x, n, m, 0))


def test_all_ties_go_to_lower_index():
  x = jnp.ones((8, 2))
  np.testing.assert_array_equal(nm_mask(x, 3, 8)[:, 0], [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(nm_mask(-x, 7, 8)[:, 1], [1, 1, 1, 1, 1, 1, 1, 0])


def test_signed_zero_nan_and_inf():
  x = jnp.array([-0.0, 0.0, jnp.nan, -jnp.inf, 1.0, -2.0, 0.5, 0.25])
  # NaN ranks above inf; the order is total so exactly n survive.
  np.testing.assert_array_equal(nm_mask(x, 2, 8), [0, 0, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(nm_mask(x, 1, 2), [1, 0, 1, 0, 0, 1, 1, 0])


def test_edge_counts_zero_and_all():
  x = jax.random.normal(jax.random.key(0), (8, 3))
  assert not nm_mask(x, 0, 4).any()
  assert nm_mask(x, 4, 4).all()
  assert nm_mask(x, 1, 1).all()


def test_positions_outside_the_group_axis_are_independent():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 6)).astype(np.float32)
  base = np.asarray(nm_mask(x, 1, 4))
  y = x.copy()
  y[:, 3] *= 100.0  # another column: columns are independent groups
  y[4:8, 0] = [9, 0, 0, 0]  # another group in the same column
  changed = np.asarray(nm_mask(y, 1, 4))
  np.testing.assert_array_equal(changed[:, [1, 2, 4, 5]], base[:, [1, 2, 4, 5]])
  np.testing.assert_array_equal(changed[[0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15], 0],
                                base[[0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15], 0])


def test_traced_n_does_not_recompile():
  traces = []

  @jax.jit
  def f(x, n):
    traces.append(1)
    return nm_mask(x, n, 16)

  x = jax.random.normal(jax.random.key(1), (64, 8))
  for n in (15, 8, 4, 2, 1):
    assert int(f(x, jnp.int32(n)).reshape(4, 16, 8).sum(axis=1).max()) == n
  assert len(traces) == 1


def test_vmap_and_grad_safe():
  x = jax.random.normal(jax.random.key(2), (3, 8, 4))
  batched = jax.vmap(lambda w: nm_mask(w, 2, 4))(x)
  for i in range(3):
    np.testing.assert_array_equal(batched[i], nm_mask(x[i], 2, 4))
  # The mask is a constant for autodiff (no gradient through the sort order).
  g = jax.grad(lambda w: jnp.sum(w * nm_mask(w, 1, 4)))(x[0])
  np.testing.assert_array_equal(g, nm_mask(x[0], 1, 4).astype(jnp.float32))


@pytest.mark.parametrize("kwargs,fragments", [
    (dict(n=5, m=4), ["n=5", "m=4", "(8, 6)", "axis 0"]),
    (dict(n=-1, m=4), ["n=-1", "0 <= n <= m"]),
    (dict(n=1, m=0), ["m >= 1", "m=0"]),
    (dict(n=1, m=4, axis=2), ["axis 2", "out of range", "(8, 6)"]),
    (dict(n=1, m=4, axis=(0, 0)), ["repeats"]),
    (dict(n=1, m=5), ["grouped length 8", "divisible by m=5", "(8, 6)"]),
    (dict(n=1, m=4, axis=1), ["grouped length 6", "axis 1"]),
    (dict(n=1, m=4.0), ["m must be a static Python int"]),
])
def test_bad_input_raises_value_error(kwargs, fragments):
  x = jnp.zeros((8, 6))
  with pytest.raises(ValueError) as info:
    nm_mask(x, **kwargs)
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))


def test_scalar_input_rejected():
  with pytest.raises(ValueError, match="rank >= 1"):
    nm_mask(jnp.float32(1.0), 1, 1)


def test_all_branches_agree_on_random_patterns():
  """Every n for a few m: the run-time branch choice never changes the result."""
  rng = np.random.default_rng(3)
  for m in (4, 8, 64):
    x = tied_values(rng, (m * 2, 3), jnp.float32)
    f = jax.jit(lambda x, n: nm_mask(x, n, m))
    for n in itertools.chain(range(0, 5), range(m - 4, m + 1)):
      if 0 <= n <= m:
        np.testing.assert_array_equal(f(x, jnp.int32(n)), reference_mask(x, n, m, 0))
