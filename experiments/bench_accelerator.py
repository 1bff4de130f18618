r"""Benchmark pgf on an accelerator: masks, train steps, input pipeline and a PyTorch peer.

One script, sub-benchmarks chosen with `--only` (default: all). Each figure is measured in one
process with its contenders interleaved (median of >= 10 timed calls after a warm-up, every call
waited for with `block_until_ready`):

  masks   `pgf.nm_mask` vs a double-argsort mask vs one elementwise pass (`|x| > 0`) on ViT-B
          (768x3072, 3072x768) and T5-base (768x2048, 2048x768) kernels, float32 and bfloat16,
          patterns 2:4 ... 1:128 (`experiments/bench_masks.py`'s `mask_rows`).
  step    the full jitted train step of ViT-B/16 at 224px (configs/vit_1_16.py: bf16 compute,
          mixup + sigmoid BCE, synthetic uint8 ImageNet batches normalised on the device) for
          dense and every method, each timed back to back with dense
          (`experiments/bench_step.py`'s `measure_methods`): step ms, images/s, step / dense,
          MFU, device memory. `--batch=auto` starts at 512 and halves on out-of-memory; any batch
          that runs out of memory is halved too (the JSON records it).
  t5      the same for a T5-base (v1.1) fine-tuning step (configs/t5_1_8_qkv_1_8.py sizes, bf16
          compute, random tokens, 512 -> 114 tokens, vocabulary 32128).
  input   the host input pipeline's images/s with all host cores, next to the step's images/s
          per device (through the adapter `input_throughput` below).
  peer    `experiments/peers/torch_pgf_reference.py` (the authors' algorithm in PyTorch: timm
          ViT-B/16, sort-based N:M masks of every FF kernel each step, decayed mask, AMP bf16)
          interleaved with pgf's MDGF-Exp step at the same batch; only where torch and timm
          import.
  decode  the decoder LM (pgf/models/gpt.py, GPT-2 small geometry, bf16) generating 64 tokens
          with its KV cache at batch 1 and 8, FF at 1:8 and 1:16: finalized dense vs compressed
          through `nm_dot` ("gather", "expand", "pallas" on GPU), tokens/s and the ratio to
          dense (`experiments/bench_decode.py`'s `decode_rows`).

Prints a markdown table per sub-benchmark and writes everything to `--out` (JSON, with the
device, the jax / jaxlib / flax versions and the date). `--merge a.json b.json ...` combines the
JSONs of separate runs (one process per sub-benchmark, as experiments/device_check.sh runs them)
into one JSON and table. `--smoke` runs every sub-benchmark with tiny shapes on a CPU in seconds
(what tests/test_bench_accelerator.py checks); its numbers mean nothing.

  python experiments/bench_accelerator.py --out=/tmp/bench.json                  # everything
  python experiments/bench_accelerator.py --only=step --batch=auto --methods=dense,mdgf_exp
  python experiments/bench_accelerator.py --smoke --out=/tmp/smoke.json
  python experiments/bench_accelerator.py --merge /tmp/masks.json /tmp/step.json --out=all.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

SUBS = ("masks", "step", "t5", "input", "peer", "decode")
# sdgf_custom needs user-given stages (its step is sdgf_stepwise's with other patterns).
METHODS = ("dense", "ste", "sr_ste", "mdgf_linear", "mdgf_exp", "mdgf_cosine", "sdgf_stepwise",
           "sdgf_geometric", "mdgf_exp+sdgf_geometric")
SMOKE_METHODS = ("dense", "mdgf_exp")  # few compiles: CI runs the smoke mode
MASK_SHAPES = ((768, 3072), (3072, 768), (768, 2048), (2048, 768))  # ViT-B and T5-base FF
MASK_PATTERNS = ("2:4", "1:4", "1:8", "1:16", "1:32", "1:128")
# Dense bf16 matrix peak per device, FLOP/s, from the vendors' datasheets (no sparsity). The
# first key contained in `device_kind` wins, so the more specific names come first.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989e12), ("H100", 989e12),
             ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
             ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12),
             ("TPU v5e", 197e12), ("TPU v4", 275e12))
GIB = 2.0 ** 30


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=",".join(SUBS), help=f"comma-separated of {SUBS}")
  parser.add_argument("--out", default="", help="write the JSON here")
  parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                      help="combine these results files (no measuring)")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU, in seconds")
  parser.add_argument("--batch", default="256", help="ViT step batch, or 'auto' (512, halved "
                      "on out-of-memory)")
  parser.add_argument("--t5-batch", default="128", help="T5 step batch, or 'auto' (256, ...)")
  parser.add_argument("--t5-lengths", default="512:114", help="input:target tokens")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--t5-methods", default="", help="default: --methods")
  parser.add_argument("--rounds", type=int, default=10,
                      help="step: rounds; each sparse method is timed once per round next to "
                      "dense, so every median is over >= this many calls")
  parser.add_argument("--calls", type=int, default=20, help="masks / peer: timed calls each")
  parser.add_argument("--compile-threads", type=int, default=0,
                      help="methods compiled at once (0: min(host cores, methods))")
  parser.add_argument("--input-seconds", type=float, default=20.0)
  args = parser.parse_args(argv)
  args.only = [s.strip() for s in args.only.split(",") if s.strip()]
  unknown = set(args.only) - set(SUBS)
  if unknown:
    parser.error(f"--only: unknown {sorted(unknown)}; choose from {SUBS}")
  if args.smoke:
    args.rounds, args.calls, args.input_seconds = min(args.rounds, 3), min(args.calls, 3), 1.0
    if args.methods == ",".join(METHODS):
      args.methods = ",".join(SMOKE_METHODS)
  return args


# ----------------------------------------------------------------------------- environment
def version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device_kind": device.device_kind, "platform": device.platform,
      "device_count": jax.device_count(), "host_cores": os.cpu_count(),
      "python": platform.python_version(), "jax": jax.__version__,
      **{name: version(name) for name in ("jaxlib", "flax", "optax", "numpy")},
      "peak_bf16_flops": peak_flops(device.device_kind, device.platform),
      "smoke": bool(args.smoke), "argv": sys.argv[1:]}


def peak_flops(device_kind: str, platform_name: str) -> float | None:
  """The datasheet's dense bf16 FLOP/s of one device, or None (CPUs, unknown chips)."""
  if platform_name == "cpu":
    return None
  for name, flops in PEAK_BF16:
    if name.lower() in device_kind.lower():
      return flops
  return None


