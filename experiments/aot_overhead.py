"""Compiler-estimated overhead of every pgf method vs dense, on TPU slices, no TPU needed.

For ViT-B/16 (configs/vit_1_16.py: FF 1:16) and T5-base (configs/t5_1_8_qkv_1_8.py: FF 1:8 +
QKV 1:8), compiles the trainer's train step (`pgf.aot.compile.compile_steps`, the code path of
`python -m pgf.main`) once per method with libtpu's compile-only client and prints flops, bytes
accessed and peak memory per device, each as a ratio to the dense step compiled in the same run
(dense = `config.sparsity.rules=()`). Models are cut to ONE block (ViT: 1 encoder block; T5: 1
encoder + 1 decoder layer; embeddings, heads and the optimizer as in the config) at a small
per-chip batch so that each compile takes about a minute on a CPU: the ratios are the per-block
overhead at that batch, not a full-depth, full-batch measurement.

    python experiments/aot_overhead.py [--models=vit,t5] [--topologies=v4-8,v5e-8]
        [--batch_per_chip=16] [--out=experiments/results/aot/overhead.json]

Results are appended to --out after every compile (a rerun skips the rows already there).
Compiler estimates (cost_analysis / memory_analysis), not device measurements.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"vit": ("vit_1_16.py", "ViT-B/16, FF 1:16"),
           "t5": ("t5_1_8_qkv_1_8.py", "T5-base, FF 1:8 + QKV 1:8")}
METHODS = ("dense", "ste", "sr_ste", "mdgf_linear", "mdgf_exp", "mdgf_cosine", "sdgf_stepwise",
           "sdgf_geometric")


def load(name):
  path = os.path.join(ROOT, "configs", CONFIGS[name][0])
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None)


def config_for(model: str, method: str, batch: int):
  config = load(model)
  with config.unlocked():
    if model == "vit":
      config.model.depth = 1
    else:
      config.model.num_encoder_layers = 1
      config.model.num_decoder_layers = 1
    config.batch_size = batch
    config.eval_batch_size = batch
    if method == "dense":
      config.sparsity.rules = ()
      config.sparsity.method = "dense"
    else:
      config.sparsity.method = method
  return config


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="vit,t5")
  ap.add_argument("--topologies", default="v4-8,v5e-8")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--batch_per_chip", type=int, default=16)
  ap.add_argument("--out", default="experiments/results/aot/overhead.json")
  a = ap.parse_args(argv)
  sys.path.insert(0, ROOT)
  from pgf.aot import compile as aot_compile  # pylint: disable=g-import-not-at-top
  from pgf.aot import topology  # pylint: disable=g-import-not-at-top
  if not topology.libtpu_available():
    sys.exit(f"aot_overhead: {topology.INSTALL_HINT}")
  rows = json.load(open(a.out))["rows"] if os.path.exists(a.out) else []
  done = {(r["model"], r["topology"], r["method"]) for r in rows}
  topos = {name: topology.resolve(name) for name in a.topologies.split(",")}
  gpus = [name for name, t in topos.items() if t.chip.platform != "tpu"]
  if gpus:  # flops and bytes come from the TPU compiler's cost model; XLA:GPU has none
    sys.exit(f"aot_overhead: TPU slices only, not {', '.join(gpus)}: the GPU compiler gives no "
             "flops or bytes (python -m pgf.aot --compare=dense gives its peak memory ratio)")
  for topo_name, topo in topos.items():
    for model in a.models.split(","):
      for method in a.methods.split(","):
        if (model, topo_name, method) in done:
          continue
        config = config_for(model, method, a.batch_per_chip * topo.chips)
        t0 = time.time()
        result = aot_compile.compile_steps(config, topo, steps=("train",))
        step = result.steps[0]
        row = {"model": model, "what": CONFIGS[model][1] + ", one block", "topology": topo_name,
               "method": method, "global_batch": config.batch_size, "ok": step.ok,
               "flops": step.flops, "bytes": step.bytes_accessed, "peak_bytes": step.peak_bytes,
               "error": step.error, "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        with open(a.out, "w") as f:
          json.dump({"command": "python experiments/aot_overhead.py " + " ".join(
              argv if argv is not None else sys.argv[1:]), "rows": rows}, f, indent=1)
        print(f"{topo_name} {model} {method}: flops {step.flops} bytes {step.bytes_accessed} "
              f"peak {step.peak_bytes} ({row['seconds']} s)", flush=True)
  print(table(rows))


def table(rows) -> str:
  """Markdown: method rows, (model, topology) column groups of flops / bytes / peak ratios."""
  lines = ["| model | slice | method | flops / dense | bytes / dense | peak memory / dense |",
           "|---|---|---|---|---|---|"]
  dense = {(r["model"], r["topology"]): r for r in rows if r["method"] == "dense" and r["ok"]}
  for r in rows:
    d = dense.get((r["model"], r["topology"]))
    if r["method"] == "dense" or d is None or not r["ok"]:
      continue
    lines.append(f"| {r['what']} | {r['topology']} (batch {r['global_batch']}) | {r['method']} | "
                 f"{r['flops'] / d['flops']:.4f} | {r['bytes'] / d['bytes']:.4f} | "
                 f"{r['peak_bytes'] / d['peak_bytes']:.4f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
