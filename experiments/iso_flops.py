"""Deployed metric against training FLOPs, with the dense model's curve (paper Fig. 4b).

  python experiments/iso_flops.py --workers=2        # trains the dense curve, then reports
  python experiments/iso_flops.py --report-only      # reports from finished runs

A sweep cell's training FLOPs follow from its config and recipe (`pgf.analysis.flops`: forward +
backward, backward = 2x forward; a step computes densely while D(j) > 0, at the stage's N/M in
SDGF and at the target N/M for SR-STE and in fine-tuning). The dense curve is dense training
of the same model for 1/4, 2/4, 3/4 of the grid's steps (each a complete schedule: warm-up and
cosine decay scaled to its length) plus the grid's own dense runs at full length, scored
unpruned ("current"): what the same training budget buys without sparsity. Each grid's
sparse runs (from its committed results.csv) are then placed on that curve: the dense metric
interpolated at their FLOPs, and the fraction of FLOPs dense training needs to match them.

T5 counts the fine-tune only (every cell starts from the same dense pre-training). The two T5
grids share one dense curve: a dense fine-tune ignores the grid's N:M rules.

Writes to `--out` (default experiments/results/iso_flops): <grid>.csv (one row per run: steps,
training FLOPs, deployed and current metric), table.md and iso_flops.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, ROOT)

import sweep  # noqa: E402  pylint: disable=wrong-import-position

FRACTIONS = (0.25, 0.5, 0.75)
SEEDS = (0, 1, 2)
# grid -> (default steps, the pattern its dense-curve cells carry (unused by dense training),
#          dense-curve family, whether higher is better)
GRIDS = {"vit_digits": (600, "1:16", "vit", True),
         "t5_shakespeare": (200, "1:16", "t5", False),
         "t5_shakespeare_qkv": (200, "1:8", "t5", False)}


def dense_curve_cells(family: str, fractions=FRACTIONS, seeds=SEEDS) -> list[sweep.Cell]:
  """Dense runs of `family`'s grid model at each fraction of the grid's steps (T5: fine-tunes
  from the FF grid's shared per-seed pre-trainings, which are listed first)."""
  cells = []
  if family == "vit":
    for fraction in fractions:
      steps = round(GRIDS["vit_digits"][0] * fraction)
      grid = sweep.vit_digits(("dense",), ("1:16",), seeds, steps)
      cells += [dataclasses.replace(c, name=f"vit_dense_{steps}steps_s{c.seed}")
                for c in grid.cells]
    return cells
  from pgf import families  # pylint: disable=g-import-not-at-top
  pretrains = {seed: sweep._t5_pretrain(seed, sweep.T5_SHARED_RUNS) for seed in seeds}  # pylint: disable=protected-access
  cells += list(pretrains.values())
  for fraction in fractions:
    steps = round(GRIDS["t5_shakespeare"][0] * fraction)
    for seed in seeds:
      cells.append(sweep._t5_finetune(  # pylint: disable=protected-access
          f"t5_dense_{steps}steps_s{seed}", pretrains[seed], "dense", "1:16", seed, steps,
          families.get("t5").rules("1:16")))
  return cells


def cell_config(cell: sweep.Cell, out: str):
  """The config `cell` trains (its config file with its overrides applied)."""
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, cell.config))
  config_lib.apply_overrides(config, {k: (v.format(out=out) if isinstance(v, str) else v)
                                      for k, v in cell.overrides})
  return config


_MATMULS = {}


def training_flops(cell: sweep.Cell, out: str) -> float:
  """Training FLOPs of `cell`'s whole recipe, at its batch size."""
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  config = cell_config(cell, out)
  key = (cell.config, tuple((k, v) for k, v in cell.overrides if k.startswith(("model.", "data."))))
  if key not in _MATMULS:
    _MATMULS[key] = flops.matmuls_from_config(config)
  recipe = config_lib.build_recipe(config, int(config.total_steps))
  return flops.training_flops(_MATMULS[key], recipe, int(config.batch_size))["total"]


def _value(x):
  return None if x in (None, "") else float(x)


def grid_rows(grid_name: str, out: str) -> list[dict]:
  """The grid's committed results with each run's steps and training FLOPs."""
  results = os.path.join(ROOT, "experiments", "results", grid_name, "results.csv")
  if not os.path.exists(results):
    raise FileNotFoundError(f"{results}: run `python experiments/sweep.py --grid={grid_name} "
                            f"--out=experiments/results/{grid_name}` first")
  defaults = sweep.GRID_DEFAULTS.get(grid_name, (sweep.METHODS, sweep.PATTERNS, sweep.SEEDS))
  with open(results) as f:
    committed = list(csv.DictReader(f))
  seeds = sorted({int(r["seed"]) for r in committed})
  cells = {c.name: c for c in sweep.GRIDS[grid_name](defaults[0], defaults[1], seeds, 0).cells}
  rows = []
  for r in committed:
    if r["method"] == "pretrain":
      continue
    if r["name"] not in cells:
      raise ValueError(f"{results}: run {r['name']!r} is not a cell of the {grid_name} grid")
    rows.append({"grid": grid_name, "name": r["name"], "method": r["method"],
                 "pattern": r["pattern"], "seed": int(r["seed"]), "steps": int(r["steps"]),
                 "train_flops": training_flops(cells[r["name"]], out),
                 "value": _value(r["value"]), "current": _value(r["current"])})
  return rows


