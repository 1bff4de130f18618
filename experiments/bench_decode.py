r"""Benchmark: decoding tokens/s of the decoder LM, dense vs compressed N:M, one process.

The GPT of pgf/models/gpt.py (random weights: speed does not depend on them) generates
`--new_tokens` tokens after a `--prompt`-token prompt with its key/value cache
(`pgf.models.gpt.generate`, one jitted call: prefill, then a scan of single-token steps), at batch
1 and 8 by default. Contenders, interleaved round by round (median over rounds, every call waited
for): "dense" = the finalized model (W ⊙ Φ stored dense), and the compressed model (every N:M kernel
an `NMKernel`, `pgf.deploy.intercept(impl)`) for each `nm_dot` implementation that runs here:
"gather", "expand" and, on a GPU, "pallas". "vs dense" = dense median / contender median (> 1:
compressed decodes faster). Also prints the bytes of the N:M kernels and of the whole model.

  python experiments/bench_decode.py                          # demo-sized model, FF at 1:16, CPU
  python experiments/bench_decode.py --variant=small --patterns=1:8,1:16 --dtype=bfloat16   # GPU
  python experiments/bench_decode.py --variant=small --qkv=1:8 --patterns=1:8
  python experiments/bench_decode.py --smoke                  # tiny, seconds (CI)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import pgf  # pylint: disable=g-import-not-at-top
from pgf import deploy  # pylint: disable=g-import-not-at-top
from pgf.families import gpt as lm_family  # pylint: disable=g-import-not-at-top
from pgf.models import gpt  # pylint: disable=g-import-not-at-top
from bench_deploy import impls_here, time_interleaved  # pylint: disable=g-import-not-at-top

SMOKE_SIZES = dict(emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, num_layers=2)


def build(variant: str, dtype: str, smoke: bool):
  """(model, float32 params) with GPT-2's padded vocabulary (the byte one for demo/smoke)."""
  sizes = SMOKE_SIZES if smoke else {}
  vocab = 384 if smoke or variant == "demo" else 50304
  model = gpt.GPT(gpt.get_config("demo" if smoke else variant, vocab, dtype=jnp.dtype(dtype),
                                 **sizes))
  params = jax.jit(lambda key: model.init(key, jnp.zeros((1, 4), jnp.int32))["params"])(
      jax.random.key(0))
  return model, params


def _nbytes(tree) -> int:
  leaves = jax.tree.leaves(tree, is_leaf=deploy.is_compressed)
  return sum(x.nbytes if deploy.is_compressed(x) else np.asarray(x).nbytes for x in leaves)


