"""Compiler bytes of `nm_dot` per implementation on TPU, no TPU needed (libtpu compile-only).

For one FF-sized kernel (K x R, default ViT-B's 768 x 3072, bf16) at 1:M sparsity, compiles
x @ W for each implementation on one chip of each TPU generation and prints the compiler's
`cost_analysis()` bytes accessed (and flops) with the ratio to the dense matmul compiled in the
same run:

  dense   x @ W with the dense bf16 kernel (the baseline)
  gather  nm_dot(impl="gather")   expand  nm_dot(impl="expand")
  pallas  nm_dot(impl="pallas", backend="tpu") (the Mosaic lowering of pgf/deploy/pallas.py)

These are the compiler's estimates for the compiled HLO, not measured times (no TPU here).

    python experiments/aot_nm_dot.py [--chips=v4,v5e,v6e] [--batches=1,8,64] [--m=4,8,16,32]
        [--out=experiments/results/aot/nm_dot_bytes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pgf.aot import topology
from pgf.deploy import format as fmt
from pgf.deploy import nm_dot

SLICES = {"v4": "v4-8", "v5e": "v5e-4", "v6e": "v6e-4"}
IMPLS = ("dense", "gather", "expand", "pallas")


def compile_costs(device, impl: str, rows: int, k: int, r: int, n: int, m: int, dtype):
  s = NamedSharding(Mesh(np.array([device]), ("d",)), P())
  x = jax.ShapeDtypeStruct((rows, k), dtype, sharding=s)
  if impl == "dense":
    args = (x, jax.ShapeDtypeStruct((k, r), dtype, sharding=s))
    fn = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(dtype)
  else:
    g, r8 = k // m, -(-r // 8)
    args = (x, jax.ShapeDtypeStruct((g, n, r), dtype, sharding=s),
            jax.ShapeDtypeStruct((g, n, fmt.index_bits(m), r8), jnp.uint8, sharding=s))

    def fn(x, values, packed):
      kernel = fmt.NMKernel(values, packed, n, m, (0,), (k, r))
      return nm_dot(x, kernel, impl=impl, backend="tpu")
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return {"bytes": float(cost.get("bytes accessed", 0.0)), "flops": float(cost.get("flops", 0.0)),
          "temp_bytes": int(mem.temp_size_in_bytes)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--chips", default="v4,v5e,v6e")
  ap.add_argument("--batches", default="1,8,64")
  ap.add_argument("--m", default="4,8,16,32")
  ap.add_argument("--k", type=int, default=768)
  ap.add_argument("--r", type=int, default=3072)
  ap.add_argument("--out", default="experiments/results/aot/nm_dot_bytes.json")
  a = ap.parse_args(argv)
  if not topology.libtpu_available():
    sys.exit(f"aot_nm_dot: {topology.INSTALL_HINT}")
  rows_out, t0 = [], time.time()
  print(f"compiler bytes accessed per call, x (rows, {a.k}) @ W ({a.k}, {a.r}) bf16, 1 chip; "
        "ratio = impl / dense")
  print(f"{'chip':5} {'N:M':5} {'rows':>4} " + " ".join(f"{i:>18}" for i in IMPLS))
  for chip in a.chips.split(","):
    device = topology.resolve(SLICES[chip]).devices()[0]
    for m in [int(v) for v in a.m.split(",")]:
      for rows in [int(v) for v in a.batches.split(",")]:
        res = {}
        for impl in IMPLS:
          try:
            res[impl] = compile_costs(device, impl, rows, a.k, a.r, 1, m, jnp.bfloat16)
          except Exception as e:  # pylint: disable=broad-except
            res[impl] = {"error": str(e).split("\n")[0][:200]}
        dense = res["dense"]["bytes"]
        cells = []
        for impl in IMPLS:
          if "error" in res[impl]:
            cells.append(f"{'error':>18}")
          else:
            res[impl]["ratio_bytes"] = res[impl]["bytes"] / dense
            cells.append(f"{res[impl]['bytes'] / 1e6:8.2f}MB {res[impl]['ratio_bytes']:6.3f}x")
        print(f"{chip:5} 1:{m:<3} {rows:>4} " + " ".join(cells), flush=True)
        rows_out.append({"chip": chip, "n": 1, "m": m, "rows": rows, "k": a.k, "r": a.r,
                         "dtype": "bfloat16", **{i: res[i] for i in IMPLS}})
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out, "w") as f:
    json.dump({"command": "python experiments/aot_nm_dot.py " + " ".join(argv or sys.argv[1:]),
               "jax": jax.__version__, "seconds": round(time.time() - t0, 1),
               "note": "compiler cost_analysis() estimates for the compiled HLO, no device run",
               "results": rows_out}, f, indent=1)
  print(f"wrote {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
  main()
