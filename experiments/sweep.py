"""Sweeps methods x N:M patterns x seeds on embedded data, with mean ± std tables and plots.

  python experiments/sweep.py --grid=vit_digits --out=experiments/results/vit_digits
  python experiments/sweep.py --grid=t5_shakespeare --out=experiments/results/t5_shakespeare
  python experiments/sweep.py --grid=swin_digits --out=experiments/results/swin_digits
  python experiments/sweep.py --grid=resnet_digits --out=experiments/results/resnet_digits
  python experiments/sweep.py --grid=lm_shakespeare --out=experiments/results/lm_shakespeare
  python experiments/sweep.py --grid=lm_shakespeare_qkv --out=experiments/results/lm_shakespeare_qkv
  python experiments/sweep.py --grid=lm_shakespeare_finetune --out=experiments/results/lm_finetune
  python experiments/sweep.py --grid=vit_digits --out=/tmp/s --seeds=0 --methods=sr_ste,mdgf_exp \
      --patterns=1:16 --steps=100                                    # a quick look

Every cell is one `train_and_evaluate` run in its own process (`--workers` at a time, each
pinned to one CPU thread so they don't fight over cores) with its own workdir under `--out`/runs/.
A cell whose workdir holds `summary.json` is skipped and an interrupted one resumes from its
checkpoints, so rerunning the same command after a crash only does the missing work. The T5
grid pre-trains one dense model per seed first and fine-tunes every cell from it (next-line
prediction on held-out plays; see `t5_shakespeare`).

Writes to `--out`: results.csv (one row per run), table.md (mean ± std of the deployed metric:
finalized weights at the exact target pattern, per method and pattern), and the figures
metric_vs_sparsity.png, paired_vs_sr_ste.png (each method minus SR-STE at the same seed) and
noise.png (gradient-noise statistics over training, paper §4).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("dense", "sr_ste", "mdgf_linear", "mdgf_exp", "sdgf_stepwise", "sdgf_geometric",
           "mdgf_exp+sdgf_geometric")
PATTERNS = ("2:4", "1:4", "1:16", "1:32")
SEEDS = (0, 1, 2)
# Single-threaded XLA per worker: N workers on N cores beat N multi-threaded ones.
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str               # workdir name under --out
  config: str             # configs/...py[:arg]
  overrides: tuple        # ((dotted field, value), ...)
  method: str = ""
  pattern: str = ""
  seed: int = 0
  metric: str = "deployed_accuracy"
  after: str = ""         # name of a cell that must finish first (dense pre-training)
  workdir: str = ""       # a workdir outside --out (a pre-training shared with another grid)


@dataclasses.dataclass(frozen=True)
class Grid:
  """One experiment: its cells, the metric compared, and the baseline to quote beside it."""
  cells: tuple
  metric: str
  metric_label: str
  baseline: str = ""      # summary key of a reference value (e.g. the majority class)
  baseline_label: str = "Majority-class baseline"
  pattern_label: str = "N:M target (sparsity)"  # what a cell's pattern is (table and plot axis)
  noise_study: bool = False  # also plot the paper's Fig. 3 (running average of var(ν))
  pretrain_label: str = "held-out span-corruption loss"


def sdgf_k_for(pattern: str, contracting: int) -> int:
  """The largest geometric start multiplier (<= 8, the released code's) whose first stage
  k*N:k*M still fits the smallest sparsified contracting axis."""
  m = int(pattern.split(":")[1])
  k = 8
  while k > 1 and k * m > contracting:
    k //= 2
  return k


def _image_cells(config_path: str, rule, width: int, methods, patterns, seeds,
                 steps: int) -> Grid:
  """Cells of an image-classification demo on digits, `rule(pattern)` its one sparsity rule at
  each pattern: sdgf_k fitted to the narrowest contracting `width`, 20 log / noise points, no
  intermediate evaluation."""
  cells = []
  for seed in seeds:
    for pattern in patterns:
      for method in methods:
        overrides = {
            "seed": seed, "total_steps": steps, "log_every": max(steps // 20, 1),
            "eval_every": 0, "checkpoint_every": max(steps // 2, 1), "keep_checkpoints": 1,
            "optim.warmup_steps": max(steps // 20, 1), "sparsity.method": method,
            "sparsity.rules": (rule(pattern),),
            "sparsity.sdgf_k": sdgf_k_for(pattern, width), "noise_every": max(steps // 20, 1)}
        cells.append(Cell(f"{method}_{pattern.replace(':', 'of')}_s{seed}", config_path,
                          tuple(overrides.items()), method, pattern, seed))
  return Grid(tuple(cells), "deployed_accuracy", "deployed test accuracy (digits)")


def vit_digits(methods, patterns, seeds, steps) -> Grid:
  """The ViT demo model (4 blocks, width 64, MLP 256) on digits; FF layers at each pattern."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  return _image_cells("configs/vit_1_16.py:demo", lambda nm: families.get("vit").rules(nm)[0], 64,
                      methods, patterns, seeds, steps or 600)