def device_peak_bytes() -> int | None:
  """The process's peak device memory (allocator statistics; None where there are none)."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # CPU backends raise or return None
    return None
  return stats.get("peak_bytes_in_use")


def matmul_ceiling(smoke: bool) -> dict:
  """Measured bf16 matmul rate (random data, median of 10): the practical ceiling for MFU."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bench_masks import interleaved_seconds  # pylint: disable=g-import-not-at-top
  n = 256 if smoke else 8192
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.bfloat16)
  dot = jax.jit(jnp.dot)
  seconds = statistics.median(interleaved_seconds({"dot": lambda: dot(a, b)}, 10)["dot"])
  return {"size": n, "flops_per_s": 2.0 * n ** 3 / seconds}


def is_oom(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}".lower()
  return "resource_exhausted" in text or "out of memory" in text or "oom" in text.split()


# ----------------------------------------------------------------------------- masks
def run_masks(args, log) -> dict:
  from bench_masks import mask_rows, table_row  # pylint: disable=g-import-not-at-top
  shapes = ((64, 128),) if args.smoke else MASK_SHAPES
  patterns = ("2:4", "1:16") if args.smoke else MASK_PATTERNS
  rows = mask_rows(shapes, patterns, ("float32", "bfloat16"), max(args.calls, 3),
                   on_row=lambda row: log("# masks " + table_row(row)))
  return {"rows": rows}