def decode_rows(variant="demo", patterns=("1:16",), qkv="", batches=(1, 8), new_tokens=32,
                prompt=8, dtype="float32", impls=None, rounds=5, smoke=False, log=print):
  """One row per (pattern, batch, contender): ms per generate call, tokens/s, vs dense."""
  model, params = build(variant, dtype, smoke)
  impls = list(impls or impls_here())
  rows = []
  for pattern in patterns:
    rules = lm_family.lm_rules(pattern, qkv=qkv or None)
    recipe = pgf.Recipe("sr_ste", rules, total_steps=1)
    cast = lambda tree: jax.tree.map(lambda x: x.astype(dtype), tree)
    dense = cast(pgf.finalize(params, recipe))
    packed = jax.tree.map(jnp.asarray, deploy.compress_params(jax.tree.map(np.asarray, params),
                                                              recipe, dtype=dtype))
    kernels = [k for k in jax.tree.leaves(packed, is_leaf=deploy.is_compressed)
               if deploy.is_compressed(k)]
    nm_dense = sum(k.dense_bytes for k in kernels)
    nm_packed = sum(k.nbytes for k in kernels)
    sizes = {"nm_kernel_bytes_dense": nm_dense, "nm_kernel_bytes_compressed": nm_packed,
             "model_bytes_dense": _nbytes(dense), "model_bytes_compressed": _nbytes(packed)}
    for batch in batches:
      tokens = jax.random.randint(jax.random.key(batch), (batch, prompt), 3, 256)
      fn = jax.jit(functools.partial(gpt.generate, model, max_new_tokens=new_tokens))

      def call(tree, impl=None):
        if impl is None:
          return fn(tree, tokens)
        with deploy.intercept(impl):  # active whenever the call (re)traces
          return fn(tree, tokens)

      contenders = {"dense": lambda: call(dense)}
      for impl in impls:
        contenders[impl] = functools.partial(call, packed, impl)
      # The compressed model decodes the same tokens as the dense finalized one.
      want = np.asarray(contenders["dense"]())
      for impl in impls:
        same = np.array_equal(np.asarray(contenders[impl]()), want)
        if not same:
          log(f"note: {pattern} batch {batch} {impl}: tokens differ from dense ({dtype} rounding)")
      times = time_interleaved(contenders, rounds, warmup=1)
      for name, seconds in times.items():
        rows.append({"pattern": pattern + (f" + QKV {qkv}" if qkv else ""), "batch": batch,
                     "contender": name, "ms": 1e3 * seconds,
                     "tokens_per_s": batch * new_tokens / seconds,
                     "vs_dense": times["dense"] / seconds, **sizes})
        log(f"  {rows[-1]['pattern']} batch {batch} {name}: {1e3 * seconds:.1f} ms, "
            f"{rows[-1]['tokens_per_s']:.0f} tokens/s, x{rows[-1]['vs_dense']:.2f} vs dense")
  return rows


def decode_table(rows) -> str:
  lines = ["| FF pattern | batch | contender | ms per call | tokens/s | vs dense |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['pattern']} | {r['batch']} | {r['contender']} | {r['ms']:.1f} | "
                 f"{r['tokens_per_s']:.0f} | {r['vs_dense']:.2f} |")
  seen = set()
  for r in rows:
    if r["pattern"] in seen:
      continue
    seen.add(r["pattern"])
    lines.append(f"\n{r['pattern']}: N:M kernels {r['nm_kernel_bytes_dense']:,} B dense -> "
                 f"{r['nm_kernel_bytes_compressed']:,} B compressed "
                 f"({r['nm_kernel_bytes_compressed'] / r['nm_kernel_bytes_dense']:.3f}); whole model "
                 f"{r['model_bytes_dense']:,} B -> {r['model_bytes_compressed']:,} B "
                 f"({r['model_bytes_compressed'] / r['model_bytes_dense']:.3f})")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="demo", choices=sorted(gpt.VARIANTS))
  parser.add_argument("--patterns", default="1:16", help="FF patterns, comma-separated")
  parser.add_argument("--qkv", default="", help="also Q/K/V at this pattern, e.g. 1:8")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--prompt", type=int, default=8, help="prompt tokens (prefilled)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--impls", default="", help="default: gather,expand (+ pallas on GPU)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default="", help="write the rows as JSON here")
  args = parser.parse_args(argv)
  if args.smoke:
    args.rounds, args.new_tokens, args.prompt = 2, 4, 2
  rows = decode_rows(args.variant, tuple(p for p in args.patterns.split(",") if p), args.qkv,
                     tuple(int(b) for b in args.batches.split(",")), args.new_tokens,
                     args.prompt, args.dtype,
                     [i for i in args.impls.split(",") if i] or None, args.rounds, args.smoke)
  device = jax.devices()[0]
  print(f"\nGPT {'smoke' if args.smoke else args.variant}, {args.dtype}, prompt {args.prompt} + "
        f"{args.new_tokens} new tokens per call, {device.platform} {device.device_kind} "
        f"({platform.machine()}), jax {jax.__version__}, {datetime.date.today()}; median of "
        f"{args.rounds} interleaved rounds\n")
  print(decode_table(rows))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "device": device.device_kind, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
  main()
