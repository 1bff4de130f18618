"""Benchmark: `pgf.nm_mask` vs a double-argsort mask vs one elementwise pass.

The double argsort (rank = argsort(argsort(-|x|))) is the common way to build N:M masks in JAX
pruning libraries; the elementwise pass (`|x| > 0`, same input and bool output as a mask) is
the floor any mask computation pays for reading the array. All three are jitted and timed in
the same process on the same arrays, interleaved call by call; the table prints medians and
ratios. `experiments/bench_accelerator.py` reuses `mask_rows` for its accelerator table.

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


def interleaved_seconds(contenders, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
  """{name: thunk} -> {name: [seconds per call]}: every thunk warmed up (compiled) first, then
  `repeats` rounds that call each once, in a rotating order, each to `block_until_ready`."""
  names = list(contenders)
  for name in names:
    for _ in range(warmup):
      jax.block_until_ready(contenders[name]())
  out = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      jax.block_until_ready(contenders[name]())
      out[name].append(time.perf_counter() - start)
  return out


def mask_rows(shapes, patterns, dtypes=("float32",), repeats: int = 15, on_row=None):
  """One dict per (shape, dtype, pattern): median ms of nm_mask, double argsort, elementwise.

  The three contenders are timed interleaved on the same array; `on_row(row)` sees each row as
  it is measured (for printing progress).
  """
  rows = []
  for shape in shapes:
    for dtype in dtypes:
      x = jax.random.normal(jax.random.key(0), shape, jnp.dtype(dtype))
      for pattern in patterns:
        n, m = (int(v) for v in pattern.split(":"))
        # n is passed as an array, exactly as the training step does (no recompiles per n).
        seconds = interleaved_seconds({
            "nm_mask": lambda: pgf_mask(x, jnp.int32(n), m),
            "double_argsort": lambda: double_argsort_mask(x, n, m),
            "elementwise": lambda: elementwise_pass(x)}, repeats)
        ms = {k: 1e3 * statistics.median(v) for k, v in seconds.items()}
        row = {"shape": list(shape), "dtype": str(dtype), "pattern": pattern,
               "nm_mask_ms": ms["nm_mask"], "double_argsort_ms": ms["double_argsort"],
               "elementwise_ms": ms["elementwise"],
               "argsort_over_nm_mask": ms["double_argsort"] / ms["nm_mask"],
               "nm_mask_over_elementwise": ms["nm_mask"] / ms["elementwise"],
               "calls": repeats}
        rows.append(row)
        if on_row:
          on_row(row)
  return rows


TABLE_HEADER = ("| shape | dtype | N:M | nm_mask ms | double argsort ms | elementwise ms "
                "| argsort / nm_mask | nm_mask / elementwise |\n|---|---|---|---|---|---|---|---|")


def table_row(row) -> str:
  return (f"| {tuple(row['shape'])} | {row['dtype']} | {row['pattern']} | {row['nm_mask_ms']:.3f} "
          f"| {row['double_argsort_ms']:.3f} | {row['elementwise_ms']:.3f} "
          f"| {row['argsort_over_nm_mask']:.1f}x | {row['nm_mask_over_elementwise']:.2f}x |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--dtypes", default="float32", help="e.g. float32,bfloat16")
  args = parser.parse_args()
  shapes = ((768, 3072),) if args.quick else SHAPES
  patterns = ("1:16",) if args.quick else PATTERNS
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.repeats} interleaved "
        f"calls each, median ms")
  print(TABLE_HEADER)
  mask_rows(shapes, patterns, args.dtypes.split(","), args.repeats,
            on_row=lambda row: print(table_row(row), flush=True))


if __name__ == "__main__":
  main()