# ----------------------------------------------------------------------------- train steps
def vit_setup(args, batch: int):
  """(config, init_fn, loss_fn, local batch, matmuls) of the ViT-B/16 step on synthetic data."""
  from bench_step import task_based  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, "configs/vit_1_16.py"))
  config.data.name = "synthetic_imagenet"
  config.batch_size = batch
  if args.smoke:
    config.model.update(variant="Ti/4", width=64, depth=1, num_heads=2, mlp_dim=128)
    config.data.image_size = 16
    config.sparsity.sdgf_k = 4  # 1:16 stages 4:64, 2:32, 1:16 (64 input features)
    config.model.dtype = "float32"  # XLA:CPU compiles bf16 steps slower; smoke numbers mean nothing
  init_fn, loss_fn, local = task_based(config)
  return config, init_fn, loss_fn, local, flops.matmuls_from_config(config, class_token=True)


def t5_setup(args, batch: int):
  """(config, init_fn, loss_fn, local batch, matmuls) of the T5-base fine-tuning step."""
  from bench_step import synthetic_t5  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  from pgf.models import t5 as t5_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, "configs/t5_1_8_qkv_1_8.py"))
  config.batch_size = batch
  config.model.dtype = "bfloat16"
  inputs, targets = (int(v) for v in args.t5_lengths.split(":"))
  vocab = 32128
  if args.smoke:
    config.model.update(variant="tiny", **{**t5_lib.VARIANTS["tiny"], "num_encoder_layers": 1,
                                           "num_decoder_layers": 1})
    inputs, targets, vocab = 32, 8, 384
    config.model.dtype = "float32"
  init_fn, loss_fn, local = synthetic_t5(config, batch, inputs, targets, vocab)
  sizes = {k: config.model.get(k) for k in t5_lib.VARIANTS["base"]
           if config.model.get(k) is not None}
  c = t5_lib.get_config(config.model.variant, vocab, **sizes)
  return config, init_fn, loss_fn, local, flops.t5_matmuls(c, inputs, targets)


def executed_flops(matmuls, batch: int) -> float:
  """FLOPs one training step executes (every matmul of the model, forward + backward, at dense
  cost: masks zero weights but the dense kernels still multiply them)."""
  import pgf  # pylint: disable=g-import-not-at-top
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  recipe = pgf.Recipe(method="dense", total_steps=10)
  return float(flops.training_flops_per_step(matmuls, recipe, batch, groups=flops.ALL_GROUPS)[0])


def run_step_kind(args, kind: str, log) -> dict:
  """The step (ViT) or t5 sub-benchmark: every method next to dense, halving on OOM."""
  import jax  # pylint: disable=g-import-not-at-top
  from bench_step import measure_methods  # pylint: disable=g-import-not-at-top
  from pgf.train import sharding  # pylint: disable=g-import-not-at-top
  setup = vit_setup if kind == "step" else t5_setup
  spec = args.batch if kind == "step" else args.t5_batch
  auto = spec == "auto"
  batch = (512 if kind == "step" else 256) if auto else int(spec)
  if args.smoke:
    batch = min(batch, 4)
  methods = (args.methods if kind == "step" else (args.t5_methods or args.methods)).split(",")
  threads = args.compile_threads or min(os.cpu_count() or 1, len(methods))
  ceiling = matmul_ceiling(args.smoke)
  requested = batch
  while True:
    try:
      config, init_fn, loss_fn, local, matmuls = setup(args, batch)
      mesh = sharding.build_mesh(config.mesh)
      data = sharding.global_batch(local, sharding.batch_sharding(mesh))
      result = measure_methods(config, methods, init_fn, loss_fn, data, mesh, args.rounds, 1,
                               threads=threads, log=log)
      break
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e) or batch <= 1:
        raise
      log(f"# {kind}: batch {batch} ran out of device memory; trying {batch // 2}")
      batch //= 2
      jax.clear_caches()
  model = (f"ViT-{config.model.variant} {config.data.image_size}px" if kind == "step"
           else f"T5-{config.model.variant} {args.t5_lengths if not args.smoke else '32:8'}")
  return summarise(result, model, batch, requested, auto, executed_flops(matmuls, batch),
                   ceiling, config)


