"""experiments/iso_flops.py: training FLOPs per sweep cell, the dense curve and where runs sit on it."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from pgf.train import config_lib
from pgf.analysis import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
_spec = importlib.util.spec_from_file_location("iso_flops",
                                               os.path.join(ROOT, "experiments", "iso_flops.py"))
iso = importlib.util.module_from_spec(_spec)
sys.modules["iso_flops"] = iso
_spec.loader.exec_module(iso)
sweep = iso.sweep


def test_dense_curve_cells_are_complete_dense_schedules_at_fractions_of_the_grid_steps():
  vit = iso.dense_curve_cells("vit", seeds=(0, 1))
  assert [c.name for c in vit] == [f"vit_dense_{s}steps_s{seed}" for s in (150, 300, 450)
                                   for seed in (0, 1)]
  config = iso.cell_config(vit[0], "/tmp/out")
  assert (config.total_steps, config.sparsity.method) == (150, "dense")
  assert config.optim.warmup_steps == 150 // 20  # the schedule scales with the budget
  t5 = iso.dense_curve_cells("t5", seeds=(0,))
  pretrain, *finetunes = t5
  assert pretrain.method == "pretrain" and pretrain.workdir.startswith(sweep.T5_SHARED_RUNS)
  assert [c.name for c in finetunes] == ["t5_dense_50steps_s0", "t5_dense_100steps_s0",
                                         "t5_dense_150steps_s0"]
  assert all(c.after == pretrain.name for c in finetunes)
  assert dict(finetunes[0].overrides)["init_from"] == pretrain.workdir


def test_cell_flops_follow_the_recipe():
  grid = sweep.vit_digits(("dense", "sr_ste", "mdgf_exp"), ("1:16",), (0,), 0)
  cells = {c.method: c for c in grid.cells}
  got = {m: iso.training_flops(c, "/tmp/out") for m, c in cells.items()}
  config = iso.cell_config(cells["sr_ste"], "/tmp/out")
  matmuls = flops.matmuls_from_config(config)
  expected = flops.training_flops(matmuls, config_lib.build_recipe(config, 600), 128)
  assert got["sr_ste"] == pytest.approx(expected["total"])
  assert got["dense"] == pytest.approx(expected["dense"])
  # SR-STE computes at 1:16 after the dense phase; MDGF densely while D(j) > 0.
  assert got["sr_ste"] < got["mdgf_exp"] < got["dense"]
  # Half the steps of a dense run: half the FLOPs.
  half = iso.training_flops(iso.dense_curve_cells("vit", fractions=(0.5,), seeds=(0,))[0], "/x")
  assert half == pytest.approx(got["dense"] / 2)


def test_flops_to_match_interpolates_and_says_when_the_curve_cannot_tell():
  x, y = np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.7, 0.8])
  assert iso.flops_to_match(x, y, 0.6, True) == pytest.approx(1.5)
  assert iso.flops_to_match(x, y, 0.75, True) == pytest.approx(3.0)
  assert iso.flops_to_match(x, y, 0.9, True) is None        # dense never gets there
  assert iso.flops_to_match(x, y, 0.4, True) == 1.0          # already at the cheapest point
  # lower is better (bits per byte)
  assert iso.flops_to_match(x, 3.5 - y, 2.85, False) == pytest.approx(1.75)


def test_summary_places_each_method_on_the_dense_curve():
  curve = [{"name": f"d{s}_{seed}", "seed": seed, "steps": s, "train_flops": 10.0 * s,
            "current": 0.5 + 0.001 * s + 0.01 * seed} for s in (100, 200, 400) for seed in (0, 1)]
  rows = [{"method": "sr_ste", "pattern": "1:16", "seed": seed, "train_flops": 1500.0,
           "value": 0.7} for seed in (0, 1)]
  (s,) = iso.summarize(rows, curve, True)
  assert s["flops_vs_dense_full"] == pytest.approx(1500 / 4000)
  assert s["dense_at_same_flops"] == pytest.approx(0.655)    # halfway between 1000 and 2000
  assert s["minus_dense"] == pytest.approx(0.045)
  assert s["dense_flops_to_match"] == pytest.approx(2000 + 2000 * (0.7 - 0.705) / 0.2)
  text = iso.markdown("g", [s], curve, "acc", True)
  assert "| sr_ste | 1:16 | 2 |" in text


def test_a_grid_without_results_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(iso, "ROOT", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="--grid=vit_digits"):
    iso.grid_rows("vit_digits", str(tmp_path))