def curve_rows(family: str, out: str, full_rows: list[dict]) -> list[dict]:
  """The dense curve: finished dense-curve runs plus the grid's full-length dense runs."""
  rows = []
  for cell in dense_curve_cells(family):
    path = os.path.join(sweep.cell_workdir(out, cell), "summary.json")
    if cell.method != "dense" or not os.path.exists(path):
      continue
    with open(path) as f:
      summary = json.load(f)
    metric = cell.metric.replace("deployed_", "current_")
    rows.append({"name": cell.name, "seed": cell.seed, "steps": summary["total_steps"],
                 "train_flops": training_flops(cell, out), "current": summary[metric]})
  full = [r for r in full_rows if r["method"] == "dense"]
  seen = set()
  for r in full:  # every pattern's dense run is the same dense training; keep one per seed
    if r["seed"] not in seen:
      seen.add(r["seed"])
      rows.append({"name": r["name"], "seed": r["seed"], "steps": r["steps"],
                   "train_flops": r["train_flops"], "current": r["current"]})
  return rows


def mean_curve(curve: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(FLOPs, mean, std) of the dense curve per step count, in increasing FLOPs."""
  by_steps = {}
  for r in curve:
    by_steps.setdefault(r["steps"], []).append(r)
  points = sorted(by_steps.values(), key=lambda rs: rs[0]["train_flops"])
  x = np.array([rs[0]["train_flops"] for rs in points])
  values = [np.array([r["current"] for r in rs]) for rs in points]
  return (x, np.array([v.mean() for v in values]),
          np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in values]))


def flops_to_match(x: np.ndarray, y: np.ndarray, target: float, higher_is_better: bool):
  """The fewest FLOPs at which the (piecewise-linear) dense curve reaches `target`, or None."""
  sign = 1.0 if higher_is_better else -1.0
  if sign * y[0] >= sign * target:
    return None if len(x) < 2 else float(x[0])  # below the curve's range: not resolvable
  for i in range(1, len(x)):
    if sign * y[i] >= sign * target:
      t = (target - y[i - 1]) / (y[i] - y[i - 1])
      return float(x[i - 1] + t * (x[i] - x[i - 1]))
  return None


def summarize(rows: list[dict], curve: list[dict], higher_is_better: bool) -> list[dict]:
  """Per method and pattern: mean FLOPs and deployed metric, the dense curve's metric at those
  FLOPs (linear interpolation; None outside the curve's range) and the dense FLOPs needed to
  reach the method's metric (None when the dense curve never does)."""
  x, y, _ = mean_curve(curve)
  full_dense = x[-1]
  out = []
  keys = sorted({(r["method"], r["pattern"]) for r in rows},
                key=lambda k: (sweep.METHODS.index(k[0]), -sweep.density(k[1])))
  for method, pattern in keys:
    mine = [r for r in rows if (r["method"], r["pattern"]) == (method, pattern)]
    f = float(np.mean([r["train_flops"] for r in mine]))
    v = float(np.mean([r["value"] for r in mine]))
    at = float(np.interp(f, x, y)) if x[0] <= f <= x[-1] else None
    match = flops_to_match(x, y, v, higher_is_better)
    out.append({"method": method, "pattern": pattern, "runs": len(mine), "train_flops": f,
                "flops_vs_dense_full": f / full_dense, "deployed": v,
                "dense_at_same_flops": at, "minus_dense": None if at is None else v - at,
                "dense_flops_to_match": match,
                "dense_flops_to_match_vs_method": None if match is None else match / f})
  return out


def _fmt(v, spec):
  return "–" if v is None else format(v, spec)


def markdown(grid_name: str, summary: list[dict], curve: list[dict], label: str,
             higher_is_better: bool) -> str:
  x, y, s = mean_curve(curve)
  lines = [f"### {grid_name}: {label}", "",
           "Dense curve (unpruned, mean ± std over seeds): " + ", ".join(
               f"{xi / 1e12:.3g} TFLOPs → {yi:.4f} ± {si:.4f}" for xi, yi, si in zip(x, y, s)),
           "", "| method | pattern | runs | training TFLOPs (× dense full) | deployed | dense at "
           "same FLOPs | method − dense | dense FLOPs to match (× method's) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in summary:
    lines.append(
        f"| {r['method']} | {r['pattern']} | {r['runs']} | {r['train_flops'] / 1e12:.3g} "
        f"({r['flops_vs_dense_full']:.3f}) | {r['deployed']:.4f} | "
        f"{_fmt(r['dense_at_same_flops'], '.4f')} | {_fmt(r['minus_dense'], '+.4f')} | "
        f"{_fmt(r['dense_flops_to_match_vs_method'], '.2f')} |")
  direction = "higher" if higher_is_better else "lower"
  lines += ["", f"({direction} is better; `dense FLOPs to match` > 1: dense training needs more "
            "FLOPs than the method to reach its deployed metric; – : outside the dense curve's "
            "range, or never reached by it)", ""]
  return "\n".join(lines)


def plot(panels: list[tuple], path: str) -> None:
  from pgf.analysis import plots  # pylint: disable=g-import-not-at-top
  plt = plots._pyplot()  # pylint: disable=protected-access
  patterns = [(g, p) for g, rows, _, _, _ in panels for p in
              sorted({r["pattern"] for r in rows}, key=sweep.density, reverse=True)]
  cols = 4
  nrows = -(-len(patterns) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
  colors = {m: f"C{i}" for i, m in enumerate(sweep.METHODS)}
  k = 0
  for grid_name, rows, curve, label, _ in panels:
    x, y, s = mean_curve(curve)
    for pattern in sorted({r["pattern"] for r in rows}, key=sweep.density, reverse=True):
      ax = axes[k // cols][k % cols]
      k += 1
      ax.errorbar(x / 1e12, y, yerr=s, color="k", marker="o", ms=3, capsize=2,
                  label="dense, unpruned")
      for method in sweep.METHODS:
        mine = [r for r in rows if (r["method"], r["pattern"]) == (method, pattern)]
        if not mine:
          continue
        fx = np.array([r["train_flops"] for r in mine]) / 1e12
        fy = np.array([r["value"] for r in mine])
        ax.errorbar(fx.mean(), fy.mean(), yerr=fy.std(ddof=1) if fy.size > 1 else 0,
                    color=colors[method], marker="s", ms=5, capsize=2, ls="",
                    label=f"{method} (deployed)")
      ax.set_title(f"{grid_name}, {pattern}", fontsize=9)
      ax.set_xlabel("training TFLOPs")
      ax.set_ylabel(label.split(" (")[0], fontsize=8)
      ax.grid(alpha=0.3)
      if grid_name.startswith("t5"):  # one-shot-pruned dense sits far off; keep the scale useful
        sparse = [r["value"] for r in rows if r["method"] != "dense"] + list(y)
        pad = 0.1 * (max(sparse) - min(sparse))
        ax.set_ylim(min(sparse) - pad, max(sparse) + pad)
  for j in range(k, nrows * cols):
    axes[j // cols][j % cols].axis("off")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
  fig.suptitle("deployed metric against training FLOPs (mean ± std over seeds), dense curve "
               "from dense runs at 1/4..4/4 of the steps")
  fig.tight_layout(rect=(0, 0.07, 1, 0.96))
  plots._save(fig, path)  # pylint: disable=protected-access


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grids", default=",".join(GRIDS),
                      help=f"comma-separated, from {','.join(GRIDS)}")
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "iso_flops"))
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--report-only", action="store_true")
  args = parser.parse_args()
  grids = [g for g in args.grids.split(",") if g]
  unknown = set(grids) - set(GRIDS)
  if unknown or not grids:
    parser.error(f"--grids: unknown {sorted(unknown)}; choose from {sorted(GRIDS)}")
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  start = time.time()
  families = sorted({GRIDS[g][2] for g in grids}, reverse=True)
  if not args.report_only:
    for family in families:
      cells = tuple(dense_curve_cells(family))
      sweep.run_grid(sweep.Grid(cells, "", ""), out, max(args.workers, 1))
  panels, text = [], ["# Deployed metric at equal training FLOPs", ""]
  for grid_name in grids:
    _, _, family, higher = GRIDS[grid_name]
    label = sweep.GRIDS[grid_name](("dense",), (GRIDS[grid_name][1],), (0,), 0).metric_label
    rows = grid_rows(grid_name, out)
    curve = curve_rows(family, out, rows)
    with open(os.path.join(out, f"{grid_name}.csv"), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=["grid", "name", "method", "pattern", "seed",
                                             "steps", "train_flops", "value", "current"])
      writer.writeheader()
      writer.writerows(rows)
      writer.writerows({"grid": grid_name, "method": "dense_curve", "pattern": "", "value": "",
                        **r} for r in curve if r["name"] not in {x["name"] for x in rows})
    summary = summarize(rows, curve, higher)
    text.append(markdown(grid_name, summary, curve, label, higher))
    panels.append((grid_name, rows, curve, label, higher))
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(text))
  print("\n".join(text))
  plot(panels, os.path.join(out, "iso_flops.png"))
  print(f"wrote {out}/<grid>.csv, table.md, iso_flops.png in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
  main()
