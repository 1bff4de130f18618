"""experiments/sweep.py: grid definitions are valid configs; a miniature T5 grid runs, resumes, reports."""

import csv
import dataclasses
import importlib.util
import os
import sys

import pytest

from pgf.families import gpt as gpt_family
from pgf.families import t5 as t5_family
from pgf.train import config_lib
from pgf.train import preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "experiments", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
sys.modules["sweep"] = sweep  # dataclasses look their module up while the file executes
_spec.loader.exec_module(sweep)


def cell_config(cell, out="/tmp/out"):
  config = config_lib.load(os.path.join(ROOT, cell.config))
  config_lib.apply_overrides(config, {k: v.format(out=out) if isinstance(v, str) else v
                                      for k, v in cell.overrides})
  return config


def test_sdgf_k_fits_the_contracting_axis():
  assert [sweep.sdgf_k_for(p, 64) for p in ("2:4", "1:4", "1:16", "1:32")] == [8, 8, 4, 2]
  assert sweep.sdgf_k_for("1:128", 64) == 1


@pytest.mark.parametrize("name", sorted(sweep.GRIDS))
def test_full_grids_are_the_issue_grids_and_every_cell_passes_preflight(name):
  methods, patterns, seeds = sweep.GRID_DEFAULTS.get(name, (sweep.METHODS, sweep.PATTERNS,
                                                            sweep.SEEDS))
  grid = sweep.GRIDS[name](methods, patterns, seeds, 0)
  sparse = [c for c in grid.cells if c.method != "pretrain"]
  assert {(c.method, c.pattern, c.seed) for c in sparse} == {
      (m, p, s) for m in methods for p in patterns for s in seeds}
  assert len(sparse) == len(methods) * len(patterns) * len(seeds)
  assert len({c.name for c in grid.cells}) == len(grid.cells)
  pretrain = [c for c in grid.cells if c.method == "pretrain"]
  assert len(pretrain) == (len(seeds) if name.startswith("t5_") or name.endswith("_finetune")
                           else 0)
  if name in ("t5_shakespeare_qkv", "t5_shakespeare_noise"):
    # They fine-tune from the FF grid's pre-trainings (the same cells, in its workdir).
    ff = {c.name: c for c in sweep.t5_shakespeare(("dense",), ("1:4",), seeds, 0).cells}
    for cell in pretrain:
      assert cell.workdir == os.path.join(sweep.T5_SHARED_RUNS, cell.name)
      assert cell.overrides == ff[cell.name].overrides and cell.config == ff[cell.name].config
  for cell in grid.cells:
    assert not cell.after or cell.after in {c.name for c in pretrain}
    config = cell_config(cell)
    if cell.method != "pretrain":
      assert config.sparsity.method == cell.method and config.noise_every > 0
      if name == "t5_shakespeare_qkv":
        assert [r[1] for r in config.sparsity.rules] == ["1:8", cell.pattern]
        assert config.sparsity.rules[1][0] == t5_family.T5_QKV
        assert config.init_from == os.path.join(sweep.T5_SHARED_RUNS, f"pretrain_s{cell.seed}")
      elif name == "lm_shakespeare_qkv":
        assert [r[1] for r in config.sparsity.rules] == ["1:8", cell.pattern]
        assert config.sparsity.rules[1][0] == gpt_family.LM_QKV
      else:
        assert [r[1] for r in config.sparsity.rules] == [cell.pattern]
    # Model-dependent checks (rule fit, SDGF stages) need the params; preflight has them.
    if cell.seed == 0:
      preflight(config)
  if name.startswith("t5_"):  # pre-training and fine-tuning build the same model
    sizes = [dict(cell_config(c).model) for c in (pretrain[0], sparse[0])]
    for field in ("emb_dim", "mlp_dim", "num_heads", "head_dim", "num_encoder_layers"):
      assert sizes[0][field] == sizes[1][field]
  if name.startswith("lm_"):  # the decoder LM on Shakespeare bytes, from scratch or fine-tuned
    config = cell_config(sparse[0])
    assert config.model.name == "gpt" and config.data.name == "shakespeare"
    assert set(methods) == {"dense", "sr_ste", "mdgf_exp", "mdgf_linear", "sdgf_stepwise",
                            "sdgf_geometric"}
    if name.endswith("_finetune"):
      assert all(c.after == f"pretrain_s{c.seed}" for c in sparse)
      assert cell_config(sparse[0]).init_from.endswith("/runs/pretrain_s0")
      sizes = [dict(cell_config(c).model) for c in (pretrain[0], sparse[0])]
      assert sizes[0] == sizes[1] and cell_config(pretrain[0]).sparsity.rules == ()
  if name == "vit_digits_noise":  # the paper's tiny ViT, AdamW, batch 64, 20x the grid's steps
    config = cell_config(sparse[0])
    assert (config.model.width, config.model.depth, config.model.num_heads) == (192, 3, 3)
    assert config.batch_size == 64 and config.total_steps == 20 * 600
  if name == "swin_digits":  # Table 3's methods and FF patterns on the SwinV2 demo model
    config = cell_config(sparse[0])
    assert config.model.name == "swin" and config.data.name == "digits"
    assert set(methods) == {"dense", "sr_ste", "mdgf_exp", "sdgf_stepwise", "sdgf_geometric"}
  if name == "resnet_digits":  # Table 6's methods and conv patterns on the ResNet demo model
    config = cell_config(sparse[0])
    assert config.model.name == "resnet" and config.data.name == "digits"
    assert config.sparsity.rules[0][2] == 2  # grouped along the input channels
    assert set(patterns) == {"2:8", "1:8"} and set(methods) == {"dense", "sr_ste", "mdgf_exp"}


