"""Plots: each figure function writes a non-empty PNG from synthetic inputs; schedule arrays."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pgf
from pgf.families import vit as vit_family
from pgf.analysis import plots
from pgf.analysis.schedule import schedule_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FF = vit_family.VIT_FF


def assert_png(path):
  with open(path, "rb") as f:
    head = f.read(8)
  assert head == PNG_MAGIC and os.path.getsize(path) > 1000


@pytest.mark.parametrize("method", ["mdgf_exp", "sdgf_stepwise", "mdgf_linear+sdgf_geometric",
                                    "sr_ste", "dense"])
def test_schedule_arrays_agree_with_the_recipe(method):
  recipe = pgf.Recipe(method=method, rules=((FF, "1:16"), (r".*/query/kernel", "1:4")),
                      total_steps=200)
  schedule = schedule_arrays(recipe)
  for step in (0, 9, 10, 11, 60, 120, 179, 180, 199):
    expected = recipe.schedule(step)
    assert schedule["decay"][step] == pytest.approx(expected["decay"])
    for i, rule in enumerate(recipe.rules):
      got = schedule["rules"][i]
      n, m = recipe.pattern(rule, step)
      assert (got["n"][step], got["m"][step]) == (n, m)
      assert got["effective"][step] == pytest.approx(expected["densities"][rule.pattern])


def test_plot_schedule(tmp_path):
  for i, method in enumerate(["mdgf_exp", "sdgf_geometric", "mdgf_exp+sdgf_stepwise"]):
    recipe = pgf.Recipe(method=method, rules=((FF, "1:8"), (r".*/query/kernel", "1:4")),
                        total_steps=500)
    assert_png(plots.plot_schedule(recipe, str(tmp_path / f"schedule_{i}.png")))


def write_run(workdir, method, seed=0, noise=True, steps=40):
  """A synthetic run directory: metrics.jsonl (train, eval, noise), config.json, recipe.json."""
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(seed)
  recipe = pgf.Recipe(method=method, rules=((FF, "1:16"),), total_steps=steps)
  lines = []
  for step in range(1, steps + 1):
    if step % 5 == 0:
      lines.append({"step": step, "kind": "train", "loss": 2.3 * 0.95 ** step,
                    "accuracy": "nan" if step == 5 else min(1.0, 0.02 * step),
                    "decay": float(recipe.decay(step - 1)), "sparsity": 0.9})
    if noise and step % 4 == 1:
      lines.append({"step": step, "kind": "noise", "grad_abs_var_all": 0.0 if step == 1 else
                    float(rng.uniform(1e-9, 1e-8)), "nu_var_all": float(rng.uniform(1e-20, 1e-19)),
                    "nu_var_pruned": "nan", "mask_flip_fraction": 0.01})
    if step % 20 == 0:
      lines.append({"step": step, "kind": "eval", "deployed_accuracy": 0.5 + step / 100,
                    "current_accuracy": 0.55 + step / 100, "deployed_loss": 1.0})
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(line) for line in lines) + "\n{\"torn")
  config = vit_family.vit_config(ff="1:16", arg=f"demo,method={method},steps={steps}")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  with open(os.path.join(workdir, "recipe.json"), "w") as f:
    json.dump(recipe.to_dict(), f)
  return str(workdir)


@pytest.mark.parametrize("x", ["step", "flops"])
def test_plot_curves(tmp_path, x):
  runs = [write_run(tmp_path / m, m) for m in ("sr_ste", "mdgf_exp")]
  assert_png(plots.plot_curves(runs, str(tmp_path / "curves.png"), x=x))


def test_plot_sweep_from_rows_and_csv(tmp_path):
  rows = [{"method": method, "pattern": pattern, "seed": seed,
           "value": 0.9 - 0.01 * i - 0.02 * j + 0.005 * seed}
          for i, method in enumerate(["sr_ste", "mdgf_exp", "sdgf_geometric"])
          for j, pattern in enumerate(["2:4", "1:4", "1:16", "1:32"]) for seed in range(3)]
  rows.append({"method": "pretrain", "pattern": "", "seed": 0, "value": 1.5})
  rows.append({"method": "dense", "pattern": "1:4", "seed": 0, "value": None})
  assert_png(plots.plot_sweep(rows, str(tmp_path / "sweep.png"), metric_label="accuracy"))
  path = tmp_path / "results.csv"
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["method", "pattern", "seed", "value"])
    writer.writeheader()
    writer.writerows(rows)
  assert_png(plots.plot_sweep(str(path), str(tmp_path / "sweep_csv.png")))
  with pytest.raises(ValueError, match="no 'value' column"):
    plots.plot_sweep([{"method": "a", "pattern": "1:4", "acc": 1.0}], str(tmp_path / "x.png"))


def test_plot_noise(tmp_path):
  series = {method: [{"step": s, "grad_abs_var_all": 1e-8 * (k + 1) * s, "nu_var_all": 1e-20 * s,
                      "mask_flip_fraction": 0.01 / s} for s in range(1, 50, 4)]
            for k, method in enumerate(["dense", "sr_ste", "mdgf_exp"])}
  assert_png(plots.plot_noise(series, str(tmp_path / "noise.png")))
  runs = {m: write_run(tmp_path / m, m, seed=i) for i, m in enumerate(["sr_ste", "mdgf_exp"])}
  runs["missing"] = str(tmp_path / "never_started")
  assert_png(plots.plot_noise_from_workdirs(runs, str(tmp_path / "noise_runs.png"), smooth=0.0))
  quiet = write_run(tmp_path / "quiet", "sr_ste", noise=False)
  with pytest.raises(ValueError, match="noise_every"):
    plots.plot_noise_from_workdirs([quiet], str(tmp_path / "none.png"))


def test_cli_schedule_and_curves(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "schedule.png"
  result = subprocess.run(
      [sys.executable, "-m", "pgf.analysis.plots", "schedule",
       "--config=configs/vit_1_16.py:method=sdgf_stepwise", "--steps=1000", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr
  assert_png(out)
  run = write_run(tmp_path / "run", "mdgf_exp")
  out = tmp_path / "curves.png"
  result = subprocess.run(
      [sys.executable, "-m", "pgf.analysis.plots", "curves", f"--workdir={run}",
       f"--workdir={run}", f"--out={out}"], cwd=ROOT, capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr
  assert_png(out)


def test_running_average_and_the_noise_study_figure(tmp_path):
  np.testing.assert_allclose(plots.running_average(np.array([np.nan, 2.0, 4.0, np.nan, 6.0])),
                             [np.nan, 2.0, 3.0, 3.0, 4.0])
  records = lambda scale: [{"step": s, "nu_var_all": scale * (1 + s), "grad_abs_var_all": 1e-6 * s}
                           for s in range(0, 100, 10)]
  out = plots.plot_noise_study({"sr_ste": records(2.0), "mdgf_exp": records(1.0), "dense": []},
                               str(tmp_path / "fig3.png"))
  assert os.path.getsize(out) > 1000
  with pytest.raises(ValueError, match="no noise records"):
    plots.plot_noise_study({"dense": []}, str(tmp_path / "none.png"))