def summarise(result, model: str, batch: int, requested: int, auto: bool, flops: float,
              ceiling: dict, config) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind, device.platform)
  per_device = batch / jax.device_count()
  dense_ms = 1e3 * statistics.median(result["times"]["dense"])
  rows = []
  for method, times in result["times"].items():
    seconds = statistics.median(times)
    ratios = result["ratios"].get(method) or [1.0]
    info = result["info"][method]
    rows.append({
        "method": method, "step_ms": 1e3 * seconds, "images_per_s": batch / seconds,
        "images_per_s_per_device": per_device / seconds,
        "ratio_to_dense": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "ratio_of_medians": 1e3 * seconds / dense_ms,
        "mfu": (flops / jax.device_count() / seconds / peak) if peak else None,
        "of_matmul_ceiling": flops / jax.device_count() / seconds / ceiling["flops_per_s"],
        "step_gib": (info["step_bytes"] / GIB) if info["step_bytes"] is not None else None,
        "pgf_ops_ms": (1e3 * statistics.median(result["ops"][method])
                       if result["ops"][method] else 0.0),
        "calls": len(times)})
  return {"model": model, "batch": batch, "batch_requested": requested, "batch_auto": auto,
          "compute_dtype": str(config.model.get("dtype")), "rules": [list(r) for r in
                                                                    config.sparsity.rules],
          "flops_per_step": flops, "peak_bf16_flops": peak, "matmul_ceiling": ceiling,
          "device_peak_gib": (lambda b: b / GIB if b is not None else None)(device_peak_bytes()),
          "rows": rows}


# ----------------------------------------------------------------------------- input
def input_throughput(batch: int, image_size: int, seconds: float, smoke: bool):
  """ADAPTER to experiments/bench_input.py (written on another branch; wire it at merge).

  Expected there: `measure(batch_size, image_size, workers, seconds, smoke) -> {"images_per_s":
  float, ...}`, the host pipeline (grain workers over a synthetic ImageNet-like ArrayRecord set)
  read for `seconds` with `workers` processes. Returns that dict, or None when the module (or
  that function) is not there.
  """
  try:
    import bench_input  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  measure = getattr(bench_input, "measure", None)
  if measure is None:
    return None
  out = measure(batch_size=batch, image_size=image_size, workers=os.cpu_count(),
                seconds=seconds, smoke=smoke)
  out = dict(out) if isinstance(out, dict) else {"images_per_s": float(out)}
  out["images_per_s"] = float(out["images_per_s"])
  return out


def run_input(args, log) -> dict:
  batch = 4 if args.smoke else (256 if args.batch == "auto" else int(args.batch))
  measured = input_throughput(batch, 16 if args.smoke else 224, args.input_seconds, args.smoke)
  if measured is None:
    log("# input: skipped (experiments/bench_input.py not available)")
    return {"skipped": "experiments/bench_input.py not available"}
  return {"host_cores": os.cpu_count(), "batch": batch, **measured}