def test_bad_grid_arguments_are_named(capsys, monkeypatch):
  monkeypatch.setattr("sys.argv", ["sweep.py", "--grid=vit_digits", "--out=/tmp/x",
                                   "--methods=sr_ste,srste"])
  with pytest.raises(SystemExit):
    sweep.main()
  assert "unknown ['srste']" in capsys.readouterr().err


@pytest.mark.parametrize("flag, message", [
    ("--patterns=1:16,4:2", "--patterns: rules[0] ('.*', '4:2'): need 1 <= N <= M, got 4:2"),
    ("--patterns=1/16", "--patterns: rules[0]: N:M '1/16' must look like '1:16'"),
    ("--seeds=0,one", "--seeds: expected comma-separated integers, got '0,one'"),
    ("--seeds=", "must each name at least one value")])
def test_bad_patterns_and_seeds_are_named_before_anything_runs(capsys, monkeypatch, tmp_path,
                                                                flag, message):
  out = tmp_path / "never"
  monkeypatch.setattr("sys.argv", ["sweep.py", "--grid=vit_digits", f"--out={out}", flag])
  with pytest.raises(SystemExit):
    sweep.main()
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_table_lists_every_pattern_run_densest_first():
  grid = sweep.vit_digits(("sr_ste", "mdgf_exp"), ("1:8", "2:4"), (0,), 10)
  rows = [{"name": c.name, "method": c.method, "pattern": c.pattern, "seed": 0,
           "value": 0.5 + 0.1 * i, "train_seconds": 1.0} for i, c in enumerate(grid.cells)]
  table = sweep.markdown_table(rows, grid)
  assert "| method | 2:4 | 1:8 |" in table  # 1:8 is not one of the default patterns
  # rows in grid order: sr_ste 1:8 = 0.5, mdgf_exp 1:8 = 0.6, sr_ste 2:4 = 0.7, mdgf_exp 2:4 = 0.8
  assert "| mdgf_exp | 0.8000 ± 0.0000 (1) | 0.6000 ± 0.0000 (1) |" in table
  assert "| mdgf_exp | +0.1000 ± 0.0000 (1) | +0.1000 ± 0.0000 (1) |" in table


def test_miniature_t5_grid_pretrains_first_fine_tunes_from_it_resumes_and_reports(tmp_path):
  grid = sweep.t5_shakespeare(("dense", "sr_ste", "mdgf_exp"), ("1:16",), (0,), 4)
  # One layer each side (the grid's width, so its SDGF k holds): the grid machinery is under
  # test here, not the model, and every cell is a process that compiles it.
  tiny = {"total_steps": 4, "checkpoint_every": 2, "data.num_eval_examples": 16,
          "eval_batch_size": 16, "noise_every": 2, "log_every": 2,
          "model.num_encoder_layers": 1, "model.num_decoder_layers": 1, "model.mlp_dim": 64}
  cells = tuple(dataclasses.replace(c, overrides=tuple({**dict(c.overrides), **tiny}.items()))
                for c in grid.cells)
  grid = dataclasses.replace(grid, cells=cells)
  out = str(tmp_path / "sweep out")
  sweep.run_grid(grid, out, workers=2)
  for cell in cells:
    assert os.path.exists(os.path.join(out, "runs", cell.name, "summary.json")), cell.name
  sweep.write_reports(grid, out)
  with open(os.path.join(out, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["method"] for r in rows) == ["dense", "mdgf_exp", "pretrain", "sr_ste"]
  for row in rows:
    assert 0.5 < float(row["value"]) < 9.0  # bits per byte of untrained-ish models
    if row["method"] != "pretrain":
      assert 3.5 < float(row["baseline"]) < 5.0  # unigram entropy of the target lines
  table = open(os.path.join(out, "table.md")).read()
  assert "| sr_ste | " in table and "Unigram byte entropy of the same targets" in table
  assert "Dense pre-training" in table
  by_method = {r["method"]: float(r["value"]) for r in rows}
  assert f"| dense | {by_method['dense'] - by_method['sr_ste']:+.4f} ± 0.0000 (1) |" in table
  for png in ("metric_vs_sparsity.png", "paired_vs_sr_ste.png", "noise.png"):
    assert os.path.getsize(os.path.join(out, png)) > 1000
  # A second invocation finds every run finished and starts none.
  mtimes = {c.name: os.path.getmtime(os.path.join(out, "runs", c.name, "summary.json"))
            for c in cells}
  sweep.run_grid(grid, out, workers=2)
  assert mtimes == {c.name: os.path.getmtime(os.path.join(out, "runs", c.name, "summary.json"))
                    for c in cells}
