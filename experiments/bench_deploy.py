r"""Benchmark: dense vs compressed N:M inference, one process, contenders interleaved.

1. Matmul at the ViT-B FF shapes (768 x 3072 and 3072 x 768): x (batch, K) @ W for the dense
   finalized kernel and for the `NMKernel` through `pgf.deploy.nm_dot` with each implementation
   that runs here ("gather", "expand" = rebuild W in the graph then matmul, "pallas" on GPU),
   at 1:4 ... 1:32, batch 1/8/64, bfloat16 and float32.
2. A whole ViT (the `configs/vit_1_16.py:demo` size by default, FF at 1:16): jitted apply on
   the finalized dense params vs on the compressed params under `pgf.deploy.intercept()`.
3. Memory: bytes of the FF kernel and of the whole model, dense vs compressed.

Every round calls each contender once (rotating order) after a warm-up; the tables give medians
over rounds (block_until_ready on every call) and "speed-up" = dense median / contender median
(> 1: the compressed form is faster).

  python experiments/bench_deploy.py                 # the full grid (CPU: ~10 min)
  python experiments/bench_deploy.py --smoke         # tiny shapes, seconds (CI)
  python experiments/bench_deploy.py --model=B/16 --batches=1,8   # ViT-B/16 whole model
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import pgf  # pylint: disable=g-import-not-at-top
from pgf import deploy  # pylint: disable=g-import-not-at-top


def time_interleaved(contenders: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
  """{name: median seconds} of zero-argument callables, called in rotating order per round."""
  names = list(contenders)
  for _ in range(warmup):
    for name in names:
      jax.block_until_ready(contenders[name]())
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      jax.block_until_ready(contenders[name]())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def impls_here() -> list[str]:
  impls = ["gather", "expand"]
  if jax.default_backend() == "gpu":
    impls.insert(0, "pallas")
  return impls


def matmul_rows(shapes, patterns, batches, dtypes, rounds):
  """One row per (shape, pattern, dtype, batch): median ms of dense and each nm_dot impl."""
  rows = []
  rng = np.random.default_rng(0)
  for k, r in shapes:
    w = rng.standard_normal((k, r)).astype(np.float32)
    for pattern in patterns:
      n, m = (int(v) for v in pattern.split(":"))
      for dtype in dtypes:
        compressed = jax.tree.map(jnp.asarray, deploy.from_dense(w, n, m, 0, dtype=dtype))
        dense_w = jnp.asarray(compressed.dense())
        for batch in batches:
          x = jnp.asarray(rng.standard_normal((batch, k)), dtype)
          contenders = {"dense": lambda x=x, w=dense_w: _dense_mm(x, w)}
          for impl in impls_here():
            contenders[impl] = lambda x=x, c=compressed, impl=impl: _nm_mm(x, c, impl)
          medians = time_interleaved(contenders, rounds)
          rows.append(dict(shape=(k, r), pattern=pattern, dtype=jnp.dtype(dtype).name,
                           batch=batch, **medians))
  return rows


@jax.jit
def _dense_mm(x, w):
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


_nm_mm = jax.jit(lambda x, c, impl: deploy.nm_dot(x, c, impl=impl), static_argnums=2)


def matmul_table(rows) -> str:
  impls = impls_here()
  head = "| W (K x R) | N:M | dtype | batch | dense ms | " + " | ".join(
      f"{i} ms | {i} speed-up" for i in impls) + " |"
  lines = [head, "|" + "---|" * (5 + 2 * len(impls))]
  for row in rows:
    cells = [f"{row['shape'][0]}x{row['shape'][1]}", row["pattern"], row["dtype"],
             str(row["batch"]), f"{1e3 * row['dense']:.3f}"]
    for i in impls:
      cells += [f"{1e3 * row[i]:.3f}", f"{row['dense'] / row[i]:.2f}x"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def vit_model(variant: str, smoke: bool):
  from pgf.families import vit as vit_family  # pylint: disable=g-import-not-at-top
  from pgf.deploy import model as model_lib  # pylint: disable=g-import-not-at-top
  arg = "demo" if variant == "demo" else f"variant={variant}"
  config = vit_family.vit_config(ff="1:16", arg=arg)
  if smoke:
    config.model.update(variant="Ti/4", width=32, depth=1, num_heads=2, mlp_dim=64)
  model, _, inputs = model_lib.abstract_model(config)
  params = jax.jit(lambda: model.init({"params": jax.random.key(0)}, *inputs,
                                      train=False)["params"])()
  recipe = model_lib.config_recipe(config)
  return model, jax.tree.map(np.asarray, params), recipe, inputs[0].shape[1:]


def model_rows(variant, batches, dtypes, rounds, smoke):
  model, params, recipe, image_shape = vit_model(variant, smoke)
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  rows = []
  for dtype in dtypes:
    dense = jax.tree.map(lambda a: jnp.asarray(a, dtype), pgf.finalize(params, recipe))
    compressed = jax.tree.map(jnp.asarray, deploy.compress_params(params, recipe, dtype=dtype))
    memory = (_nbytes(dense), _nbytes(compressed))
    for batch in batches:
      x = jnp.asarray(np.random.default_rng(batch).standard_normal((batch,) + image_shape),
                      jnp.float32)
      contenders = {"dense": lambda x=x: apply(dense, x)}
      for impl in ("auto", "gather"):
        # The interceptor acts while tracing: one jitted function per implementation.
        with deploy.intercept(impl=impl):
          fn = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
          jax.block_until_ready(fn(compressed, x))
        contenders[impl] = lambda x=x, fn=fn: fn(compressed, x)
      medians = time_interleaved(contenders, rounds)
      rows.append(dict(dtype=jnp.dtype(dtype).name, batch=batch, memory=memory, **medians))
  return rows


def _nbytes(tree) -> int:
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def model_table(rows) -> str:
  lines = ["| dtype | batch | dense ms | compressed (auto) ms | speed-up | compressed (gather) ms "
           "| speed-up | params dense | params compressed |", "|" + "---|" * 9]
  for row in rows:
    lines.append(f"| {row['dtype']} | {row['batch']} | {1e3 * row['dense']:.2f} | "
                 f"{1e3 * row['auto']:.2f} | {row['dense'] / row['auto']:.2f}x | "
                 f"{1e3 * row['gather']:.2f} | {row['dense'] / row['gather']:.2f}x | "
                 f"{row['memory'][0]:,} B | {row['memory'][1]:,} B |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny shapes and 3 rounds (CI)")
  parser.add_argument("--patterns", default="1:4,1:8,1:16,1:32")
  parser.add_argument("--batches", default="1,8,64")
  parser.add_argument("--dtypes", default="bfloat16,float32")
  parser.add_argument("--rounds", type=int, default=10, help="timed calls per contender")
  parser.add_argument("--model", default="demo", help="ViT variant for the whole-model rows "
                      "('demo': configs/vit_1_16.py:demo; e.g. B/16)")
  parser.add_argument("--skip_matmul", action="store_true")
  args = parser.parse_args(argv)
  shapes = [(768, 3072), (3072, 768)]
  patterns, batches = args.patterns.split(","), [int(b) for b in args.batches.split(",")]
  dtypes, rounds = args.dtypes.split(","), args.rounds
  if args.smoke:
    shapes, patterns, batches, dtypes, rounds = [(64, 32)], ["1:4"], [1, 8], ["float32"], 2
  device = jax.devices()[0]
  print(f"{datetime.date.today()}, JAX {jax.__version__}, {device.platform} "
        f"({getattr(device, 'device_kind', '')}), {os.cpu_count()} CPUs, {platform.machine()}; "
        f"medians of {rounds} interleaved calls")
  if not args.skip_matmul:
    print("\n" + matmul_table(matmul_rows(shapes, patterns, batches, dtypes, rounds)))
  print(f"\nWhole ViT ({'smoke' if args.smoke else args.model}, FF 1:16):\n")
  print(model_table(model_rows(args.model, batches, dtypes, rounds, args.smoke)))


if __name__ == "__main__":
  main()