# ----------------------------------------------------------------------------- peer
def run_peer(args, log) -> dict:
  try:
    import timm  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    log(f"# peer: skipped ({e})")
    return {"skipped": f"torch/timm not importable ({e})"}
  import jax  # pylint: disable=g-import-not-at-top
  from bench_masks import interleaved_seconds  # pylint: disable=g-import-not-at-top
  from bench_step import build_methods  # pylint: disable=g-import-not-at-top
  from peers import torch_pgf_reference as peer  # pylint: disable=g-import-not-at-top
  from pgf.train import sharding  # pylint: disable=g-import-not-at-top
  batch = 4 if args.smoke else (256 if args.batch == "auto" else int(args.batch))
  config, init_fn, loss_fn, local, _ = vit_setup(args, batch)
  config.sparsity.method = "mdgf_exp"
  mesh = sharding.build_mesh(config.mesh)
  data = sharding.global_batch(local, sharding.batch_sharding(mesh))
  step, state, _, _ = build_methods(config, ["mdgf_exp"], init_fn, loss_fn, data, mesh,
                                    log=log)["mdgf_exp"]
  n, m = (int(v) for v in config.sparsity.rules[0][1].split(":"))
  torch_step, info = peer.build(batch, int(config.data.image_size), n, m, smoke=args.smoke)
  holder = {"state": state}

  def pgf_call():
    holder["state"], loss = step(holder["state"], data)
    return loss

  seconds = interleaved_seconds({"pgf": pgf_call, "torch": torch_step}, max(args.calls, 3),
                                warmup=3)
  jax.block_until_ready(holder["state"])
  pgf_s, torch_s = (statistics.median(seconds[k]) for k in ("pgf", "torch"))
  return {"batch": batch, "peer": info, "pgf_method": "mdgf_exp", "pgf_step_ms": 1e3 * pgf_s,
          "pgf_images_per_s": batch / pgf_s, "peer_step_ms": 1e3 * torch_s,
          "peer_images_per_s": batch / torch_s, "pgf_over_peer": torch_s / pgf_s,
          "peer_peak_gib": (lambda b: b / GIB if b is not None else None)(
              peer.peak_memory_bytes()),
          "calls": len(seconds["pgf"])}


def run_decode(args, log) -> dict:
  from bench_decode import decode_rows  # pylint: disable=g-import-not-at-top
  variant = "demo" if args.smoke else "small"
  rows = decode_rows(variant, ("1:16",) if args.smoke else ("1:8", "1:16"), "", (1, 8),
                     4 if args.smoke else 64, 2 if args.smoke else 8,
                     "float32" if args.smoke else "bfloat16", None, min(args.rounds, 5),
                     smoke=args.smoke, log=log)
  return {"model": f"GPT {variant}", "rows": rows}


RUNNERS = {"masks": run_masks, "step": lambda a, log: run_step_kind(a, "step", log),
           "t5": lambda a, log: run_step_kind(a, "t5", log), "input": run_input,
           "peer": run_peer, "decode": run_decode}


# ----------------------------------------------------------------------------- tables
def _f(value, fmt: str, missing: str = "n/a") -> str:
  return missing if value is None or (isinstance(value, float) and not math.isfinite(value)) \
      else format(value, fmt)


