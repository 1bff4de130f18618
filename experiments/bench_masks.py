"""Benchmark: `pgf.nm_mask` vs a double-argsort mask vs one elementwise pass.

The double argsort (rank = argsort(argsort(-|x|))) is the common way to build N:M masks in JAX
pruning libraries; the elementwise pass (`|x| > 0`, same input and bool output as a mask) is
the floor any mask computation pays for reading the array. All three are jitted and timed in
the same process on the same arrays; the table prints medians and ratios.

  python experiments/bench_masks.py            # full table (a few minutes on 2 CPU cores)
  python experiments/bench_masks.py --quick    # 1:16 on (768, 3072) only
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from pgf.masks import nm_mask

SHAPES = ((768, 3072), (3072, 768), (1024, 4096))
PATTERNS = ("2:4", "1:8", "1:16", "1:32", "1:128")


@functools.partial(jax.jit, static_argnames=("n", "m"))
def double_argsort_mask(x, n, m):
  """Groups of m along axis 0 ranked by two argsorts (stable, so ties go to the lower index)."""
  rows, cols = x.shape
  groups = jnp.abs(x).T.reshape(-1, m)
  rank = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1, stable=True)
  return (rank < n).reshape(cols, rows).T


@jax.jit
def elementwise_pass(x):
  return jnp.abs(x) > 0


@functools.partial(jax.jit, static_argnames=("m",))
def pgf_mask(x, n, m):
  return nm_mask(x, n, m, axis=0)


def median_ms(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args()
  shapes = ((768, 3072),) if args.quick else SHAPES
  patterns = ("1:16",) if args.quick else PATTERNS
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.repeats} repeats, "
        f"median ms")
  print("| shape | N:M | nm_mask | double argsort | elementwise | argsort / nm_mask "
        "| nm_mask / elementwise |")
  print("|---|---|---|---|---|---|---|")
  for shape in shapes:
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    t_elem = median_ms(elementwise_pass, x, repeats=args.repeats)
    for pattern in patterns:
      n, m = (int(v) for v in pattern.split(":"))
      # n is passed as an array, exactly as the training step does (no recompiles per n).
      t_mask = median_ms(pgf_mask, x, jnp.int32(n), m, repeats=args.repeats)
      t_sort = median_ms(double_argsort_mask, x, n, m, repeats=max(3, args.repeats // 3))
      print(f"| {shape} | {pattern} | {t_mask:.2f} | {t_sort:.1f} | {t_elem:.2f} "
            f"| {t_sort / t_mask:.0f}x | {t_mask / t_elem:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
