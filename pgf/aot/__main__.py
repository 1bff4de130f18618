"""`python -m pgf.aot`: will this config fit that TPU slice or GPU box? Compiled here, no
accelerator needed.

  python -m pgf.aot --config=configs/vit_1_16.py --topology=v4-8
  python -m pgf.aot --config=configs/t5_1_8_qkv_1_8.py --topology=v5e-8 --compare=dense
  python -m pgf.aot --config=configs/vit_1_16.py --topology=v4-8 --config.device_micro_batch=256
  python -m pgf.aot --config=configs/vit_1_16.py --topology=h100-8

Compiles the train and eval steps exactly as `python -m pgf.main` would build them on that
slice (global batch, mesh, shardings, processes = hosts of the slice; abstract inputs, so no
data or weights are read), with libtpu's compile-only TPU client (GPU boxes: the CUDA plugin's
compile-only devices; the GPU compiler gives memory only, no cost model), and prints per device:
memory (arguments, outputs, temporaries, code) against the chip's HBM, the compiler's flops and
bytes per step, roofline estimates of the step time and MFU from the chip's datasheet peaks,
and the collectives in the compiled HLO. Exit status: 0 fits, 1 does not fit, 2 cannot check
(bad flag, invalid config, compiler missing). When a step does not fit, it compiles variants
(more micro-batches, rematerialised blocks, FSDP) and names the smallest change that fits.
"""

from __future__ import annotations

import copy
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the compile-only TPU client needs no device

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from pgf.aot import search

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, defined when it runs (`run`), not on import: importing this
  module next to pgf.main (which defines --config too) must not clash."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]); "
                                  "--config.FIELD=VALUE overrides as for pgf.main.")
  flags.DEFINE_string("topology", None, "Cloud TPU slice: v4-8, v4-32, v5e-8 (v5litepod-8), "
                      "v5e-16, v5p-8, v6e-8, 2xv5e-16 (two slices), or v4:2x2x1.")
  flags.DEFINE_string("compare", "", "'dense': also compile the config without sparsity "
                      "(config.sparsity.rules = ()) and print sparse/dense ratios.")
  flags.DEFINE_list("steps", ["train", "eval"], "Steps to compile: train, eval.")
  flags.DEFINE_bool("suggest", True, "If a step does not fit, compile variants to find the "
                    "smallest change that fits.")
  flags.DEFINE_integer("max_tries", 6, "Variants compiled at most by --suggest.")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


GIB = 2**30


def _gib(x) -> str:
  return "-" if x is None else f"{x / GIB:.2f}"


def _dense_config(config):
  dense = copy.deepcopy(config)
  dense.sparsity.rules = ()
  dense.sparsity.method = "dense"
  return dense


def _step_lines(result, usable: float) -> list[str]:
  lines = [f"  {'step':6} {'arguments':>10} {'outputs':>8} {'aliased':>8} {'temp':>8} "
           f"{'code':>6} {'peak GiB':>9} {'/ usable':>9} {'fits':>5} {'compile':>8}"]
  for s in result.steps:
    if s.ok:
      m = s.memory
      peak = s.peak_bytes
      lines.append(f"  {s.name:6} {_gib(m['arguments']):>10} {_gib(m['outputs']):>8} "
                   f"{_gib(m['aliased']):>8} {_gib(m['temp']):>8} {_gib(m['code']):>6} "
                   f"{_gib(peak):>9} {peak / usable:>8.0%} {'yes' if peak <= usable else 'NO':>5} "
                   f"{s.seconds:>7.0f}s")
    else:
      need = f"needs {_gib(s.oom.get('required'))} of {_gib(s.oom.get('available'))} GiB" \
          if s.oom and s.oom.get("required") else "compile error"
      lines.append(f"  {s.name:6} {'':>52} {'NO':>5} {s.seconds:>7.0f}s  ({need})")
      lines.append(f"         XLA: {s.error}")
  return lines


def _estimates(step, chip) -> list[str]:
  if not step.ok or not step.flops:
    return []
  compute = step.flops / (chip.peak_tflops * 1e12)
  memory = step.bytes_accessed / (chip.hbm_gbps * 1e9)
  est = max(compute, memory)
  bound = "compute" if compute >= memory else "HBM bandwidth"
  return [f"  {step.name}: {step.flops:.3e} flops, {step.bytes_accessed:.3e} bytes accessed "
          "per device (compiler cost model)",
          f"    estimate: step time >= {est * 1e3:.1f} ms ({bound}-bound roofline at "
          f"{chip.peak_tflops:g} TFLOP/s bf16, {chip.hbm_gbps:g} GB/s); MFU <= "
          f"{compute / est:.0%} (compiler flops, remat recompute included; collectives and "
          "overlap not modelled: an upper bound, not a measurement)"]