def step_table(section: dict) -> list[str]:
  unit = "sequences/s" if section["model"].startswith("T5") else "images/s"
  lines = [f"{section['model']}, batch {section['batch']}"
           + (f" (asked {section['batch_requested']}, halved on OOM)"
              if section["batch"] != section["batch_requested"] else "")
           + f", {section['compute_dtype']} compute, {section['flops_per_step'] / 1e12:.3f} "
           f"TFLOP per step; bf16 matmul ceiling measured "
           f"{section['matmul_ceiling']['flops_per_s'] / 1e12:.1f} TFLOP/s, datasheet "
           f"{_f(section['peak_bf16_flops'] and section['peak_bf16_flops'] / 1e12, '.0f')} "
           f"TFLOP/s; process peak device memory "
           f"{_f(section['device_peak_gib'], '.1f')} GiB", "",
           f"| method | step ms | {unit} | {unit} per device | step / dense | range "
           "| MFU | of ceiling | step GiB | pgf ops ms | calls |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in section["rows"]:
    lines.append(
        f"| {r['method']} | {r['step_ms']:.2f} | {r['images_per_s']:.1f} "
        f"| {r['images_per_s_per_device']:.1f} | {r['ratio_to_dense']:.3f} "
        f"| {r['ratio_min']:.3f}-{r['ratio_max']:.3f} | {_f(r['mfu'], '.1%')} "
        f"| {_f(r['of_matmul_ceiling'], '.1%')} | {_f(r['step_gib'], '.2f')} "
        f"| {r['pgf_ops_ms']:.2f} | {r['calls']} |")
  return lines


def render(results: dict) -> str:
  """Markdown for a results dict (what --out writes and --merge reads)."""
  from bench_masks import TABLE_HEADER, table_row  # pylint: disable=g-import-not-at-top
  env = results["environment"]
  if not env:
    out = ["(no run recorded its environment)"]
  else:
    out = [f"pgf on {env['device_count']} x {env['device_kind']} ({env['platform']}), "
           f"{env['date']}; jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
           f"python {env['python']}, {env['host_cores']} host cores"
           + ("; SMOKE RUN (tiny shapes, numbers mean nothing)" if env.get("smoke") else "")]
  for name in SUBS:
    if name not in results:
      continue
    section = results[name]
    out += ["", f"## {name}", ""]
    if "error" in section:
      out.append(f"{name}: ERROR {section['error']}")
    elif "skipped" in section:
      out.append(f"{name}: skipped ({section['skipped']})")
    elif name == "masks":
      out += [f"median ms of {section['rows'][0]['calls']} interleaved calls", "",
              TABLE_HEADER] + [table_row(r) for r in section["rows"]]
    elif name in ("step", "t5"):
      out += step_table(section)
    elif name == "input":
      step = results.get("step", {}).get("rows")
      per_device = next((r["images_per_s_per_device"] for r in step or ()
                         if r["method"] == "mdgf_exp"), None) if step else None
      out += ["| host pipeline images/s | host cores | step images/s per device (mdgf_exp) "
              "| pipeline / step |", "|---|---|---|---|",
              f"| {section['images_per_s']:.1f} | {section['host_cores']} "
              f"| {_f(per_device, '.1f')} "
              f"| {_f(per_device and section['images_per_s'] / per_device, '.2f')} |"]
    elif name == "decode":
      from bench_decode import decode_table  # pylint: disable=g-import-not-at-top
      out += [f"{section['model']}: generate calls (prefill + new tokens), median of "
              "interleaved rounds", "", decode_table(section["rows"])]
    elif name == "peer":
      out += [f"batch {section['batch']}; peer: {section['peer']['model']}, torch "
              f"{section['peer']['torch']}, timm {section['peer']['timm']}", "",
              "| contender | step ms | images/s |", "|---|---|---|",
              f"| pgf mdgf_exp (JAX) | {section['pgf_step_ms']:.2f} "
              f"| {section['pgf_images_per_s']:.1f} |",
              f"| PyTorch reference | {section['peer_step_ms']:.2f} "
              f"| {section['peer_images_per_s']:.1f} |", "",
              f"pgf / PyTorch images/s: {section['pgf_over_peer']:.2f}x "
              f"(median of {section['calls']} interleaved calls each)"]
  return "\n".join(out)


def merge(paths) -> dict:
  """One results dict from several: the first file's environment, each section's last copy."""
  merged = {}
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    if part.get("environment"):  # device_check.sh writes None for a run that died early
      merged.setdefault("environment", part["environment"])
    merged.update({k: v for k, v in part.items() if k != "environment"})
  merged.setdefault("environment", None)
  return merged


def write(results: dict, path: str):
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.merge:
    results = merge(args.merge)
    write(results, args.out)
    print(render(results))
    return int(any("error" in results.get(name, {}) for name in SUBS))
  if "peer" in args.only:
    # Leave device memory to PyTorch: JAX takes it as it goes instead of 75% up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  log = lambda line: print(line, file=sys.stderr, flush=True)
  results = {"environment": environment(args)}
  for name in args.only:
    start = time.perf_counter()
    try:
      results[name] = RUNNERS[name](args, log)
    except Exception as e:  # pylint: disable=broad-except  # record, run the rest, exit 1
      traceback.print_exc()
      results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                                if str(e) else type(e).__name__}
    results[name]["seconds"] = time.perf_counter() - start
    log(f"# {name}: done in {results[name]['seconds']:.1f}s")
    write(results, args.out)  # after each: a later hang still leaves the finished ones
  print(render(results))
  return int(any("error" in results[name] for name in args.only))


if __name__ == "__main__":
  sys.exit(main())