# Table 3's methods (and dense) and FF patterns.
SWIN_METHODS = ("dense", "sr_ste", "mdgf_exp", "sdgf_stepwise", "sdgf_geometric")
SWIN_PATTERNS = ("1:4", "1:8", "1:16", "1:32")


def swin_digits(methods, patterns, seeds, steps) -> Grid:
  """The SwinV2 demo model (3 stages of 2 blocks, embed 32, window 4, patch 2 on 16x16 digits);
  FF layers at each pattern (paper Table 3's rows, at CPU scale)."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  swin = families.get("swin")
  return _image_cells("configs/swin_1_16.py:demo", lambda nm: swin.rules(nm)[0],
                      swin.DEMO_SIZES["embed_dim"], methods, patterns, seeds, steps or 600)


# Table 6's methods (and dense) and conv patterns.
RESNET_METHODS = ("dense", "sr_ste", "mdgf_exp")
RESNET_PATTERNS = ("2:8", "1:8")


def resnet_digits(methods, patterns, seeds, steps) -> Grid:
  """The ResNet demo model (4 bottleneck stages of one block, width 16, CIFAR stem, 16x16
  digits); every bottleneck conv at each pattern, grouped along input channels (paper Table 6's
  rows, at CPU scale)."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  return _image_cells("configs/resnet50_1_8.py:demo",
                      lambda nm: families.get("resnet").rules(nm)[0],
                      16, methods, patterns, seeds, steps or 600)


# The T5 grid's model: the demo's T5 v1.1 shape, narrowed so 3 pre-trainings and 84 fine-tunes fit in an
# hour on 2 cores (~0.35M parameters; 1:32 and SDGF's first stages still fit the 64-wide contracting axis).
T5_GRID_SIZES = {"model.emb_dim": 64, "model.num_heads": 4, "model.head_dim": 16, "model.mlp_dim": 256,
                 "model.num_encoder_layers": 2, "model.num_decoder_layers": 2}


def t5_shakespeare(methods, patterns, seeds, steps) -> Grid:
  """Dense span-corruption pre-training per seed, then sparse next-line fine-tuning per cell.

  Fine-tuning writes the line that follows two lines of dialogue, scored in bits per target byte on
  the 8 held-out plays (neither pre-training nor fine-tuning sees them). The genre labels of the demo
  config are not learned by a model this small in minutes (docs/t5.md), so the grid uses a task it
  does learn: a dense fine-tune ends ~35% below the targets' unigram entropy.
  """
  from pgf import families  # pylint: disable=g-import-not-at-top
  steps = steps or 200
  cells = []
  for seed in seeds:
    pretrain = _t5_pretrain(seed)
    cells.append(pretrain)
    for pattern in patterns:
      for method in methods:
        cells.append(_t5_finetune(
            f"{method}_{pattern.replace(':', 'of')}_s{seed}", pretrain, method, pattern, seed,
            steps, families.get("t5").rules(pattern),
            extra={"sparsity.sdgf_k": sdgf_k_for(pattern, T5_GRID_SIZES["model.emb_dim"])}))
  return Grid(tuple(cells), "deployed_bits_per_byte", T5_BITS,
              baseline="current_unigram_bits_per_byte",
              baseline_label="Unigram byte entropy of the same targets")