def _collective_lines(step) -> list[str]:
  if not step.ok:
    return []
  if not step.collectives:
    return [f"  {step.name}: no collectives"]
  out = [f"  {step.name}:"]
  for op, c in step.collectives.items():
    out.append(f"    {op:20} x{c['count']:<4} {c['bytes'] / 2**20:10.1f} MiB per device per "
               f"step (largest {c['largest'][0]}, {c['largest'][1] / 2**20:.1f} MiB)")
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from pgf.aot import topology as topo_lib  # pylint: disable=g-import-not-at-top
  # Compile-only: no backend but the CPU is opened. Importing pgf has imported jax already, so
  # the default above came too late for jax's own reading of JAX_PLATFORMS: set it here,
  # before any backend starts (the CUDA plugin then registers without looking for a GPU).
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", os.environ.get("JAX_PLATFORMS") or "cpu")
  if FLAGS.config is None or not FLAGS.topology:
    print("pgf.aot: --config=configs/X.py and --topology=SLICE are required (e.g. "
          f"--topology=v4-8; slices: {topo_lib.TOPOLOGY_EXAMPLES})", file=sys.stderr)
    return 2
  try:
    topo = topo_lib.resolve(FLAGS.topology)
  except ValueError as e:
    print(f"pgf.aot: {e}", file=sys.stderr)
    return 2
  if not topo_lib.compiler_available(topo.chip):
    print(f"pgf.aot: {topo_lib.install_hint(topo.chip)}", file=sys.stderr)
    return 2
  if FLAGS.compare not in ("", "dense"):
    print(f"pgf.aot: --compare={FLAGS.compare!r}: only 'dense' is supported", file=sys.stderr)
    return 2
  from pgf.aot.compile import compile_steps  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  chip = topo.chip
  try:
    usable = topo_lib.usable_bytes(chip)
  except ValueError as e:
    print(f"pgf.aot: {e}", file=sys.stderr)
    return 2
  pool = ("JAX's GPU pool, XLA_PYTHON_CLIENT_MEM_FRACTION" if chip.platform == "gpu"
          else "XLA keeps the rest")
  print(f"pgf.aot: {topo.describe()}; usable per chip {usable / GIB:.2f} GiB "
        f"({usable / (chip.hbm_gib * GIB):.0%} of HBM: {pool})", flush=True)
  try:
    result = compile_steps(config, topo, steps=FLAGS.steps)
  except (ValueError, RuntimeError) as e:
    print(f"pgf.aot: {e}", file=sys.stderr)
    return 2
  shards = result.mesh.get("data", 1) * result.mesh.get("fsdp", 1)
  print(f"train state {_gib(result.state_bytes)} GiB per device (params + optimizer state); "
        f"mesh {result.mesh}; global batch {result.global_batch} "
        f"({result.global_batch // max(shards, 1)} per data-parallel device), micro-batches "
        f"{result.micro_batches}, remat {result.remat}")
  for note in result.notes:
    print(f"note: {note}")
  print("per-device memory, GiB (compiler memory_analysis):")
  print("\n".join(_step_lines(result, usable)))
  print("compute (estimates, not measurements):")
  if not any(s.flops for s in result.steps if s.ok):
    print(f"  none: the {chip.platform.upper()} compiler gives no cost analysis")
  for s in result.steps:
    if s.ok and _estimates(s, chip):
      print("\n".join(_estimates(s, chip)))
  print("collectives in the compiled HLO:")
  for s in result.steps:
    if s.ok:
      print("\n".join(_collective_lines(s)))
  record = {"topology": FLAGS.topology, "chips": topo.chips, "hosts": topo.hosts,
            "chip": chip.name, "hbm_gib": chip.hbm_gib, "usable_gib": usable / GIB,
            "mesh": result.mesh, "global_batch": result.global_batch,
            "micro_batches": result.micro_batches, "remat": result.remat,
            "notes": result.notes, "fits": result.fits(),
            "steps": [_step_record(s) for s in result.steps]}
  if FLAGS.compare == "dense":
    dense = compile_steps(_dense_config(config), topo, steps=FLAGS.steps)
    print("sparse / dense (same slice, same batch; dense = config.sparsity.rules=()):")
    record["dense"] = [_step_record(s) for s in dense.steps]
    for s, d in zip(result.steps, dense.steps):
      if s.ok and d.ok:
        pairs = {"flops": (s.flops, d.flops), "bytes": (s.bytes_accessed, d.bytes_accessed),
                 "peak memory": (s.peak_bytes, d.peak_bytes)}
        print(f"  {s.name}: " + ", ".join(  # the GPU compiler has no cost model: no flops/bytes
            f"{k} {a / b:.4f}x" if a and b else f"{k} n/a" for k, (a, b) in pairs.items()))
  fits = result.fits()
  if fits:
    print(f"FITS: every step fits {topo.name} with "
          f"{_gib(usable - max(s.peak_bytes for s in result.steps))} GiB headroom per chip")
  else:
    worst = max(result.steps, key=lambda s: s.peak_bytes or float("inf"))
    print(f"DOES NOT FIT: the {worst.name} step needs {_gib(worst.peak_bytes)} GiB per chip, "
          f"{usable / GIB:.2f} GiB usable on {chip.name}")
    if FLAGS.suggest:
      print("searching for the smallest change that fits (each variant is compiled):",
            flush=True)
      found, tried = search.suggest(config, topo, result, compile_steps, usable,
                                    max_tries=FLAGS.max_tries)
      record["suggestion"] = {"tried": [(c, p, w) for c, p, w in tried],
                              "fits": found[0] if found else None}
      if found:
        print(f"pgf.aot: {FLAGS.topology} needs a change: the smallest that fits is "
              f"{search.flags_of(found[0])} (peak "
              f"{_gib(max(s.peak_bytes for s in found[1].steps))} GiB per chip)")
      else:
        print(f"pgf.aot: no tried change fits {FLAGS.topology}; use a larger slice, a smaller "
              "--config.batch_size or a smaller model")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(record, f, indent=1, default=str)
  return 0 if fits else 1


def _step_record(s):
  return {"name": s.name, "ok": s.ok, "compile_seconds": round(s.seconds, 1),
          "memory": s.memory, "peak_bytes": s.peak_bytes, "flops": s.flops,
          "bytes_accessed": s.bytes_accessed, "collectives": s.collectives, "error": s.error,
          "oom": s.oom}


def run():
  define_flags()
  logging.set_verbosity(logging.WARNING)
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
