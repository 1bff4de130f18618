"""Figures to look at: recipe schedules, training curves, sweep results, gradient noise (PNG).

    python -m pgf.analysis.plots schedule --config=configs/vit_1_16.py:method=sdgf_stepwise \
        --out=schedule.png                      # D(j) and N:M per rule over training
    python -m pgf.analysis.plots curves --workdir=/tmp/a --workdir=/tmp/b --out=curves.png \
        [--x=flops]                             # metrics.jsonl; x = steps or training FLOPs
    python -m pgf.analysis.plots sweep --csv=results.csv --out=sweep.png
    python -m pgf.analysis.plots noise --workdir=/tmp/a --workdir=/tmp/b --out=noise.png

Every function takes plain data (or workdirs) and an output path, writes one PNG with the
non-interactive Agg backend, and returns the path.
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

from pgf.analysis import runs
from pgf.analysis.schedule import schedule_arrays
from pgf.recipes import Recipe

__all__ = ["plot_schedule", "plot_curves", "plot_sweep", "read_results_csv", "plot_noise",
           "plot_noise_from_workdirs", "plot_noise_study", "running_average", "NOISE_KEYS"]

NOISE_KEYS = ("grad_abs_var_all", "grad_abs_var_kept", "grad_abs_var_pruned", "nu_var_all",
              "nu_var_kept", "nu_var_pruned", "mask_flip_fraction")
_EVAL_PREFERENCE = ("accuracy", "exact_match", "token_accuracy", "bits_per_byte", "loss")
_PHASE_COLORS = {"dense": "#dddddd", "middle": "#e8f0fb", "finetune": "#fbe8e8"}


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, out: str) -> str:
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  _pyplot().close(fig)
  return out


def _shade_phases(ax, recipe: Recipe) -> None:
  if recipe.method == "dense":
    return
  spans = (("dense", 0, recipe.dense_steps), ("middle", recipe.dense_steps,
                                               recipe.finetune_start),
           ("finetune", recipe.finetune_start, recipe.total_steps))
  for name, start, end in spans:
    if end > start:
      ax.axvspan(start, end, color=_PHASE_COLORS[name], zorder=0, lw=0)


# ----------------------------------------------------------------------------- schedule
def plot_schedule(recipe: Recipe, out: str, title: str | None = None) -> str:
  """D(j) (top) and the N:M pattern in force per rule (bottom, log2 density) over training.

  Shaded: dense phase (grey), decay / structure phase (blue), fine-tuning (red). Dashed lines
  are the effective density n/m + D·(1 − n/m) that the forward pass sees.
  """
  plt = _pyplot()
  schedule = schedule_arrays(recipe)
  steps = schedule["steps"]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
  _shade_phases(top, recipe)
  top.plot(steps, schedule["decay"], color="C0")
  top.set_ylabel("D(j)")
  top.set_ylim(-0.05, 1.05)
  top.set_title(title or f"{recipe.method}: " + ", ".join(r.nm for r in recipe.rules)
                + f" ({recipe.total_steps} steps)")
  _shade_phases(bottom, recipe)
  for i, rule in enumerate(schedule["rules"]):
    label = f"{rule['target']}  {rule['pattern']}"
    bottom.step(steps, rule["kept"], where="post", color=f"C{i}", label=label)
    bottom.plot(steps, rule["effective"], color=f"C{i}", ls="--", lw=0.8)
    # Name each pattern where it starts.
    changes = np.flatnonzero(np.diff(rule["n"] * 100_000 + rule["m"])) + 1
    for start in np.concatenate([[0], changes]):
      bottom.annotate(f"{rule['n'][start]}:{rule['m'][start]}",
                      (steps[start], rule["kept"][start]), textcoords="offset points",
                      xytext=(2, 3 + 9 * i), fontsize=7, color=f"C{i}")
  bottom.set_yscale("log", base=2)
  bottom.set_ylabel("N/M (solid), N/M + D(1 - N/M) (dashed)", fontsize=8)
  bottom.set_xlabel("step")
  if schedule["rules"]:
    bottom.legend(fontsize=7, loc="upper right")
  return _save(fig, out)


# ----------------------------------------------------------------------------- curves
def _labels(workdirs: Sequence[str]) -> list[str]:
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def _flops_axis(workdir: str):
  """step -> cumulative training FLOPs of the run (from its config.json and recipe.json)."""
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  config = runs.load_config(workdir)
  recipe = runs.load_recipe(workdir)
  cumulative = flops.training_flops(flops.matmuls_from_config(config), recipe,
                                    int(config.batch_size))["cumulative"]
  cumulative = np.concatenate([[0.0], cumulative])
  return lambda steps: cumulative[np.clip(steps, 0, len(cumulative) - 1)]


def _eval_suffix(records) -> str | None:
  keys = {k for r in records for k in r if k.startswith(("deployed_", "current_"))}
  for suffix in _EVAL_PREFERENCE:
    if f"deployed_{suffix}" in keys or f"current_{suffix}" in keys:
      return suffix
  return None


def plot_curves(workdirs: Sequence[str], out: str, x: str = "step",
                train_keys: Sequence[str] = ("loss", "accuracy")) -> str:
  """Training curves of one or more runs from their metrics.jsonl.

  Panels: each of `train_keys` (train lines), the eval metric (deployed = finalized N:M
  weights, solid; current = what training sees, dashed), and D(j) with the measured sparsity.

  Args:
    workdirs: run directories.
    out: PNG path.
    x: "step", or "flops" for cumulative training FLOPs (pgf.analysis.flops; iso-FLOP view).
  """
  if x not in ("step", "flops"):
    raise ValueError(f"x={x!r}: 'step' or 'flops'")
  if not workdirs:
    raise ValueError("workdirs is empty: give at least one run directory")
  plt = _pyplot()
  data = []
  for label, workdir in zip(_labels(workdirs), workdirs):
    records = runs.read_metrics(workdir)
    to_x = _flops_axis(workdir) if x == "flops" else (lambda s: s)
    data.append((label, [r for r in records if r.get("kind") == "train"],
                 [r for r in records if r.get("kind") == "eval"], to_x))
  suffix = next((s for s in (_eval_suffix(d[2]) for d in data) if s), None)
  panels = [k for k in train_keys if any(np.isfinite(runs.metric_series(d[1], k)[1]).any()
                                         for d in data)]
  panels += (["eval"] if suffix else []) + ["schedule"]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    for i, (label, train, evals, to_x) in enumerate(data):
      color = f"C{i % 10}"
      if panel == "eval":
        for kind, style in (("deployed", "-"), ("current", "--")):
          steps, values = runs.metric_series(evals, f"{kind}_{suffix}")
          if steps.size:
            ax.plot(to_x(steps), values, style, marker="o", ms=3, color=color,
                    label=f"{label} ({kind})")
        ax.set_title(f"eval {suffix}")
      elif panel == "schedule":
        steps, decay = runs.metric_series(train, "decay")
        ax.plot(to_x(steps), decay, color=color, label=f"{label} D(j)")
        steps, sparsity = runs.metric_series(train, "sparsity")
        ax.plot(to_x(steps), sparsity, ":", color=color, label=f"{label} sparsity")
        ax.set_title("D(j) (solid), zeros in sparsified kernels (dotted)")
      else:
        steps, values = runs.metric_series(train, panel)
        ax.plot(to_x(steps), values, color=color, label=label)
        ax.set_title(f"train {panel}")
        # A log scale only helps when the loss spans more than a decade.
        if panel == "loss" and values.size and np.nanmin(values) > 0 and (
            np.nanmax(values) > 10 * np.nanmin(values)):
          ax.set_yscale("log")
    ax.set_xlabel("training FLOPs" if x == "flops" else "step")
    ax.legend(fontsize=7)
  return _save(fig, out)


# ----------------------------------------------------------------------------- sweeps
def read_results_csv(path: str) -> list[dict[str, Any]]:
  """Rows of a sweep's results.csv (columns: method, pattern, seed, value, ...)."""
  if not os.path.exists(path):
    raise ValueError(f"results csv {path!r} does not exist")
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _number(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _density(pattern: str) -> float:
  n, _, m = str(pattern).partition(":")
  try:
    return int(n) / int(m)
  except ValueError:
    raise ValueError(f"pattern={pattern!r}: expected 'N:M'") from None


def plot_sweep(rows, out: str, metric_label: str = "metric", value_key: str = "value",
               title: str | None = None, xlabel: str = "N:M target (sparsity)") -> str:
  """Metric vs N:M sparsity, one line per method, mean ± std (ddof 1) over seeds.

  Args:
    rows: dicts with "method", "pattern" ("N:M") and `value_key` (one per run), or the path
      of a results CSV with those columns. Rows without a pattern or a numeric value are
      skipped (e.g. a dense pre-training run).
    out: PNG path.
    metric_label: y-axis label.
    xlabel: x-axis label (what the pattern column is, e.g. the Q/K/V pattern of a grid whose
      FF pattern is fixed).
  """
  if isinstance(rows, (str, os.PathLike)):
    rows = read_results_csv(os.fspath(rows))
  cells: dict[str, dict[str, list[float]]] = {}
  for i, row in enumerate(rows):
    for field in ("method", "pattern", value_key):
      if field not in row:
        raise ValueError(f"rows[{i}] has no {field!r} column (columns: {sorted(row)})")
    value = _number(row[value_key])
    if not row["pattern"] or not math.isfinite(value):
      continue
    cells.setdefault(row["method"], {}).setdefault(row["pattern"], []).append(value)
  if not cells:
    raise ValueError(f"no row has a pattern and a numeric {value_key!r}: nothing to plot")
  patterns = sorted({p for by_pattern in cells.values() for p in by_pattern}, key=_density,
                    reverse=True)
  # x = log2(M/N): 2:4 -> 1, 1:4 -> 2, 1:16 -> 4, 1:32 -> 5 (evenly spaced by halvings).
  positions = {p: math.log2(1 / _density(p)) for p in patterns}
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  width = 0.25 / max(len(cells), 1)
  for i, (method, by_pattern) in enumerate(cells.items()):
    xs = [p for p in patterns if p in by_pattern]
    means = [float(np.mean(by_pattern[p])) for p in xs]
    stds = [float(np.std(by_pattern[p], ddof=1)) if len(by_pattern[p]) > 1 else 0.0 for p in xs]
    offset = (i - (len(cells) - 1) / 2) * width  # keep error bars apart
    ax.errorbar([positions[p] + offset for p in xs], means, yerr=stds, marker="o", ms=4,
                capsize=3, label=method, color=f"C{i % 10}")
  ax.set_xticks([positions[p] for p in patterns])
  ax.set_xticklabels([f"{p}\n{1 - _density(p):.1%}" for p in patterns])
  ax.set_xlabel(xlabel)
  # Long labels wrap instead of running off the figure.
  ax.set_ylabel("\n".join(textwrap.wrap(metric_label, 40)))
  seeds = max(len(v) for by_pattern in cells.values() for v in by_pattern.values())
  ax.set_title("\n".join(textwrap.wrap(
      title or f"{metric_label}: mean ± std over up to {seeds} seeds", 80)), fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out)


# ----------------------------------------------------------------------------- noise
def _ema(values: np.ndarray, smooth: float) -> np.ndarray:
  """Exponential moving average that carries over NaNs (the paper plots a running average)."""
  out = np.empty_like(values, dtype=np.float64)
  state = math.nan
  for i, v in enumerate(values):
    if math.isfinite(v):
      state = v if not math.isfinite(state) else smooth * state + (1 - smooth) * v
    out[i] = state
  return out


def plot_noise(series: Mapping[str, Sequence[Mapping[str, Any]]], out: str,
               keys: Sequence[str] = NOISE_KEYS, smooth: float = 0.6,
               title: str | None = None) -> str:
  """Gradient-noise statistics over steps, one line per method (paper Fig. 3).

  Args:
    series: {label (e.g. method): noise records}, each record a dict with "step" and the
      statistics of `pgf.analysis.noise` (what train.py logs as kind="noise").
    out: PNG path.
    keys: statistics to plot, one panel each (variances on a log scale).
    smooth: EMA factor in [0, 1) applied to each line (0 = raw values).
  """
  if not 0 <= smooth < 1:
    raise ValueError(f"smooth={smooth!r}: must be in [0, 1)")
  series = {label: records for label, records in series.items() if records}
  if not series:
    raise ValueError("no noise records to plot (log them with config.noise_every > 0)")
  plt = _pyplot()
  columns = min(len(keys), 4)
  rows = math.ceil(len(keys) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
  for ax, key in zip(axes.ravel(), keys):
    any_positive = False
    for i, (label, records) in enumerate(series.items()):
      steps, values = runs.metric_series(records, key)
      if not steps.size:
        continue
      smoothed = _ema(values, smooth)
      any_positive |= bool(np.any(smoothed > 0))
      ax.plot(steps, smoothed, color=f"C{i % 10}", label=label)
    if any_positive and "var" in key:
      # Variances span decades; a first measurement of exactly 0 (zero-initialised head) is
      # left out of the log axis rather than forcing a linear one.
      ax.set_yscale("log", nonpositive="mask")
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step")
  handles, labels = axes.ravel()[0].get_legend_handles_labels()
  spare = axes.ravel()[len(keys):]
  for ax in spare:
    ax.axis("off")
  if handles:
    if len(spare):
      spare[0].legend(handles, labels, loc="center", fontsize=9)
    else:
      fig.legend(handles, labels, loc="lower right", fontsize=8)
  fig.suptitle(title or "gradient noise over the sparsified kernels"
               + (f" (EMA {smooth:g})" if smooth else ""))
  return _save(fig, out)


def running_average(values: np.ndarray) -> np.ndarray:
  """Mean of all finite values up to each point (NaN before the first), the paper's Fig. 3
  smoothing: late points weigh the whole history, so a variance that keeps climbing shows."""
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  counts = np.cumsum(finite)
  sums = np.cumsum(np.where(finite, values, 0.0))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_noise_study(series: Mapping[str, Sequence[Mapping[str, Any]]], out: str,
                     title: str | None = None) -> str:
  """The paper's Fig. 3 panels for a set of runs ({method: noise records}).

  Left: the running average of the variance of Adam's second moment ν over the sparsified
  kernels (linear axis, as the paper plots it); middle: the same on a log axis (methods can
  differ by decades); right: the variance of |gradient| over the sparsified kernels (log axis,
  EMA-smoothed, 0.9).
  """
  series = {label: records for label, records in series.items() if records}
  if not series:
    raise ValueError("no noise records to plot (log them with config.noise_every > 0)")
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  panels = (("nu_var_all", "running average of var(ν)", running_average, "linear"),
            ("nu_var_all", "running average of var(ν), log", running_average, "log"),
            ("grad_abs_var_all", "var(|grad|), EMA 0.9", lambda v: _ema(v, 0.9), "log"))
  for ax, (key, label, smooth, scale) in zip(axes, panels):
    for i, (method, records) in enumerate(series.items()):
      steps, values = runs.metric_series(records, key)
      if steps.size:
        ax.plot(steps, smooth(values), color=f"C{i % 10}", label=method)
    if scale == "log":
      ax.set_yscale("log", nonpositive="mask")
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title or "gradient noise over the sparsified kernels (paper Fig. 3)", fontsize=10)
  return _save(fig, out)


def plot_noise_from_workdirs(workdirs: Mapping[str, str] | Sequence[str], out: str,
                             title: str | None = None, **kwargs) -> str:
  """`plot_noise` with the kind="noise" records of runs ({label: workdir} or a list)."""
  if not isinstance(workdirs, Mapping):
    workdirs = dict(zip(_labels(list(workdirs)), workdirs))
  series = {}
  for label, workdir in workdirs.items():
    try:
      series[label] = runs.read_metrics(workdir, kind="noise")
    except ValueError:
      series[label] = []  # a run that never started
  if not any(series.values()):
    raise ValueError(f"none of the workdirs {sorted(workdirs.values())} logged noise statistics "
                     "(set config.noise_every > 0)")
  return plot_noise(series, out, title=title, **kwargs)


# ----------------------------------------------------------------------------- CLI
def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax / XLA chatter would bury the output
  f = flags.FLAGS
  commands = ("schedule", "curves", "sweep", "noise")
  if len(argv) != 2 or argv[1] not in commands:
    raise ValueError(f"usage: python -m pgf.analysis.plots {{{'|'.join(commands)}}} ... "
                     f"--out=FILE.png (got {argv[1:]})")
  command = argv[1]
  if command == "schedule":
    if f.config is None:
      raise ValueError("schedule needs --config=configs/...py[:arg]")
    from pgf.train.config_lib import build_recipe  # pylint: disable=g-import-not-at-top
    recipe = build_recipe(f.config, runs.total_steps_from_config(f.config, f.steps or None))
    path = plot_schedule(recipe, f.out, f.title or None)
  elif command == "sweep":
    if not f.csv:
      raise ValueError("sweep needs --csv=results.csv")
    path = plot_sweep(f.csv, f.out, f.metric_label, title=f.title or None)
  else:
    if not f.workdir:
      raise ValueError(f"{command} needs --workdir=DIR (repeatable)")
    if command == "curves":
      path = plot_curves(f.workdir, f.out, x=f.x)
    else:
      path = plot_noise_from_workdirs(f.workdir, f.out, title=f.title or None)
  print(f"wrote {path}")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "schedule: config file (configs/*.py[:arg]).")
  flags.DEFINE_integer("steps", 0, "schedule: training steps (default: from the config).")
  flags.DEFINE_multi_string("workdir", [], "curves / noise: run directory (repeatable).")
  flags.DEFINE_enum("x", "step", ["step", "flops"], "curves: x axis.")
  flags.DEFINE_string("csv", "", "sweep: results CSV (method, pattern, seed, value).")
  flags.DEFINE_string("metric_label", "deployed metric", "sweep: y-axis label.")
  flags.DEFINE_string("title", "", "Figure title (default: generated).")
  flags.DEFINE_string("out", None, "Output PNG.")
  flags.mark_flags_as_required(["out"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