def _t5_pretrain(seed: int, shared_runs: str = "") -> Cell:
  """The dense span-corruption pre-training of `seed` (the T5 grids all fine-tune from it)."""
  return Cell(f"pretrain_s{seed}", "configs/t5_pretrain.py:demo",
              tuple({**T5_GRID_SIZES, "seed": seed, "total_steps": 500, "eval_every": 0,
                     "log_every": 50, "checkpoint_every": 250, "keep_checkpoints": 1,
                     "optim.warmup_steps": 50}.items()),
              "pretrain", "", seed, "current_bits_per_byte",
              workdir=os.path.join(shared_runs, f"pretrain_s{seed}") if shared_runs else "")


def _t5_finetune(name, pretrain: Cell, method, pattern, seed, steps, rules, noise_every=0,
                 extra=None) -> Cell:
  overrides = {
      **T5_GRID_SIZES, "seed": seed, "total_steps": steps, "log_every": max(steps // 10, 1),
      "eval_every": 0, "checkpoint_every": max(steps // 2, 1), "keep_checkpoints": 1,
      "optim.warmup_steps": max(steps // 20, 1), "data.name": "shakespeare_next_line",
      "data.input_length": 96, "data.target_length": 48, "sparsity.method": method,
      "sparsity.rules": rules, "init_from": pretrain.workdir or f"{{out}}/runs/{pretrain.name}",
      "noise_every": noise_every or max(steps // 20, 1), **(extra or {})}
  return Cell(name, "configs/t5_1_4.py:demo", tuple(overrides.items()), method, pattern, seed,
              "deployed_bits_per_byte", after=pretrain.name)


# The FF grid's per-seed pre-trainings, which the QKV grid and the noise study fine-tune from
# (a rerun of the same pre-training is bit-identical on one machine, so either may create them).
T5_SHARED_RUNS = os.path.join(ROOT, "experiments", "results", "t5_shakespeare", "runs")
T5_BITS = "deployed next-line bits per byte on held-out plays (Shakespeare; lower is better)"


def t5_shakespeare_qkv(methods, patterns, seeds, steps, ff: str = "1:8") -> Grid:
  """The paper's Table 4 QKV rows at CPU scale: FF at `ff` plus Q, K, V of every attention
  (encoder self, decoder self, decoder cross) at each pattern, fine-tuned from the FF grid's
  pre-trainings (same seeds, same 200 steps, same task and model)."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  steps = steps or 200
  cells = []
  for seed in seeds:
    pretrain = _t5_pretrain(seed, T5_SHARED_RUNS)
    cells.append(pretrain)
    for pattern in patterns:
      rules = families.get("t5").rules(ff, qkv=pattern)
      for method in methods:
        cells.append(_t5_finetune(
            f"{method}_ff{ff.replace(':', 'of')}_qkv{pattern.replace(':', 'of')}_s{seed}",
            pretrain, method, pattern, seed, steps, rules,
            extra={"sparsity.sdgf_k": sdgf_k_for(pattern, T5_GRID_SIZES["model.emb_dim"])}))
  return Grid(tuple(cells), "deployed_bits_per_byte", T5_BITS,
              baseline="current_unigram_bits_per_byte",
              baseline_label="Unigram byte entropy of the same targets",
              pattern_label=f"Q/K/V pattern, with FF at {ff} (sparsity of Q/K/V)")


NOISE_METHODS = ("dense", "sr_ste", "mdgf_exp")


def vit_digits_noise(methods, patterns, seeds, steps) -> Grid:
  """The paper's noise study (§4, Fig. 3) as closely as a CPU allows: its tiny ViT (3 blocks,
  3 heads, width 192, MLP 768) with AdamW at batch 64 and FF at 1:16, on digits (not CIFAR-10)
  at their native 8x8 (4 patches of 4x4, so 12,000 steps fit a CPU), for 12,000 steps (20x the
  ViT grid's 600), gradient-noise statistics every 40 steps."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  steps = steps or 12_000
  every = max(steps // 300, 1)
  cells = []
  for seed in seeds:
    for pattern in patterns:
      for method in methods:
        overrides = {
            "seed": seed, "total_steps": steps, "batch_size": 64, "log_every": max(steps // 40, 1),
            "eval_every": max(steps // 4, 1), "checkpoint_every": max(steps // 6, 1),
            "keep_checkpoints": 1, "data.image_size": 8, "model.width": 192, "model.depth": 3,
            "model.num_heads": 3,
            "model.mlp_dim": 768, "optim.warmup_steps": max(steps // 40, 1),
            "sparsity.method": method, "sparsity.rules": families.get("vit").rules(pattern),
            "noise_every": every}
        cells.append(Cell(f"noise_{method}_{pattern.replace(':', 'of')}_s{seed}",
                          "configs/vit_1_16.py:demo", tuple(overrides.items()), method,
                          pattern, seed))
  return Grid(tuple(cells), "deployed_accuracy", "deployed test accuracy (digits)",
              noise_study=True)


def t5_shakespeare_noise(methods, patterns, seeds, steps) -> Grid:
  """The noise study on the T5 fine-tune: the FF grid's task and model, FF at 1:16, for 4,000
  steps (20x the grid's 200) from the seed's shared pre-training, statistics every 20 steps."""
  from pgf import families  # pylint: disable=g-import-not-at-top
  steps = steps or 4000
  cells = []
  for seed in seeds:
    pretrain = _t5_pretrain(seed, T5_SHARED_RUNS)
    cells.append(pretrain)
    for pattern in patterns:
      for method in methods:
        cells.append(_t5_finetune(
            f"noise_{method}_{pattern.replace(':', 'of')}_s{seed}", pretrain, method, pattern,
            seed, steps, families.get("t5").rules(pattern), noise_every=max(steps // 200, 1),
            extra={"checkpoint_every": max(steps // 4, 1)}))
  return Grid(tuple(cells), "deployed_bits_per_byte", T5_BITS,
              baseline="current_unigram_bits_per_byte",
              baseline_label="Unigram byte entropy of the same targets", noise_study=True)


# The decoder LM grids' model: the demo GPT narrowed so a cell trains in CPU minutes (2 layers,
# width 64, 4 heads of 16, SwiGLU 192; 0.13M parameters with the byte vocabulary), on rows of 64
# bytes of the training plays, batch 16, scored on 128 rows of the 8 held-out plays.
LM_GRID = {"model.emb_dim": 64, "model.num_heads": 4, "model.head_dim": 16, "model.mlp_dim": 192,
           "model.num_layers": 2, "data.seq_len": 64, "data.num_eval_examples": 128,
           "batch_size": 16, "eval_batch_size": 128}
LM_METHODS = ("dense", "sr_ste", "mdgf_exp", "mdgf_linear", "sdgf_stepwise", "sdgf_geometric")
LM_BITS = "deployed bits per byte on held-out plays (Shakespeare bytes; lower is better)"


def _lm_cell(name, config, method, pattern, seed, steps, rules, after="", init_from="") -> Cell:
  overrides = {
      **LM_GRID, "seed": seed, "total_steps": steps, "log_every": max(steps // 10, 1),
      "eval_every": 0, "checkpoint_every": max(steps // 2, 1), "keep_checkpoints": 1,
      "optim.warmup_steps": max(steps // 20, 1),
      "sparsity.method": "dense" if method == "pretrain" else method,
      "sparsity.rules": rules, "noise_every": max(steps // 20, 1) if rules else 0,
      "sparsity.sdgf_k": sdgf_k_for(pattern, LM_GRID["model.emb_dim"]) if pattern else 8}
  if init_from:
    overrides["init_from"] = init_from
  return Cell(name, config, tuple(overrides.items()), method, pattern, seed,
              "deployed_bits_per_byte", after=after)


def lm_shakespeare(methods, patterns, seeds, steps, qkv: bool = False) -> Grid:
  """The decoder LM trained from scratch on bytes of the training plays, FF at each pattern
  (`qkv`: FF at 1:8 and Q, K, V at each pattern); 600 steps by default."""
  from pgf.families import gpt as lm_family  # pylint: disable=g-import-not-at-top
  steps = steps or 600
  cells = []
  for seed in seeds:
    for pattern in patterns:
      rules = (lm_family.lm_rules("1:8", qkv=pattern) if qkv else lm_family.lm_rules(pattern))
      tag = f"ff1of8_qkv{pattern.replace(':', 'of')}" if qkv else pattern.replace(":", "of")
      for method in methods:
        cells.append(_lm_cell(f"{method}_{tag}_s{seed}", "configs/lm_1_16.py:demo", method,
                              pattern, seed, steps, rules))
  label = "Q/K/V pattern, with FF at 1:8 (sparsity of Q/K/V)" if qkv else "FF N:M target (sparsity)"
  return Grid(tuple(cells), "deployed_bits_per_byte", LM_BITS, pattern_label=label)


def lm_shakespeare_qkv(methods, patterns, seeds, steps) -> Grid:
  return lm_shakespeare(methods, patterns, seeds, steps, qkv=True)


def lm_shakespeare_finetune(methods, patterns, seeds, steps) -> Grid:
  """Sparse fine-tuning of a dense pre-trained decoder LM: per seed a dense model trained for 600
  steps, then each cell fine-tunes it for `steps` (default 300) with FF at its pattern."""
  from pgf.families import gpt as lm_family  # pylint: disable=g-import-not-at-top
  steps = steps or 300
  cells = []
  for seed in seeds:
    pretrain = _lm_cell(f"pretrain_s{seed}", "configs/lm_pretrain.py:demo", "pretrain", "", seed,
                        600, ())
    pretrain = dataclasses.replace(pretrain, metric="current_bits_per_byte")
    cells.append(pretrain)
    for pattern in patterns:
      for method in methods:
        cells.append(_lm_cell(f"ft_{method}_{pattern.replace(':', 'of')}_s{seed}",
                              "configs/lm_1_16.py:demo", method, pattern, seed, steps,
                              lm_family.lm_rules(pattern), after=pretrain.name,
                              init_from=f"{{out}}/runs/{pretrain.name}"))
  return Grid(tuple(cells), "deployed_bits_per_byte", LM_BITS,
              pretrain_label="held-out next-byte loss")


GRIDS = {"vit_digits": vit_digits, "t5_shakespeare": t5_shakespeare,
         "t5_shakespeare_qkv": t5_shakespeare_qkv, "vit_digits_noise": vit_digits_noise,
         "t5_shakespeare_noise": t5_shakespeare_noise, "swin_digits": swin_digits,
         "resnet_digits": resnet_digits, "lm_shakespeare": lm_shakespeare,
         "lm_shakespeare_qkv": lm_shakespeare_qkv,
         "lm_shakespeare_finetune": lm_shakespeare_finetune}
# (methods, patterns, seeds) a grid runs when the command line does not say.
GRID_DEFAULTS = {"t5_shakespeare_qkv": (METHODS, ("1:8", "1:4"), SEEDS),
                 "vit_digits_noise": (NOISE_METHODS, ("1:16",), (0,)),
                 "t5_shakespeare_noise": (NOISE_METHODS, ("1:16",), (0,)),
                 "swin_digits": (SWIN_METHODS, SWIN_PATTERNS, SEEDS),
                 "resnet_digits": (RESNET_METHODS, RESNET_PATTERNS, SEEDS),
                 "lm_shakespeare": (LM_METHODS, ("1:8", "1:16", "1:32"), SEEDS),
                 "lm_shakespeare_qkv": (LM_METHODS, ("1:8",), SEEDS),
                 "lm_shakespeare_finetune": (LM_METHODS, ("1:8", "1:16", "1:32"), SEEDS)}


# ----------------------------------------------------------------------------- running
def run_cell(spec: dict) -> None:
  """Worker entry point: one training run (in this process)."""
  sys.path.insert(0, ROOT)
  from pgf import train  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, spec["config"]))
  overrides = {k: (v.format(out=spec["out"]) if isinstance(v, str) else v)
               for k, v in spec["overrides"]}
  config_lib.apply_overrides(config, overrides)
  train.train_and_evaluate(config, spec["workdir"])


def workdir_of(out: str, name: str) -> str:
  return os.path.join(out, "runs", name)


def cell_workdir(out: str, cell: Cell) -> str:
  return cell.workdir or workdir_of(out, cell.name)


def launch(cell: Cell, out: str, threads_env: dict) -> tuple[Cell, float, str]:
  workdir = cell_workdir(out, cell)
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return cell, 0.0, "skipped (done)"
  spec = {"config": cell.config, "overrides": list(cell.overrides), "workdir": workdir,
          "out": out}
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--run-cell",
                             json.dumps(spec)], cwd=ROOT, env=threads_env, stdout=log,
                            stderr=subprocess.STDOUT)
  if result.returncode:
    return cell, time.time() - start, f"FAILED (exit {result.returncode}, see {workdir}/log.txt)"
  return cell, time.time() - start, "done"


def run_grid(grid: Grid, out: str, workers: int) -> None:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  if workers > 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD).strip()
  done = {c.name for c in grid.cells
          if os.path.exists(os.path.join(cell_workdir(out, c), "summary.json"))}
  pending = [c for c in grid.cells if c.name not in done]
  failed = set()
  print(f"{len(grid.cells)} runs, {len(done)} already done, {workers} workers", flush=True)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    running = {}
    while pending or running:
      ready = [c for c in pending if not c.after or c.after in done]
      blocked = [c for c in pending if c.after in failed]
      for cell in blocked:
        pending.remove(cell)
        failed.add(cell.name)
        print(f"  {cell.name}: not run ({cell.after} failed)", flush=True)
      while ready and len(running) < workers:
        cell = ready.pop(0)
        pending.remove(cell)
        running[pool.submit(launch, cell, out, env)] = cell
      if not running:
        break
      finished, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
      for future in finished:
        cell, seconds, status = future.result()
        del running[future]
        (failed if status.startswith("FAILED") else done).add(cell.name)
        print(f"  [{len(done)}/{len(grid.cells)}] {cell.name}: {status} {seconds:.0f}s",
              flush=True)
  if failed:
    print(f"{len(failed)} runs failed: {sorted(failed)}", flush=True)


# ----------------------------------------------------------------------------- reporting
def collect(grid: Grid, out: str) -> list[dict]:
  rows = []
  for cell in grid.cells:
    path = os.path.join(cell_workdir(out, cell), "summary.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      summary = json.load(f)
    row = {"name": cell.name, "method": cell.method, "pattern": cell.pattern,
           "seed": cell.seed, "metric": cell.metric, "value": summary.get(cell.metric),
           "current": summary.get(cell.metric.replace("deployed_", "current_")),
           "train_seconds": summary.get("train_seconds"), "steps": summary.get("total_steps")}
    if grid.baseline and grid.baseline in summary:
      row["baseline"] = summary[grid.baseline]
    rows.append(row)
  return rows


def density(pattern: str) -> float:
  from pgf import masks  # pylint: disable=g-import-not-at-top
  n, m = masks.parse_nm(pattern)
  return n / m


def check_pattern(pattern: str) -> str:
  """Returns `pattern` if a pgf.Recipe accepts it as a rule's N:M, else raises ValueError with
  the recipe's own complaint (so the sweep and training agree on what is valid)."""
  import pgf  # pylint: disable=g-import-not-at-top
  try:
    pgf.Recipe(method="sr_ste", rules=((".*", pattern),), total_steps=1)
  except ValueError as e:
    raise ValueError(str(e).split("\n  - ", 1)[-1]) from None
  return pattern


def mean_std(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = np.asarray([v for v in values if v is not None], float)
  if not values.size:
    return float("nan"), float("nan"), 0
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, values.size


def markdown_table(rows: list[dict], grid: Grid) -> str:
  sparse_rows = [r for r in rows if r["method"] != "pretrain"]
  methods = [m for m in METHODS if any(r["method"] == m for r in sparse_rows)]
  patterns = sorted({r["pattern"] for r in sparse_rows if r["pattern"]}, key=density, reverse=True)
  lines = [f"{grid.metric_label}, mean ± std over seeds (n runs); columns: {grid.pattern_label}",
           "",
           "| method | " + " | ".join(patterns) + " |",
           "|---|" + "---|" * len(patterns)]
  for method in methods:
    cells = []
    for pattern in patterns:
      mean, std, n = mean_std(r["value"] for r in sparse_rows
                              if r["method"] == method and r["pattern"] == pattern)
      cells.append("–" if not n else f"{mean:.4f} ± {std:.4f} ({n})")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += paired_differences(sparse_rows, methods, patterns)
  baselines = [r["baseline"] for r in sparse_rows if "baseline" in r]
  if baselines:
    lines += ["", f"{grid.baseline_label}: {mean_std(baselines)[0]:.4f}"]
  pretrain = [r for r in rows if r["method"] == "pretrain"]
  if pretrain:
    mean, std, n = mean_std(r["value"] for r in pretrain)
    lines += ["", f"Dense pre-training, {grid.pretrain_label}: {mean:.3f} ± {std:.3f} "
              f"bits per target byte ({n} seeds)"]
  seconds = sum(r["train_seconds"] or 0 for r in rows)
  lines += ["", f"{len(rows)} runs, {seconds / 60:.0f} min of training in total."]
  return "\n".join(lines) + "\n"


def paired_rows(rows: list[dict], reference: str = "sr_ste") -> list[dict]:
  """One row per run of another method: its value minus `reference`'s at the same pattern and seed."""
  value = {(r["method"], r["pattern"], r["seed"]): r["value"] for r in rows if r["value"] is not None}
  return [{"method": m, "pattern": p, "seed": seed, "value": v - value[(reference, p, seed)]}
          for (m, p, seed), v in value.items() if m != reference and (reference, p, seed) in value]


def paired_differences(rows: list[dict], methods, patterns, reference: str = "sr_ste") -> list[str]:
  """Markdown lines: each method minus `reference`, paired by seed (same init, data order and, for
  T5, pre-training), mean ± std over the seeds both finished. Pairing removes the seed-to-seed
  spread that the two methods share, so it resolves smaller differences than the table above."""
  if reference not in methods:
    return []
  diffs = paired_rows(rows, reference)
  lines = ["", f"Difference to {reference}, paired by seed: mean ± std (n seeds)", "",
           "| method | " + " | ".join(patterns) + " |", "|---|" + "---|" * len(patterns)]
  for method in methods:
    if method == reference:
      continue
    cells = []
    for pattern in patterns:
      mean, std, n = mean_std(d["value"] for d in diffs
                              if d["method"] == method and d["pattern"] == pattern)
      cells.append("–" if not n else f"{mean:+.4f} ± {std:.4f} ({n})")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return lines


def write_reports(grid: Grid, out: str) -> None:
  rows = collect(grid, out)
  if not rows:
    print("no finished runs to report")
    return
  fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                  if k in rows[0] else 99)
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  table = markdown_table(rows, grid)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table)
  print(table)
  from pgf.analysis import plots  # pylint: disable=g-import-not-at-top
  sparse = [r for r in rows if r["method"] != "pretrain"]
  plots.plot_sweep(sparse, os.path.join(out, "metric_vs_sparsity.png"),
                   metric_label=grid.metric_label, xlabel=grid.pattern_label)
  # The sparse methods' differences are small next to one-shot pruning's; plot them paired.
  paired = [r for r in paired_rows(sparse) if r["method"] != "dense"]
  if paired:
    plots.plot_sweep(paired, os.path.join(out, "paired_vs_sr_ste.png"),
                     metric_label=f"{grid.metric_label.split(' (')[0]} minus SR-STE's",
                     title="difference to SR-STE at the same seed: mean ± std over seeds",
                     xlabel=grid.pattern_label)
  cells = {c.name: c for c in grid.cells}
  noise_runs = {}
  target = "1:16" if any(r["pattern"] == "1:16" for r in sparse) else sparse[0]["pattern"]
  for r in sparse:
    if r["pattern"] == target and r["seed"] == min(x["seed"] for x in sparse):
      noise_runs[r["method"]] = cell_workdir(out, cells[r["name"]])
  plots.plot_noise_from_workdirs(noise_runs, os.path.join(out, "noise.png"),
                                 title=f"gradient noise, {target}")
  if grid.noise_study:
    series = {m: plots.runs.read_metrics(w, kind="noise") for m, w in noise_runs.items()}
    plots.plot_noise_study(series, os.path.join(out, "noise_fig3.png"),
                           title=f"{grid.metric_label.split(' (')[0]}: gradient noise over the "
                                 f"FF kernels at {target}, seed {min(r['seed'] for r in sparse)}")
  print(f"wrote {out}/results.csv, table.md, metric_vs_sparsity.png, paired_vs_sr_ste.png, "
        "noise.png" + (", noise_fig3.png" if grid.noise_study else ""))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", choices=sorted(GRIDS))
  parser.add_argument("--out")
  parser.add_argument("--methods", help=f"default: {','.join(METHODS)} (noise grids: "
                      f"{','.join(NOISE_METHODS)})")
  parser.add_argument("--patterns", help=f"default: {','.join(PATTERNS)} (the QKV grid: the "
                      "Q/K/V patterns 1:8,1:4 with FF at 1:8; noise grids: 1:16)")
  parser.add_argument("--seeds", help="default: 0,1,2 (noise grids: 0)")
  parser.add_argument("--steps", type=int, default=0, help="override the runs' total steps (T5: the fine-tunes')")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--report-only", action="store_true")
  parser.add_argument("--run-cell", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run_cell:
    run_cell(json.loads(args.run_cell))
    return
  if not args.grid or not args.out:
    parser.error("--grid and --out are required")
  defaults = GRID_DEFAULTS.get(args.grid, (METHODS, PATTERNS, SEEDS))
  args.methods = ",".join(defaults[0]) if args.methods is None else args.methods
  args.patterns = ",".join(defaults[1]) if args.patterns is None else args.patterns
  args.seeds = ",".join(map(str, defaults[2])) if args.seeds is None else args.seeds
  methods = tuple(m for m in args.methods.split(",") if m)
  unknown = set(methods) - set(METHODS)
  if unknown:
    parser.error(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
  sys.path.insert(0, ROOT)
  try:
    patterns = tuple(check_pattern(p.strip()) for p in args.patterns.split(",") if p.strip())
  except ValueError as e:
    parser.error(f"--patterns: {e}")
  try:
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
  except ValueError:
    parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
  if not (methods and patterns and seeds):
    parser.error("--methods, --patterns and --seeds must each name at least one value")
  grid = GRIDS[args.grid](methods, patterns, seeds, args.steps)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  start = time.time()
  if not args.report_only:
    run_grid(grid, out, max(args.workers, 1))
  write_reports(grid, out)
  print(f"total wall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
  main()
